// The qemu command line of an instance, and the VM helpers it is built from.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>

#include "sandbox/qemu_backend.h"
#include "sandbox/restore_channel.h"
#include "sandbox/vm_common.h"
#include "sandbox/vm_template.h"

namespace unifaas {
namespace {

namespace fs = std::filesystem;

// The value following `option` in argv ("" when absent).
std::string arg_after(const std::vector<std::string>& argv, const std::string& option,
                      int nth = 0) {
    for (std::size_t i = 0; i + 1 < argv.size(); ++i) {
        if (argv[i] == option && nth-- == 0) {
            return argv[i + 1];
        }
    }
    return "";
}

QemuLaunch launch_for(const VmSpec& vm, Accel accel = Accel::Tcg) {
    QemuLaunch l;
    l.accel = accel;
    l.name = "fn-abc";
    l.vm = &vm;
    l.kernel_cmdline = "console=ttyS0";
    l.tap = "faas3";
    l.mac = "02:fa:0a:64:00:0e";
    l.console_log = "/run/unifaas/instances/abc/console.log";
    return l;
}

TEST(QemuCommandLine, MicrovmEmitsEveryFlagExplicitly) {
    // The shape of the compat corpus' microvm-block: pic/pit off, rtc/acpi on, no auto cmdline.
    VmSpec vm;
    vm.hypervisor = HypervisorType::Microvm;
    vm.kernel = "/k/vmlinux";
    vm.image = "/k/rootfs.ext4";
    vm.pic = false;
    vm.pit = false;
    vm.rtc = true;
    vm.acpi = true;
    vm.auto_kernel_cmdline = false;
    auto argv = qemu_command_line(launch_for(vm));
    EXPECT_EQ(argv[0], "qemu-system-x86_64");
    EXPECT_EQ(arg_after(argv, "-M"),
              "microvm,pic=off,pit=off,rtc=on,acpi=on,auto-kernel-cmdline=off");
    EXPECT_EQ(arg_after(argv, "-accel"), "tcg");
    EXPECT_EQ(arg_after(argv, "-cpu"), "max");
    EXPECT_EQ(arg_after(argv, "-m"), "128");
    EXPECT_EQ(arg_after(argv, "-smp"), "1");
    EXPECT_EQ(arg_after(argv, "-kernel"), "/k/vmlinux");
    EXPECT_EQ(arg_after(argv, "-append"), "console=ttyS0");
    EXPECT_EQ(arg_after(argv, "-serial"), "file:/run/unifaas/instances/abc/console.log");
    EXPECT_EQ(arg_after(argv, "-netdev"), "tap,id=net0,ifname=faas3,script=no,downscript=no");
    EXPECT_EQ(arg_after(argv, "-device"), "virtio-net-device,netdev=net0,mac=02:fa:0a:64:00:0e");
    EXPECT_EQ(arg_after(argv, "-drive"),
              "id=rootfs,file=/k/rootfs.ext4,format=raw,if=none,snapshot=on");
    EXPECT_EQ(arg_after(argv, "-device", 1), "virtio-blk-device,drive=rootfs");
    EXPECT_EQ(arg_after(argv, "-initrd"), "");
    EXPECT_NE(std::find(argv.begin(), argv.end(), "-nodefaults"), argv.end());
    EXPECT_NE(std::find(argv.begin(), argv.end(), "-no-reboot"), argv.end());
}

TEST(QemuCommandLine, MicrovmDefaultsAreOnAndEmitted) {
    VmSpec vm;
    vm.hypervisor = HypervisorType::Microvm;
    vm.kernel = "/k/vmlinux";
    vm.initrd = "/k/initrd.gz";
    auto argv = qemu_command_line(launch_for(vm));
    EXPECT_EQ(arg_after(argv, "-M"), "microvm,pic=on,pit=on,rtc=on,acpi=on,auto-kernel-cmdline=on");
    EXPECT_EQ(arg_after(argv, "-initrd"), "/k/initrd.gz");
    EXPECT_EQ(arg_after(argv, "-drive"), "") << "no image, no disk";
}

TEST(QemuCommandLine, QemuNinePSharesTheDirectoryOverPci) {
    // The compat corpus' qemu-9p: 2 cpus, 256 MiB, a directory over 9p.
    VmSpec vm;
    vm.hypervisor = HypervisorType::Qemu;
    vm.disk_type = DiskType::NineP;
    vm.kernel = "/osv/loader-stripped.elf";
    vm.image = "/osv/rootdir";
    vm.memory_mib = 256;
    vm.cpus = 2;
    auto argv = qemu_command_line(launch_for(vm, Accel::Kvm));
    EXPECT_EQ(arg_after(argv, "-M"), "q35");
    EXPECT_EQ(arg_after(argv, "-accel"), "kvm");
    EXPECT_EQ(arg_after(argv, "-cpu"), "host");
    EXPECT_EQ(arg_after(argv, "-m"), "256");
    EXPECT_EQ(arg_after(argv, "-smp"), "2");
    EXPECT_EQ(arg_after(argv, "-device"), "virtio-net-pci,netdev=net0,mac=02:fa:0a:64:00:0e");
    EXPECT_EQ(arg_after(argv, "-fsdev"),
              "local,id=rootfs,path=/osv/rootdir,security_model=none,readonly=on");
    EXPECT_EQ(arg_after(argv, "-device", 1), "virtio-9p-pci,fsdev=rootfs,mount_tag=rootfs");
}

TEST(QemuCommandLine, QemuBlockUsesVirtioBlkPci) {
    VmSpec vm;
    vm.hypervisor = HypervisorType::Qemu;
    vm.kernel = "/k/bzImage";
    vm.image = "/k/disk.img";
    auto argv = qemu_command_line(launch_for(vm));
    EXPECT_EQ(arg_after(argv, "-device", 1), "virtio-blk-pci,drive=rootfs");
}

TEST(QemuCommandLine, SnapshotTemplateSharesItsRamFileAndHasQmp) {
    VmSpec vm;
    vm.hypervisor = HypervisorType::Microvm;
    vm.kernel = "/k/vmlinux";
    vm.initrd = "/k/initrd.gz";
    auto launch = launch_for(vm);
    launch.memory_file = QemuLaunch::MemoryFile{"/snap/.partial-k/memory", true};
    launch.qmp_socket = "/run/unifaas/instances/abc/qmp.sock";
    auto argv = qemu_command_line(launch);
    EXPECT_EQ(arg_after(argv, "-M"),
              "microvm,pic=on,pit=on,rtc=on,acpi=on,auto-kernel-cmdline=on,memory-backend=mem");
    EXPECT_EQ(arg_after(argv, "-object"),
              "memory-backend-file,id=mem,mem-path=/snap/.partial-k/memory,size=128M,share=on");
    EXPECT_EQ(arg_after(argv, "-qmp"),
              "unix:/run/unifaas/instances/abc/qmp.sock,server=on,wait=off");
    EXPECT_EQ(std::find(argv.begin(), argv.end(), "-incoming"), argv.end());
}

TEST(QemuCommandLine, SnapshotCloneMapsTheTemplatePrivateAndWaitsForItsState) {
    VmSpec vm;
    vm.hypervisor = HypervisorType::Qemu;
    vm.kernel = "/k/bzImage";
    vm.initrd = "/k/initrd.gz";
    vm.memory_mib = 256;
    auto launch = launch_for(vm);
    launch.memory_file = QemuLaunch::MemoryFile{"/snap/k/memory", false};
    launch.incoming = true;
    auto argv = qemu_command_line(launch);
    EXPECT_EQ(arg_after(argv, "-M"), "q35,memory-backend=mem");
    EXPECT_EQ(arg_after(argv, "-object"),
              "memory-backend-file,id=mem,mem-path=/snap/k/memory,size=256M,share=off");
    EXPECT_EQ(arg_after(argv, "-incoming"), "defer");
}

TEST(RestoreChannel, MessageCarriesIdentityTimeAndFreshEntropy) {
    RestoreMessage m{"10.100.0.6", "10.100.0.5", "255.255.255.252",
                     "http://10.100.0.5:8124/ready/00ff", "abcd"};
    std::string a = format_restore_message(m);
    std::string b = format_restore_message(m);
    EXPECT_EQ(a.rfind("unifaas-restore=1\nip=10.100.0.6\ngw=10.100.0.5\nmask=255.255.255.252\n"
                      "callback=http://10.100.0.5:8124/ready/00ff\nnonce=abcd\ntime=",
                      0),
              0u)
        << a;
    auto entropy = [](const std::string& text) {
        auto at = text.find("entropy=");
        return text.substr(at + 8, text.find('\n', at) - at - 8);
    };
    EXPECT_EQ(entropy(a).size(), 64u);
    EXPECT_NE(entropy(a), entropy(b)) << "every message carries new random bytes";
    EXPECT_TRUE(is_restore_ack("unifaas-restored=1\nnonce=abcd\n", "abcd"));
    EXPECT_FALSE(is_restore_ack("unifaas-restored=1\nnonce=abce\n", "abcd"));
}

TEST(TemplateKey, ChangesWithTheFunctionFileAndTheKernel) {
    char tmpl[] = "/tmp/unifaas-key-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    fs::path dir = tmpl;
    std::ofstream(dir / "vmlinux") << "kernel";
    std::ofstream(dir / "function.toml") << "a";
    FunctionSpec spec;
    spec.name = "f";
    spec.file = dir / "function.toml";
    VmSpec vm;
    vm.kernel = dir / "vmlinux";
    spec.sandbox = vm;
    std::string k1 = template_key(spec, "/usr/bin/qemu-system-x86_64", Accel::Tcg);
    EXPECT_EQ(k1.size(), 32u);
    EXPECT_EQ(template_key(spec, "/usr/bin/qemu-system-x86_64", Accel::Tcg), k1);
    EXPECT_NE(template_key(spec, "/usr/bin/qemu-system-x86_64", Accel::Kvm), k1);
    std::ofstream(dir / "function.toml") << "b";
    std::string k2 = template_key(spec, "/usr/bin/qemu-system-x86_64", Accel::Tcg);
    EXPECT_NE(k2, k1);
    fs::last_write_time(dir / "vmlinux",
                        fs::last_write_time(dir / "vmlinux") + std::chrono::seconds(1));
    EXPECT_NE(template_key(spec, "/usr/bin/qemu-system-x86_64", Accel::Tcg), k2);
    std::get<VmSpec>(spec.sandbox).memory_mib = 256;
    EXPECT_NE(template_key(spec, "/usr/bin/qemu-system-x86_64", Accel::Tcg), k2);
    fs::remove_all(dir);
}

TEST(SubstituteCmdline, ReplacesEveryPlaceholder) {
    GuestAddressing a{"10.100.0.2", "10.100.0.1", "255.255.255.252",
                      "http://10.100.0.1:8124/ready/ab"};
    // The compat corpus' Linux ip= syntax, Nanos and OSv forms.
    EXPECT_EQ(substitute_cmdline("callback=%callback ip=%ip::%gateway:%netmask:vm:eth0:off ro", a),
              "callback=http://10.100.0.1:8124/ready/ab "
              "ip=10.100.0.2::10.100.0.1:255.255.255.252:vm:eth0:off ro");
    EXPECT_EQ(substitute_cmdline(
                  "net.ip=%ip net.gw=%gateway net.mask=%netmask callback.url=%callback", a),
              "net.ip=10.100.0.2 net.gw=10.100.0.1 net.mask=255.255.255.252 "
              "callback.url=http://10.100.0.1:8124/ready/ab");
    EXPECT_EQ(substitute_cmdline("--ip=eth0,%ip,%netmask /benchmark.so %callback", a),
              "--ip=eth0,10.100.0.2,255.255.255.252 /benchmark.so http://10.100.0.1:8124/ready/ab");
    EXPECT_EQ(substitute_cmdline("100% %unknown %ipx", a), "100% %unknown 10.100.0.2x");
}

class VmFilesTest : public ::testing::Test {
  protected:
    void SetUp() override {
        char tmpl[] = "/tmp/unifaas-vmfiles-XXXXXX";
        ASSERT_NE(mkdtemp(tmpl), nullptr);
        dir_ = tmpl;
    }
    void TearDown() override { fs::remove_all(dir_); }
    fs::path dir_;
};

TEST_F(VmFilesTest, TailLinesReturnsTheLastLines) {
    std::ofstream(dir_ / "log") << "one\ntwo\r\nthree\nfour\n\n";
    EXPECT_EQ(tail_lines(dir_ / "log", 2), "three\nfour");
    EXPECT_EQ(tail_lines(dir_ / "log", 10), "one\ntwo\nthree\nfour");
    EXPECT_EQ(tail_lines(dir_ / "missing", 3), "");
}

TEST_F(VmFilesTest, WorkDirIsPrivateAndRemoved) {
    fs::path path;
    {
        WorkDir w(dir_, "abc123");
        path = w.path();
        EXPECT_EQ(path, dir_ / "instances" / "abc123");
        std::ofstream(path / "console.log") << "x";
        EXPECT_EQ(fs::status(path).permissions() & fs::perms::all, fs::perms::owner_all);
    }
    EXPECT_FALSE(fs::exists(path));
}

TEST_F(VmFilesTest, LinuxKernelDetection) {
    std::string bz(0x400, '\0');
    bz.replace(0x202, 4, "HdrS");
    std::ofstream(dir_ / "bzImage", std::ios::binary) << bz;
    EXPECT_TRUE(is_linux_kernel(dir_ / "bzImage"));
    std::ofstream(dir_ / "unikernel", std::ios::binary) << std::string(0x400, 'u');
    EXPECT_FALSE(is_linux_kernel(dir_ / "unikernel"));
    EXPECT_FALSE(is_linux_kernel(dir_ / "missing"));
    // An ELF executable without a Linux note (a static unikernel-like binary: this test).
    EXPECT_FALSE(is_linux_kernel("/proc/self/exe"));
}

}  // namespace
}  // namespace unifaas
