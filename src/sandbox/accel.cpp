#include "sandbox/accel.h"

#include "util/unique_fd.h"

#include <fcntl.h>
#include <linux/kvm.h>
#include <spdlog/spdlog.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

namespace unifaas {

namespace {

struct Mapping {
    void* addr;
    size_t len;
    Mapping(void* a, size_t l) : addr(a), len(l) {}
    ~Mapping() {
        if (addr != MAP_FAILED) {
            munmap(addr, len);
        }
    }
};

bool fail(std::string* why, const std::string& reason) {
    if (why) {
        *why = reason;
    }
    return false;
}

// Hardware virtualisation as /proc/cpuinfo reports it. /dev/kvm without it is a software
// hypervisor (e.g. kvm_pvm) that runs only guests built for it: simple probes pass there, but
// ordinary kernels die with "KVM internal error".
bool cpu_has_hardware_virtualisation() {
    std::ifstream in("/proc/cpuinfo");
    std::string line;
    while (std::getline(in, line)) {
        if (line.rfind("flags", 0) == 0) {
            std::istringstream words(line);
            std::string w;
            while (words >> w) {
                if (w == "vmx" || w == "svm") {
                    return true;
                }
            }
            return false;
        }
    }
    return false;
}

}  // namespace

bool kvm_runs_guests(std::string* why) {
    if (!cpu_has_hardware_virtualisation()) {
        return fail(why, std::filesystem::exists("/sys/module/kvm_pvm")
                             ? "the CPU has no VT-x/AMD-V; /dev/kvm is kvm_pvm"
                             : "the CPU has no VT-x/AMD-V");
    }
    UniqueFd kvm(open("/dev/kvm", O_RDWR | O_CLOEXEC));
    if (kvm.get() < 0) {
        return fail(why, std::string("/dev/kvm: ") + strerror(errno));
    }
    if (ioctl(kvm.get(), KVM_GET_API_VERSION, 0) != KVM_API_VERSION) {
        return fail(why, "unexpected KVM API version");
    }
    UniqueFd vm(ioctl(kvm.get(), KVM_CREATE_VM, 0));
    if (vm.get() < 0) {
        return fail(why, std::string("KVM_CREATE_VM: ") + strerror(errno));
    }
    // Guest code at 0x1000: out 0x10, al (al = 0x42); hlt.
    const unsigned char code[] = {0xb0, 0x42, 0xe6, 0x10, 0xf4};
    Mapping mem(mmap(nullptr, 0x1000, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0),
                0x1000);
    if (mem.addr == MAP_FAILED) {
        return fail(why, "mmap");
    }
    std::memcpy(mem.addr, code, sizeof(code));
    kvm_userspace_memory_region region{};
    region.slot = 0;
    region.guest_phys_addr = 0x1000;
    region.memory_size = 0x1000;
    region.userspace_addr = reinterpret_cast<__u64>(mem.addr);
    if (ioctl(vm.get(), KVM_SET_USER_MEMORY_REGION, &region) < 0) {
        return fail(why, std::string("KVM_SET_USER_MEMORY_REGION: ") + strerror(errno));
    }
    UniqueFd vcpu(ioctl(vm.get(), KVM_CREATE_VCPU, 0));
    if (vcpu.get() < 0) {
        return fail(why, std::string("KVM_CREATE_VCPU: ") + strerror(errno));
    }
    int run_size = ioctl(kvm.get(), KVM_GET_VCPU_MMAP_SIZE, 0);
    if (run_size <= 0) {
        return fail(why, "KVM_GET_VCPU_MMAP_SIZE");
    }
    Mapping run_map(mmap(nullptr, static_cast<size_t>(run_size), PROT_READ | PROT_WRITE, MAP_SHARED,
                         vcpu.get(), 0),
                    static_cast<size_t>(run_size));
    if (run_map.addr == MAP_FAILED) {
        return fail(why, "mmap kvm_run");
    }
    auto* run = static_cast<kvm_run*>(run_map.addr);
    kvm_sregs sregs{};
    if (ioctl(vcpu.get(), KVM_GET_SREGS, &sregs) < 0) {
        return fail(why, "KVM_GET_SREGS");
    }
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    if (ioctl(vcpu.get(), KVM_SET_SREGS, &sregs) < 0) {
        return fail(why, "KVM_SET_SREGS");
    }
    kvm_regs regs{};
    regs.rip = 0x1000;
    regs.rax = 0;
    regs.rflags = 0x2;
    if (ioctl(vcpu.get(), KVM_SET_REGS, &regs) < 0) {
        return fail(why, "KVM_SET_REGS");
    }
    bool saw_io = false;
    for (int step = 0; step < 4; ++step) {
        if (ioctl(vcpu.get(), KVM_RUN, 0) < 0) {
            return fail(why, std::string("KVM_RUN: ") + strerror(errno));
        }
        switch (run->exit_reason) {
            case KVM_EXIT_IO:
                saw_io = run->io.port == 0x10 &&
                         *(reinterpret_cast<unsigned char*>(run) + run->io.data_offset) == 0x42;
                break;
            case KVM_EXIT_HLT:
                return saw_io || fail(why, "test guest halted without its output");
            default:
                return fail(why, "test guest stopped with KVM exit reason " +
                                     std::to_string(run->exit_reason));
        }
    }
    return fail(why, "test guest did not halt");
}

Accel choose_accel(const std::string& setting) {
    if (setting == "kvm") {
        spdlog::info("VM acceleration: kvm (forced by configuration)");
        return Accel::Kvm;
    }
    if (setting == "tcg") {
        spdlog::info("VM acceleration: tcg (forced by configuration)");
        return Accel::Tcg;
    }
    std::string why;
    if (kvm_runs_guests(&why)) {
        spdlog::info("VM acceleration: kvm");
        return Accel::Kvm;
    }
    spdlog::info("VM acceleration: tcg (KVM cannot run guests here: {})", why);
    return Accel::Tcg;
}

const char* to_string(Accel a) {
    return a == Accel::Kvm ? "kvm" : "tcg";
}

}  // namespace unifaas
