#include "sandbox/oci_seccomp.h"

#include <sys/mman.h>
#include <unistd.h>

#include <sched.h>
#include <seccomp.h>

#include <array>
#include <memory>
#include <stdexcept>
#include <string_view>

#include <fmt/format.h>

namespace unifaas {

namespace {

constexpr std::array<const char*, 60> kDenied = {
    // modules, kexec, reboot, swap, accounting
    "init_module",
    "finit_module",
    "delete_module",
    "create_module",
    "query_module",
    "get_kernel_syms",
    "kexec_load",
    "kexec_file_load",
    "reboot",
    "swapon",
    "swapoff",
    "acct",
    // the clock
    "settimeofday",
    "clock_settime",
    "clock_adjtime",
    "adjtimex",
    "stime",
    // mounts and the root
    "mount",
    "umount",
    "umount2",
    "pivot_root",
    "chroot",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "move_mount",
    "open_tree",
    "mount_setattr",
    // namespaces (clone's flags below)
    "unshare",
    "setns",
    // other processes, tracing, the kernel's attack surface
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "kcmp",
    "perf_event_open",
    "bpf",
    "userfaultfd",
    "lookup_dcookie",
    "add_key",
    "request_key",
    "keyctl",
    "open_by_handle_at",
    "name_to_handle_at",
    "quotactl",
    "quotactl_fd",
    "nfsservctl",
    "uselib",
    "ustat",
    "sysfs",
    "_sysctl",
    "vhangup",
    "iopl",
    "ioperm",
    "vm86",
    "vm86old",
    "syslog",
    "sethostname",
    "setdomainname",
    "fanotify_init",
};

// Namespace flags clone() must not carry (each one denied on its own).
constexpr std::array<unsigned long, 7> kNamespaceFlags = {
    CLONE_NEWNS,  CLONE_NEWUTS, CLONE_NEWIPC,    CLONE_NEWUSER,
    CLONE_NEWPID, CLONE_NEWNET, CLONE_NEWCGROUP,
};

struct Release {
    void operator()(scmp_filter_ctx ctx) const { seccomp_release(ctx); }
};

void check(int rc, std::string_view what) {
    if (rc != 0) {
        throw std::runtime_error(fmt::format("seccomp: {}: error {}", what, rc));
    }
}

std::string base64(const std::string& bytes) {
    static constexpr char kAlphabet[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    std::string out;
    out.reserve((bytes.size() + 2) / 3 * 4);
    for (std::size_t i = 0; i < bytes.size(); i += 3) {
        unsigned n = static_cast<unsigned char>(bytes[i]) << 16;
        if (i + 1 < bytes.size()) {
            n |= static_cast<unsigned char>(bytes[i + 1]) << 8;
        }
        if (i + 2 < bytes.size()) {
            n |= static_cast<unsigned char>(bytes[i + 2]);
        }
        out += kAlphabet[(n >> 18) & 63];
        out += kAlphabet[(n >> 12) & 63];
        out += i + 1 < bytes.size() ? kAlphabet[(n >> 6) & 63] : '=';
        out += i + 2 < bytes.size() ? kAlphabet[n & 63] : '=';
    }
    return out;
}

std::string compile() {
    std::unique_ptr<void, Release> ctx(seccomp_init(SCMP_ACT_ALLOW));
    if (!ctx) {
        throw std::runtime_error("seccomp: cannot create a filter");
    }
    // Other ABIs of this machine (x32) are not in the filter: their calls kill the process.
    check(seccomp_attr_set(ctx.get(), SCMP_FLTATR_ACT_BADARCH, SCMP_ACT_KILL_PROCESS),
          "bad-architecture action");
    for (const char* name : kDenied) {
        int nr = seccomp_syscall_resolve_name(name);
        if (nr == __NR_SCMP_ERROR) {
            continue;  // not a syscall of this architecture (vm86 on x86-64, ...)
        }
        check(seccomp_rule_add(ctx.get(), SCMP_ACT_ERRNO(EPERM), nr, 0), name);
    }
    for (unsigned long flag : kNamespaceFlags) {
        check(seccomp_rule_add(ctx.get(), SCMP_ACT_ERRNO(EPERM), SCMP_SYS(clone), 1,
                               SCMP_A0(SCMP_CMP_MASKED_EQ, flag, flag)),
              "clone");
    }
    // clone3 passes its flags in memory, out of a filter's reach: ENOSYS makes libc use clone.
    check(seccomp_rule_add(ctx.get(), SCMP_ACT_ERRNO(ENOSYS), SCMP_SYS(clone3), 0), "clone3");
    int fd = memfd_create("unifaas-seccomp", MFD_CLOEXEC);
    if (fd < 0) {
        throw std::runtime_error("seccomp: memfd_create failed");
    }
    std::string bytes;
    int rc = seccomp_export_bpf(ctx.get(), fd);
    if (rc == 0) {
        off_t size = lseek(fd, 0, SEEK_END);
        bytes.resize(size > 0 ? static_cast<std::size_t>(size) : 0);
        rc =
            pread(fd, bytes.data(), bytes.size(), 0) == static_cast<ssize_t>(bytes.size()) ? 0 : -1;
    }
    close(fd);
    check(rc, "export");
    return base64(bytes);
}

}  // namespace

nlohmann::json oci_seccomp_profile() {
    nlohmann::json denied = nlohmann::json::array();
    for (const char* name : kDenied) {
        denied.push_back(name);
    }
    nlohmann::json syscalls = nlohmann::json::array(
        {{{"names", denied}, {"action", "SCMP_ACT_ERRNO"}, {"errnoRet", EPERM}},
         {{"names", {"clone3"}}, {"action", "SCMP_ACT_ERRNO"}, {"errnoRet", ENOSYS}}});
    for (unsigned long flag : kNamespaceFlags) {
        syscalls.push_back({{"names", {"clone"}},
                            {"action", "SCMP_ACT_ERRNO"},
                            {"errnoRet", EPERM},
                            {"args",
                             {{{"index", 0},
                               {"value", flag},
                               {"valueTwo", flag},
                               {"op", "SCMP_CMP_MASKED_EQ"}}}}});
    }
    return {{"defaultAction", "SCMP_ACT_ALLOW"},
            {"architectures", {"SCMP_ARCH_X86_64"}},
            {"syscalls", syscalls}};
}

const std::string& oci_seccomp_bpf_base64() {
    static const std::string filter = compile();  // immutable once built
    return filter;
}

}  // namespace unifaas
