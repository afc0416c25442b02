// The original UniFaaS function.toml shapes (tests/data/compat, a verbatim copy of the shared
// compatibility corpus) must load unchanged with the meaning in tests/data/compat/README.md.
#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <set>
#include <string>

#include "config/function_spec.h"
#include "registry/registry.h"

namespace unifaas {
namespace {

namespace fs = std::filesystem;

const fs::path kCorpus = fs::path(UNIFAAS_SOURCE_DIR) / "tests" / "data" / "compat" / "registry";
const fs::path kSharedCorpus = fs::path(UNIFAAS_SHARED_COMPAT_DIR) / "registry";

std::string read_all(const fs::path& file) {
    std::ifstream in(file, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
}

std::set<std::string> function_names(const fs::path& registry) {
    std::set<std::string> names;
    for (const auto& entry : fs::directory_iterator(registry)) {
        if (fs::exists(entry.path() / "function.toml")) {
            names.insert(entry.path().filename().string());
        }
    }
    return names;
}

// <tmp>/registry/<function>/function.toml, so "../../targets/..." lands in <tmp>/targets.
class CompatTest : public ::testing::Test {
  protected:
    void SetUp() override {
        char pattern[] = "/tmp/unifaas-compat-test-XXXXXX";
        ASSERT_NE(mkdtemp(pattern), nullptr);
        root_ = pattern;
        fs::copy(kCorpus, root_ / "registry", fs::copy_options::recursive);
    }
    void TearDown() override { fs::remove_all(root_); }

    void create_targets() {
        for (const char* file :
             {"linux-go/vmlinux", "linux-go/rootfs.ext4", "nanos-go/kernel.img",
              "nanos-go/benchmark.img", "osv-go/loader-stripped.elf", "osv-go/benchmark.raw"}) {
            fs::create_directories((targets() / file).parent_path());
            std::ofstream(targets() / file).flush();
        }
        fs::create_directories(targets() / "osv-go" / "rootdir");
    }

    fs::path targets() const { return root_ / "targets"; }
    fs::path function_dir(const std::string& name) const { return root_ / "registry" / name; }
    std::shared_ptr<const FunctionSpec> load(const std::string& name) {
        return load_function_spec(function_dir(name));
    }

    // The common top-level shape of the evaluation functions.
    static void expect_single_use_evaluation(const FunctionSpec& spec) {
        EXPECT_EQ(spec.concurrent_requests, 1u);
        EXPECT_TRUE(spec.single_use);
        EXPECT_EQ(spec.keepalive, Seconds(100));
    }

    fs::path root_;
};

TEST_F(CompatTest, CorpusHasTheSevenFunctions) {
    EXPECT_EQ(function_names(kCorpus),
              (std::set<std::string>{"docker-go", "gvisor-go", "linux-go", "microvm-block",
                                     "nanos-go", "osv-go", "qemu-9p"}));
}

TEST_F(CompatTest, NanosGo) {
    create_targets();
    auto spec = load("nanos-go");
    EXPECT_EQ(spec->name, "nanos-go");
    expect_single_use_evaluation(*spec);
    ASSERT_TRUE(spec->is_vm());
    const VmSpec& vm = spec->vm();
    EXPECT_EQ(spec->backend_name(), "firecracker");
    EXPECT_EQ(vm.hypervisor, HypervisorType::Firecracker);
    EXPECT_TRUE(vm.copy_rootfs);
    EXPECT_EQ(vm.memory_mib, 512u);
    EXPECT_EQ(vm.cpus, 1u);
    EXPECT_EQ(vm.kernel, targets() / "nanos-go" / "kernel.img");
    EXPECT_EQ(vm.image, targets() / "nanos-go" / "benchmark.img");
    EXPECT_FALSE(vm.initrd.has_value());
    EXPECT_EQ(vm.cmdline, "net.ip=%ip net.gw=%gateway net.mask=%netmask callback.url=%callback");
    for (const char* placeholder : {"%ip", "%gateway", "%netmask", "%callback"}) {
        EXPECT_NE(vm.cmdline.find(placeholder), std::string::npos) << placeholder;
    }
}

TEST_F(CompatTest, OsvGo) {
    create_targets();
    auto spec = load("osv-go");
    expect_single_use_evaluation(*spec);
    const VmSpec& vm = spec->vm();
    EXPECT_EQ(vm.hypervisor, HypervisorType::Firecracker);
    EXPECT_TRUE(vm.copy_rootfs);
    EXPECT_EQ(vm.memory_mib, 512u);
    EXPECT_EQ(vm.cpus, 1u);
    EXPECT_EQ(vm.kernel, targets() / "osv-go" / "loader-stripped.elf");
    EXPECT_EQ(vm.image, targets() / "osv-go" / "benchmark.raw");
    EXPECT_EQ(vm.cmdline,
              "--ip=eth0,%ip,%netmask --defaultgw=%gateway --nameserver=%gateway --rootfs=rofs "
              "/benchmark.so %callback");
    EXPECT_TRUE(vm.cmdline.ends_with(" %callback"));
}

TEST_F(CompatTest, LinuxGo) {
    create_targets();
    auto spec = load("linux-go");
    expect_single_use_evaluation(*spec);
    const VmSpec& vm = spec->vm();
    EXPECT_EQ(vm.hypervisor, HypervisorType::Firecracker);
    EXPECT_FALSE(vm.copy_rootfs);
    EXPECT_EQ(vm.memory_mib, 512u);
    EXPECT_EQ(vm.kernel, targets() / "linux-go" / "vmlinux");
    EXPECT_EQ(vm.image, targets() / "linux-go" / "rootfs.ext4");
    EXPECT_NE(vm.cmdline.find("ip=%ip::%gateway:%netmask:vm:eth0:off"), std::string::npos);
    EXPECT_TRUE(vm.cmdline.starts_with("callback=%callback "));
}

TEST_F(CompatTest, DockerGo) {
    auto spec = load("docker-go");  // containers name no files
    expect_single_use_evaluation(*spec);
    ASSERT_TRUE(spec->is_container());
    EXPECT_EQ(spec->backend_name(), "container");
    EXPECT_EQ(spec->container().image, "docker-go");
    EXPECT_EQ(spec->container().memory_mib, 512u);
    EXPECT_FALSE(spec->container().runtime.has_value());
}

TEST_F(CompatTest, GvisorGo) {
    auto spec = load("gvisor-go");
    expect_single_use_evaluation(*spec);
    ASSERT_TRUE(spec->is_container());
    EXPECT_EQ(spec->container().image, "docker-go");
    EXPECT_EQ(spec->container().memory_mib, 512u);
    EXPECT_EQ(spec->container().runtime, "runsc-kvm");
}

TEST_F(CompatTest, Qemu9p) {
    create_targets();
    auto spec = load("qemu-9p");
    EXPECT_EQ(spec->concurrent_requests, 2u);
    EXPECT_FALSE(spec->single_use);
    EXPECT_EQ(spec->keepalive, Seconds(30));
    const VmSpec& vm = spec->vm();
    EXPECT_EQ(spec->backend_name(), "qemu");
    EXPECT_EQ(vm.hypervisor, HypervisorType::Qemu);
    EXPECT_EQ(vm.disk_type, DiskType::NineP);
    EXPECT_EQ(vm.image, targets() / "osv-go" / "rootdir");
    EXPECT_TRUE(fs::is_directory(vm.image));
    EXPECT_EQ(vm.kernel, targets() / "osv-go" / "loader-stripped.elf");
    EXPECT_EQ(vm.cpus, 2u);
    EXPECT_EQ(vm.memory_mib, 256u);
}

TEST_F(CompatTest, MicrovmBlock) {
    create_targets();
    auto spec = load("microvm-block");
    EXPECT_EQ(spec->concurrent_requests, 4u);
    EXPECT_FALSE(spec->single_use);
    EXPECT_EQ(spec->keepalive, Seconds(10));
    const VmSpec& vm = spec->vm();
    EXPECT_EQ(spec->backend_name(), "microvm");
    EXPECT_EQ(vm.hypervisor, HypervisorType::Microvm);
    EXPECT_EQ(vm.disk_type, DiskType::Block);
    EXPECT_FALSE(vm.pic);
    EXPECT_FALSE(vm.pit);
    EXPECT_TRUE(vm.rtc);
    EXPECT_TRUE(vm.acpi);
    EXPECT_FALSE(vm.auto_kernel_cmdline);
    EXPECT_EQ(vm.memory_mib, 128u);
    EXPECT_EQ(vm.cpus, 1u);
    EXPECT_EQ(vm.kernel, targets() / "linux-go" / "vmlinux");
    EXPECT_EQ(vm.image, targets() / "linux-go" / "rootfs.ext4");
}

TEST_F(CompatTest, MissingTargetsNameTheResolvedPath) {
    try {
        load("nanos-go");
        FAIL() << "loaded without its kernel";
    } catch (const ConfigError& e) {
        EXPECT_EQ(std::string(e.what()),
                  (function_dir("nanos-go") / "function.toml").string() + ": vm.kernel: " +
                      (targets() / "nanos-go" / "kernel.img").string() + " does not exist");
    }
}

TEST_F(CompatTest, WholeRegistryLoadsThroughRegistry) {
    create_targets();
    Registry registry(root_ / "registry");
    auto names = registry.scan();
    EXPECT_EQ(std::set<std::string>(names.begin(), names.end()), function_names(kCorpus));
    for (const auto& name : names) {
        auto entry = registry.lookup(name);
        ASSERT_TRUE(entry.has_value()) << name;
        EXPECT_NE(entry->spec, nullptr) << name << ": " << entry->error;
    }
}

TEST(CompatCorpusTest, MatchesSharedCorpusByteForByte) {
    if (!fs::is_directory(kSharedCorpus)) {
        GTEST_SKIP() << "shared compat corpus not present at " << kSharedCorpus.string();
    }
    auto names = function_names(kSharedCorpus);
    EXPECT_EQ(names, function_names(kCorpus));
    for (const auto& name : names) {
        EXPECT_EQ(read_all(kCorpus / name / "function.toml"),
                  read_all(kSharedCorpus / name / "function.toml"))
            << name << " differs from " << (kSharedCorpus / name / "function.toml").string();
    }
}

}  // namespace
}  // namespace unifaas
