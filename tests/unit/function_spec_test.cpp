// function.toml: every key (default and explicit), every error, path resolution, name rules.
#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "config/function_spec.h"

namespace unifaas {
namespace {

namespace fs = std::filesystem;

class FunctionSpecTest : public ::testing::Test {
  protected:
    void SetUp() override {
        char pattern[] = "/tmp/unifaas-spec-test-XXXXXX";
        ASSERT_NE(mkdtemp(pattern), nullptr);
        root_ = pattern;
        dir_ = root_ / "registry" / "hello";
        fs::create_directories(dir_);
        touch("vmlinux");
        touch("rootfs.ext4");
        touch("initrd.img");
        fs::create_directory(dir_ / "rootdir");
    }
    void TearDown() override { fs::remove_all(root_); }

    void touch(const fs::path& relative) { std::ofstream(dir_ / relative).flush(); }
    std::string file() const { return (dir_ / "function.toml").string(); }

    std::shared_ptr<const FunctionSpec> load(const std::string& toml) {
        std::ofstream(dir_ / "function.toml") << toml;
        return load_function_spec(dir_);
    }

    // The ConfigError message for `toml`, or "" (and a test failure) when it loads.
    std::string error(const std::string& toml) {
        try {
            load(toml);
        } catch (const ConfigError& e) {
            return e.what();
        }
        ADD_FAILURE() << "loaded without error:\n" << toml;
        return "";
    }

    // "<file>: <key>: <problem>" with `problem` exactly.
    void expect_error(const std::string& toml, const std::string& key_and_problem) {
        EXPECT_EQ(error(toml), file() + ": " + key_and_problem) << toml;
    }

    fs::path root_;
    fs::path dir_;
};

const std::string kContainer = "[container]\nimage = \"hello\"\n";
const std::string kFirecracker =
    "[vm]\nkernel = \"vmlinux\"\nimage = \"rootfs.ext4\"\nhypervisor = { type = \"firecracker\" "
    "}\n";

std::string vm_with(const std::string& hypervisor, const std::string& extra = "") {
    return "[vm]\nkernel = \"vmlinux\"\nimage = \"rootfs.ext4\"\n" + extra + "hypervisor = { " +
           hypervisor + " }\n";
}

// --- top-level keys ---

TEST_F(FunctionSpecTest, TopLevelDefaults) {
    auto spec = load(kContainer);
    EXPECT_EQ(spec->name, "hello");
    EXPECT_EQ(spec->dir, dir_);
    EXPECT_EQ(spec->file, dir_ / "function.toml");
    EXPECT_EQ(spec->concurrent_requests, 1u);
    EXPECT_FALSE(spec->single_use);
    EXPECT_EQ(spec->keepalive, Seconds(60));
    EXPECT_EQ(spec->port, 8080);
    EXPECT_EQ(spec->max_instances, 10u);
    EXPECT_EQ(spec->min_instances, 0u);
    EXPECT_EQ(spec->queue_timeout, Seconds(10));
    EXPECT_EQ(spec->boot_timeout, Seconds(25));
    EXPECT_EQ(spec->request_timeout, Seconds(60));
    EXPECT_EQ(spec->stream_idle_timeout, Seconds(60));
    EXPECT_FALSE(spec->stream_max_duration);
    EXPECT_FALSE(spec->max_body_size);
    EXPECT_TRUE(spec->env.empty());
}

TEST_F(FunctionSpecTest, StreamTimeouts) {
    auto spec = load("stream-idle-timeout = 2.5\nstream-max-duration = 3600\n" + kContainer);
    EXPECT_EQ(spec->stream_idle_timeout, Seconds(2.5));
    EXPECT_EQ(spec->stream_max_duration, Seconds(3600));
    expect_error("stream-idle-timeout = 0\n" + kContainer,
                 "stream-idle-timeout: must be greater than 0 (got 0)");
    expect_error("stream-max-duration = \"1h\"\n" + kContainer,
                 "stream-max-duration: expected a number of seconds, got string");
    EXPECT_EQ(load("max-body-size = 1000\n" + kContainer)->max_body_size, 1000u);
    expect_error("max-body-size = 0\n" + kContainer, "max-body-size: must be at least 1 (got 0)");
}

TEST_F(FunctionSpecTest, TopLevelExplicit) {
    auto spec = load(
        "concurrent-requests = 8\nsingle-use = true\nkeepalive = 100\nport = 9000\n"
        "max-instances = 3\nmin-instances = 2\nqueue-timeout = 0.5\nboot-timeout = 5\n"
        "request-timeout = 120.25\n" +
        kContainer);
    EXPECT_EQ(spec->concurrent_requests, 8u);
    EXPECT_TRUE(spec->single_use);
    EXPECT_EQ(spec->keepalive, Seconds(100));
    EXPECT_EQ(spec->port, 9000);
    EXPECT_EQ(spec->max_instances, 3u);
    EXPECT_EQ(spec->min_instances, 2u);
    EXPECT_EQ(spec->queue_timeout, Seconds(0.5));
    EXPECT_EQ(spec->boot_timeout, Seconds(5));
    EXPECT_EQ(spec->request_timeout, Seconds(120.25));
}

TEST_F(FunctionSpecTest, DurationsAcceptFloatsAndZero) {
    EXPECT_EQ(load("keepalive = 2.5\n" + kContainer)->keepalive, Seconds(2.5));
    EXPECT_EQ(load("keepalive = 0\n" + kContainer)->keepalive, Seconds(0));
    EXPECT_EQ(load("queue-timeout = 0\n" + kContainer)->queue_timeout, Seconds(0));
}

TEST_F(FunctionSpecTest, PortBounds) {
    EXPECT_EQ(load("port = 1\n" + kContainer)->port, 1);
    EXPECT_EQ(load("port = 65535\n" + kContainer)->port, 65535);
}

TEST_F(FunctionSpecTest, MinInstancesMayEqualMax) {
    auto spec = load("max-instances = 2\nmin-instances = 2\n" + kContainer);
    EXPECT_EQ(spec->min_instances, 2u);
}

TEST_F(FunctionSpecTest, EnvValuesBecomeStrings) {
    auto spec =
        load(kContainer +
             "[env]\nGREETING = \"hi there\"\nCOUNT = 42\nNEG = -7\nRATIO = 1.5\n"
             "DEBUG = true\nQUIET = false\n_under = \"\"\nA1 = \"x=y\"\nONE = 1.0\nTENTH = 0.1\n");
    std::map<std::string, std::string> expected{
        {"GREETING", "hi there"}, {"COUNT", "42"},    {"NEG", "-7"},  {"RATIO", "1.5"},
        {"DEBUG", "true"},        {"QUIET", "false"}, {"_under", ""}, {"A1", "x=y"},
        {"ONE", "1.0"},           {"TENTH", "0.1"}};
    EXPECT_EQ(spec->env, expected);
}

TEST_F(FunctionSpecTest, EnvAsInlineTable) {
    auto spec = load("env = { A = \"1\" }\n" + kContainer);
    EXPECT_EQ(spec->env.at("A"), "1");
}

// --- top-level errors ---

TEST_F(FunctionSpecTest, ConcurrentRequestsErrors) {
    expect_error("concurrent-requests = 0\n" + kContainer,
                 "concurrent-requests: must be at least 1 (got 0)");
    expect_error("concurrent-requests = -3\n" + kContainer,
                 "concurrent-requests: must be at least 1 (got -3)");
    expect_error("concurrent-requests = \"4\"\n" + kContainer,
                 "concurrent-requests: expected an integer, got string");
    expect_error("concurrent-requests = 1.5\n" + kContainer,
                 "concurrent-requests: expected an integer, got float");
    expect_error("concurrent-requests = 5000000000\n" + kContainer,
                 "concurrent-requests: must be at most 4294967295 (got 5000000000)");
}

TEST_F(FunctionSpecTest, SingleUseErrors) {
    expect_error("single-use = \"yes\"\n" + kContainer,
                 "single-use: expected a boolean (true or false), got string");
    expect_error("single-use = 1\n" + kContainer,
                 "single-use: expected a boolean (true or false), got integer");
}

TEST_F(FunctionSpecTest, KeepaliveErrors) {
    expect_error("keepalive = -1\n" + kContainer, "keepalive: must be at least 0 (got -1)");
    expect_error("keepalive = -0.5\n" + kContainer, "keepalive: must be at least 0 (got -0.5)");
    expect_error("keepalive = \"100\"\n" + kContainer,
                 "keepalive: expected a number of seconds, got string");
    expect_error("keepalive = inf\n" + kContainer,
                 "keepalive: must be a finite number of seconds (got inf)");
    expect_error("keepalive = nan\n" + kContainer,
                 "keepalive: must be a finite number of seconds (got nan)");
    expect_error("keepalive = 1e12\n" + kContainer,
                 "keepalive: must be at most 1000000000 (got 1000000000000)");
    expect_error("keepalive = 1979-05-27\n" + kContainer,
                 "keepalive: expected a number of seconds, got date");
}

TEST_F(FunctionSpecTest, PortErrors) {
    expect_error("port = 0\n" + kContainer, "port: must be between 1 and 65535 (got 0)");
    expect_error("port = 65536\n" + kContainer, "port: must be between 1 and 65535 (got 65536)");
    expect_error("port = \"80\"\n" + kContainer, "port: expected an integer, got string");
}

TEST_F(FunctionSpecTest, InstanceCountErrors) {
    expect_error("max-instances = 0\n" + kContainer, "max-instances: must be at least 1 (got 0)");
    expect_error("min-instances = -1\n" + kContainer, "min-instances: must be at least 0 (got -1)");
    expect_error("max-instances = 2\nmin-instances = 3\n" + kContainer,
                 "min-instances: must not exceed max-instances (3 > 2)");
    expect_error("min-instances = 11\n" + kContainer,
                 "min-instances: must not exceed max-instances (11 > 10)");
    expect_error("max-instances = true\n" + kContainer,
                 "max-instances: expected an integer, got boolean");
}

TEST_F(FunctionSpecTest, TimeoutErrors) {
    expect_error("queue-timeout = -1\n" + kContainer, "queue-timeout: must be at least 0 (got -1)");
    expect_error("boot-timeout = 0\n" + kContainer, "boot-timeout: must be greater than 0 (got 0)");
    expect_error("boot-timeout = -2\n" + kContainer,
                 "boot-timeout: must be greater than 0 (got -2)");
    expect_error("request-timeout = 0\n" + kContainer,
                 "request-timeout: must be greater than 0 (got 0)");
    expect_error("request-timeout = [1]\n" + kContainer,
                 "request-timeout: expected a number of seconds, got array");
}

TEST_F(FunctionSpecTest, EnvErrors) {
    expect_error("env = 5\n" + kContainer, "env: expected a table, got integer");
    expect_error(
        kContainer + "[env]\n1ABC = \"x\"\n",
        "env.1ABC: not a valid environment variable name (expected [A-Za-z_][A-Za-z0-9_]*)");
    expect_error(
        kContainer + "[env]\nA-B = \"x\"\n",
        "env.A-B: not a valid environment variable name (expected [A-Za-z_][A-Za-z0-9_]*)");
    expect_error(kContainer + "[env]\n\"A.B\" = \"x\"\n",
                 "env.\"A.B\": not a valid environment variable name (expected "
                 "[A-Za-z_][A-Za-z0-9_]*)");
    expect_error(
        kContainer + "[env]\n\"\" = \"x\"\n",
        "env.\"\": not a valid environment variable name (expected [A-Za-z_][A-Za-z0-9_]*)");
    expect_error(kContainer + "[env]\nLIST = [1, 2]\n",
                 "env.LIST: expected a string, number or boolean, got array");
    expect_error(kContainer + "[env]\nT = { a = 1 }\n",
                 "env.T: expected a string, number or boolean, got table");
    expect_error(kContainer + "[env]\nNUL = \"a\\u0000b\"\n",
                 "env.NUL: must not contain a NUL character");
}

TEST_F(FunctionSpecTest, UnknownTopLevelKey) {
    expect_error("foo = 1\n" + kContainer, "foo: unknown key");
    expect_error("concurrent_requests = 2\n" + kContainer,
                 "concurrent_requests: unknown key (did you mean concurrent-requests?)");
    expect_error("[extra]\na = 1\n" + kContainer, "extra: unknown key");
}

TEST_F(FunctionSpecTest, FirstUnknownKeyInFileOrderIsReported) {
    expect_error("zzz = 1\naaa = 2\n" + kContainer, "zzz: unknown key");
}

TEST_F(FunctionSpecTest, BothOrNeitherSandboxTable) {
    EXPECT_EQ(error(kContainer + kFirecracker),
              file() + ": both [vm] and [container] given (a function runs in exactly one)");
    EXPECT_EQ(error("concurrent-requests = 1\n"),
              file() + ": missing [vm] or [container] (a function needs exactly one)");
    EXPECT_EQ(error(""), file() + ": missing [vm] or [container] (a function needs exactly one)");
}

TEST_F(FunctionSpecTest, SandboxTablesMustBeTables) {
    expect_error("vm = 5\n", "vm: expected a table, got integer");
    expect_error("container = \"hello\"\n", "container: expected a table, got string");
}

// --- [container] ---

TEST_F(FunctionSpecTest, ContainerDefaults) {
    auto spec = load(kContainer);
    ASSERT_TRUE(spec->is_container());
    EXPECT_FALSE(spec->is_vm());
    EXPECT_EQ(spec->backend_name(), "container");
    EXPECT_EQ(spec->container().image, "hello");
    EXPECT_EQ(spec->container().memory_mib, 128u);
    EXPECT_FALSE(spec->container().runtime.has_value());
}

TEST_F(FunctionSpecTest, ContainerExplicit) {
    auto spec = load(
        "[container]\nimage = \"registry.local/fn:1.0\"\nmemory = 512\n"
        "runtime = \"runsc-kvm\"\n");
    EXPECT_EQ(spec->container().image, "registry.local/fn:1.0");
    EXPECT_EQ(spec->container().memory_mib, 512u);
    EXPECT_EQ(spec->container().runtime, "runsc-kvm");
}

TEST_F(FunctionSpecTest, ContainerMemoryBounds) {
    EXPECT_EQ(load(kContainer + "memory = 4\n")->container().memory_mib, 4u);
    EXPECT_EQ(load(kContainer + "memory = 1048576\n")->container().memory_mib, 1048576u);
    expect_error(kContainer + "memory = 3\n",
                 "container.memory: must be between 4 and 1048576 (got 3)");
    expect_error(kContainer + "memory = 1048577\n",
                 "container.memory: must be between 4 and 1048576 (got 1048577)");
    expect_error(kContainer + "memory = \"512\"\n",
                 "container.memory: expected an integer, got string");
}

TEST_F(FunctionSpecTest, ContainerErrors) {
    expect_error("[container]\nmemory = 512\n", "container.image: required");
    expect_error("[container]\nimage = \"\"\n", "container.image: must not be empty");
    expect_error("[container]\nimage = 5\n", "container.image: expected a string, got integer");
    expect_error(kContainer + "runtime = \"\"\n", "container.runtime: must not be empty");
    expect_error(kContainer + "runtime = true\n",
                 "container.runtime: expected a string, got boolean");
    expect_error(kContainer + "cpus = 2\n", "container.cpus: unknown key");
}

TEST_F(FunctionSpecTest, ContainerEngineDefaultsToDocker) {
    auto spec = load(kContainer);
    EXPECT_EQ(spec->container().engine, ContainerEngine::Docker);
    EXPECT_TRUE(spec->container().image_path.empty());  // an image name, not a path
    EXPECT_TRUE(spec->container().entrypoint.empty());
    EXPECT_EQ(load("[container]\nengine = \"docker\"\nimage = \"hello\"\n")->container().engine,
              ContainerEngine::Docker);
}

TEST_F(FunctionSpecTest, OciEngineResolvesImageAgainstFunctionDir) {
    auto spec = load(
        "[container]\nengine = \"oci\"\nimage = \"rootdir\"\nmemory = 32\n"
        "runtime = \"runc\"\nentrypoint = [\"/hello\", \"-v\"]\n");
    const ContainerSpec& c = spec->container();
    EXPECT_EQ(c.engine, ContainerEngine::Oci);
    EXPECT_EQ(spec->backend_name(), "oci");
    EXPECT_EQ(c.image, "rootdir");
    EXPECT_EQ(c.image_path, dir_ / "rootdir");
    EXPECT_EQ(c.memory_mib, 32u);
    EXPECT_EQ(c.runtime, "runc");
    EXPECT_EQ(c.entrypoint, (std::vector<std::string>{"/hello", "-v"}));
    // A .tar (docker-archive) is a regular file.
    auto tar = load("[container]\nengine = \"oci\"\nimage = \"rootfs.ext4\"\n");
    EXPECT_EQ(tar->container().image_path, dir_ / "rootfs.ext4");
}

TEST_F(FunctionSpecTest, ContainerEngineErrors) {
    expect_error("[container]\nengine = \"podman\"\nimage = \"x\"\n",
                 "container.engine: unknown engine \"podman\" (expected docker, oci)");
    expect_error("[container]\nengine = 1\nimage = \"x\"\n",
                 "container.engine: expected a string, got integer");
    expect_error("[container]\nengine = \"oci\"\nimage = \"missing\"\n",
                 "container.image: " + (dir_ / "missing").string() +
                     " does not exist (engine \"oci\" takes a rootfs directory, an OCI layout "
                     "or a .tar)");
    expect_error(kContainer + "entrypoint = [\"/hello\"]\n",
                 "container.entrypoint: only valid with engine = \"oci\" (Docker takes the "
                 "image's ENTRYPOINT)");
    const std::string oci = "[container]\nengine = \"oci\"\nimage = \"rootdir\"\n";
    expect_error(oci + "entrypoint = []\n", "container.entrypoint: must not be empty");
    expect_error(oci + "entrypoint = \"/hello\"\n",
                 "container.entrypoint: expected an array of strings, got string");
    expect_error(oci + "entrypoint = [\"/hello\", 1]\n",
                 "container.entrypoint: every element must be a non-empty string without NUL "
                 "characters");
}

// --- [vm] ---

TEST_F(FunctionSpecTest, VmDefaults) {
    auto spec = load(kFirecracker);
    ASSERT_TRUE(spec->is_vm());
    EXPECT_FALSE(spec->is_container());
    const VmSpec& vm = spec->vm();
    EXPECT_EQ(spec->backend_name(), "firecracker");
    EXPECT_EQ(vm.hypervisor, HypervisorType::Firecracker);
    EXPECT_EQ(vm.kernel, dir_ / "vmlinux");
    EXPECT_EQ(vm.image, dir_ / "rootfs.ext4");
    EXPECT_FALSE(vm.initrd.has_value());
    EXPECT_EQ(vm.memory_mib, 128u);
    EXPECT_EQ(vm.cpus, 1u);
    EXPECT_EQ(vm.cmdline, "");
    EXPECT_TRUE(vm.copy_rootfs);
    EXPECT_EQ(vm.disk_type, DiskType::Block);
}

TEST_F(FunctionSpecTest, VmExplicit) {
    auto spec = load(vm_with("type = \"firecracker\", copy-rootfs = false",
                             "initrd = \"initrd.img\"\nmemory = 2048\ncpus = 4\n"
                             "cmdline = \"console=ttyS0 ip=%ip cb=%callback\"\n"));
    const VmSpec& vm = spec->vm();
    EXPECT_EQ(vm.initrd, dir_ / "initrd.img");
    EXPECT_EQ(vm.memory_mib, 2048u);
    EXPECT_EQ(vm.cpus, 4u);
    EXPECT_EQ(vm.cmdline, "console=ttyS0 ip=%ip cb=%callback");
    EXPECT_FALSE(vm.copy_rootfs);
}

TEST_F(FunctionSpecTest, HypervisorAsStandardTable) {
    auto spec = load(
        "[vm]\nkernel = \"vmlinux\"\nimage = \"rootfs.ext4\"\n[vm.hypervisor]\ntype = \"qemu\"\n");
    EXPECT_EQ(spec->vm().hypervisor, HypervisorType::Qemu);
}

TEST_F(FunctionSpecTest, VmNumberBounds) {
    EXPECT_EQ(load(vm_with("type = \"qemu\"", "memory = 16\ncpus = 64\n"))->vm().cpus, 64u);
    expect_error(vm_with("type = \"qemu\"", "memory = 15\n"),
                 "vm.memory: must be between 16 and 1048576 (got 15)");
    expect_error(vm_with("type = \"qemu\"", "memory = 0\n"),
                 "vm.memory: must be between 16 and 1048576 (got 0)");
    expect_error(vm_with("type = \"qemu\"", "memory = 2097152\n"),
                 "vm.memory: must be between 16 and 1048576 (got 2097152)");
    expect_error(vm_with("type = \"qemu\"", "cpus = 0\n"),
                 "vm.cpus: must be between 1 and 64 (got 0)");
    expect_error(vm_with("type = \"qemu\"", "cpus = 65\n"),
                 "vm.cpus: must be between 1 and 64 (got 65)");
    expect_error(vm_with("type = \"qemu\"", "cpus = \"2\"\n"),
                 "vm.cpus: expected an integer, got string");
}

TEST_F(FunctionSpecTest, VmKeyErrors) {
    expect_error("[vm]\nimage = \"rootfs.ext4\"\nhypervisor = { type = \"qemu\" }\n",
                 "vm.kernel: required");
    expect_error(vm_with("type = \"qemu\"", "cmdline = 1\n"),
                 "vm.cmdline: expected a string, got integer");
    expect_error(vm_with("type = \"qemu\"", "cmdline = \"a\\u0000b\"\n"),
                 "vm.cmdline: must not contain a NUL character");
    expect_error(vm_with("type = \"qemu\"", "kernel2 = \"x\"\n"), "vm.kernel2: unknown key");
    expect_error(vm_with("type = \"qemu\"", "image2 = 1\n"), "vm.image2: unknown key");
    expect_error(vm_with("type = \"qemu\"", "initrd = \"\"\n"), "vm.initrd: must not be empty");
    expect_error(vm_with("type = \"qemu\"", "initrd = 3\n"),
                 "vm.initrd: expected a string, got integer");
    expect_error("[vm]\nkernel = 5\nimage = \"rootfs.ext4\"\nhypervisor = { type = \"qemu\" }\n",
                 "vm.kernel: expected a string, got integer");
}

TEST_F(FunctionSpecTest, HypervisorErrors) {
    expect_error("[vm]\nkernel = \"vmlinux\"\nimage = \"rootfs.ext4\"\n",
                 "vm.hypervisor: required");
    expect_error("[vm]\nkernel = \"vmlinux\"\nimage = \"rootfs.ext4\"\nhypervisor = \"qemu\"\n",
                 "vm.hypervisor: expected a table, got string");
    expect_error(vm_with(""), "vm.hypervisor.type: required (expected firecracker, qemu, microvm)");
    expect_error(vm_with("type = \"xen\""),
                 "vm.hypervisor.type: unknown hypervisor \"xen\" (expected firecracker, qemu, "
                 "microvm)");
    expect_error(vm_with("type = 1"), "vm.hypervisor.type: expected a string, got integer");
    expect_error(vm_with("type = \"qemu\", foo = 1"), "vm.hypervisor.foo: unknown key");
}

TEST_F(FunctionSpecTest, HypervisorKeyNotValidForType) {
    expect_error(vm_with("type = \"firecracker\", pic = false"),
                 "vm.hypervisor.pic: not valid for hypervisor type firecracker");
    expect_error(vm_with("type = \"firecracker\", disk-type = \"block\""),
                 "vm.hypervisor.disk-type: not valid for hypervisor type firecracker");
    expect_error(vm_with("type = \"qemu\", copy-rootfs = true"),
                 "vm.hypervisor.copy-rootfs: not valid for hypervisor type qemu");
    for (const char* key : {"pic", "pit", "rtc", "acpi", "auto-kernel-cmdline"}) {
        expect_error(vm_with(std::string("type = \"qemu\", ") + key + " = true"),
                     std::string("vm.hypervisor.") + key + ": not valid for hypervisor type qemu");
    }
    expect_error(vm_with("type = \"microvm\", copy-rootfs = false"),
                 "vm.hypervisor.copy-rootfs: not valid for hypervisor type microvm");
}

TEST_F(FunctionSpecTest, HypervisorValueErrors) {
    expect_error(vm_with("type = \"firecracker\", copy-rootfs = \"no\""),
                 "vm.hypervisor.copy-rootfs: expected a boolean (true or false), got string");
    expect_error(vm_with("type = \"qemu\", disk-type = \"scsi\""),
                 "vm.hypervisor.disk-type: unknown disk type \"scsi\" (expected block, 9p)");
    expect_error(vm_with("type = \"microvm\", pic = 0"),
                 "vm.hypervisor.pic: expected a boolean (true or false), got integer");
}

TEST_F(FunctionSpecTest, QemuDefaultsAndNineP) {
    auto spec = load(vm_with("type = \"qemu\""));
    EXPECT_EQ(spec->backend_name(), "qemu");
    EXPECT_EQ(spec->vm().hypervisor, HypervisorType::Qemu);
    EXPECT_EQ(spec->vm().disk_type, DiskType::Block);

    spec = load(
        "[vm]\nkernel = \"vmlinux\"\nimage = \"rootdir\"\n"
        "hypervisor = { type = \"qemu\", disk-type = \"9p\" }\n");
    EXPECT_EQ(spec->vm().disk_type, DiskType::NineP);
    EXPECT_EQ(spec->vm().image, dir_ / "rootdir");
}

TEST_F(FunctionSpecTest, MicrovmDefaultsAndAlias) {
    for (const char* type : {"microvm", "qemu-microvm"}) {
        auto spec = load(vm_with(std::string("type = \"") + type + "\""));
        const VmSpec& vm = spec->vm();
        EXPECT_EQ(spec->backend_name(), "microvm");
        EXPECT_EQ(vm.hypervisor, HypervisorType::Microvm);
        EXPECT_EQ(vm.disk_type, DiskType::Block);
        EXPECT_TRUE(vm.pic && vm.pit && vm.rtc && vm.acpi && vm.auto_kernel_cmdline);
    }
}

TEST_F(FunctionSpecTest, MicrovmFlagsEachAsGiven) {
    const char* flags[] = {"pic", "pit", "rtc", "acpi", "auto-kernel-cmdline"};
    for (const char* off : flags) {
        auto spec = load(vm_with(std::string("type = \"microvm\", ") + off + " = false"));
        const VmSpec& vm = spec->vm();
        bool values[] = {vm.pic, vm.pit, vm.rtc, vm.acpi, vm.auto_kernel_cmdline};
        for (std::size_t i = 0; i < std::size(flags); ++i) {
            EXPECT_EQ(values[i], flags[i] != off) << off << " off, checking " << flags[i];
        }
    }
    auto spec = load(
        "[vm]\nkernel = \"vmlinux\"\nimage = \"rootdir\"\n"
        "hypervisor = { type = \"microvm\", disk-type = \"9p\" }\n");
    EXPECT_EQ(spec->vm().disk_type, DiskType::NineP);
}

TEST_F(FunctionSpecTest, ImageRequirement) {
    expect_error("[vm]\nkernel = \"vmlinux\"\nhypervisor = { type = \"firecracker\" }\n",
                 "vm.image: required");
    expect_error(
        "[vm]\nkernel = \"vmlinux\"\ninitrd = \"initrd.img\"\n"
        "hypervisor = { type = \"firecracker\" }\n",
        "vm.image: required");
    expect_error("[vm]\nkernel = \"vmlinux\"\nhypervisor = { type = \"qemu\" }\n",
                 "vm.image: required unless an initrd is given");
    expect_error("[vm]\nkernel = \"vmlinux\"\nhypervisor = { type = \"microvm\" }\n",
                 "vm.image: required unless an initrd is given");
    for (const char* type : {"qemu", "microvm"}) {
        auto spec = load(std::string("[vm]\nkernel = \"vmlinux\"\ninitrd = \"initrd.img\"\n") +
                         "hypervisor = { type = \"" + type + "\" }\n");
        EXPECT_TRUE(spec->vm().image.empty());
        EXPECT_EQ(spec->vm().initrd, dir_ / "initrd.img");
    }
}

TEST_F(FunctionSpecTest, MissingFilesNameKeyAndPath) {
    expect_error(
        "[vm]\nkernel = \"nope\"\nimage = \"rootfs.ext4\"\n"
        "hypervisor = { type = \"firecracker\" }\n",
        "vm.kernel: " + (dir_ / "nope").string() + " does not exist");
    expect_error(
        "[vm]\nkernel = \"vmlinux\"\nimage = \"../missing.img\"\n"
        "hypervisor = { type = \"firecracker\" }\n",
        "vm.image: " + (root_ / "registry" / "missing.img").string() + " does not exist");
    expect_error(vm_with("type = \"qemu\"", "initrd = \"/nonexistent/initrd\"\n"),
                 "vm.initrd: /nonexistent/initrd does not exist");
}

TEST_F(FunctionSpecTest, FileKinds) {
    expect_error(
        "[vm]\nkernel = \"rootdir\"\nimage = \"rootfs.ext4\"\n"
        "hypervisor = { type = \"firecracker\" }\n",
        "vm.kernel: " + (dir_ / "rootdir").string() + " is not a regular file");
    expect_error(vm_with("type = \"qemu\"", "initrd = \"rootdir\"\n"),
                 "vm.initrd: " + (dir_ / "rootdir").string() + " is not a regular file");
    expect_error(
        "[vm]\nkernel = \"vmlinux\"\nimage = \"rootdir\"\n"
        "hypervisor = { type = \"firecracker\" }\n",
        "vm.image: " + (dir_ / "rootdir").string() + " is not a regular file");
    expect_error(
        "[vm]\nkernel = \"vmlinux\"\nimage = \"rootdir\"\nhypervisor = { type = \"qemu\" }\n",
        "vm.image: " + (dir_ / "rootdir").string() + " is not a regular file");
    expect_error(
        "[vm]\nkernel = \"vmlinux\"\nimage = \"rootfs.ext4\"\n"
        "hypervisor = { type = \"qemu\", disk-type = \"9p\" }\n",
        "vm.image: " + (dir_ / "rootfs.ext4").string() +
            " is not a directory (disk-type 9p shares a directory)");
}

TEST_F(FunctionSpecTest, KeyErrorsComeBeforeFileChecks) {
    expect_error(
        "[vm]\nkernel = \"nope\"\nimage = \"rootfs.ext4\"\nbogus = 1\n"
        "hypervisor = { type = \"firecracker\" }\n",
        "vm.bogus: unknown key");
}

// --- paths ---

TEST_F(FunctionSpecTest, RelativePathsResolveAgainstFunctionDir) {
    fs::create_directories(root_ / "targets");
    std::ofstream(root_ / "targets" / "kernel").flush();
    auto spec = load(
        "[vm]\nkernel = \"../../targets/./kernel\"\nimage = \"./sub/../rootfs.ext4\"\n"
        "hypervisor = { type = \"firecracker\" }\n");
    EXPECT_EQ(spec->vm().kernel, root_ / "targets" / "kernel");
    EXPECT_EQ(spec->vm().image, dir_ / "rootfs.ext4");
    EXPECT_TRUE(spec->vm().kernel.is_absolute());
}

TEST_F(FunctionSpecTest, AbsolutePathsAreNormalised) {
    std::string kernel = (dir_ / "." / "vmlinux").string();
    auto spec = load("[vm]\nkernel = \"" + kernel +
                     "\"\nimage = \"rootfs.ext4\"\nhypervisor = { type = \"firecracker\" }\n");
    EXPECT_EQ(spec->vm().kernel, dir_ / "vmlinux");
}

TEST_F(FunctionSpecTest, NinePDirectoryWithTrailingSlash) {
    auto spec = load(
        "[vm]\nkernel = \"vmlinux\"\nimage = \"rootdir/\"\n"
        "hypervisor = { type = \"qemu\", disk-type = \"9p\" }\n");
    EXPECT_EQ(spec->vm().image, dir_ / "rootdir");
}

// --- the file itself ---

TEST_F(FunctionSpecTest, SyntaxErrorGivesLineAndColumn) {
    std::string message = error("concurrent-requests = 1\nsingle-use = \n" + kContainer);
    ASSERT_TRUE(message.starts_with(file() + ":2:")) << message;
    std::string rest = message.substr(file().size() + 3);  // "<col>: <description>"
    auto colon = rest.find(": ");
    ASSERT_NE(colon, std::string::npos) << message;
    EXPECT_GT(colon, 0u);
    EXPECT_EQ(rest.find_first_not_of("0123456789"), colon) << message;
    EXPECT_GT(rest.size(), colon + 2) << message;
}

TEST_F(FunctionSpecTest, DuplicateKeyIsASyntaxError) {
    std::string message = error("keepalive = 1\nkeepalive = 2\n" + kContainer);
    EXPECT_TRUE(message.starts_with(file() + ":2:")) << message;
}

TEST_F(FunctionSpecTest, MissingFile) {
    try {
        load_function_spec(dir_);
        FAIL() << "loaded a missing function.toml";
    } catch (const ConfigError& e) {
        EXPECT_EQ(std::string(e.what()), file() + ": cannot read: No such file or directory");
    }
}

TEST_F(FunctionSpecTest, FunctionTomlIsADirectory) {
    fs::create_directory(dir_ / "function.toml");
    try {
        load_function_spec(dir_);
        FAIL() << "loaded a directory";
    } catch (const ConfigError& e) {
        EXPECT_TRUE(std::string(e.what()).starts_with(file() + ": cannot read: ")) << e.what();
    }
}

TEST_F(FunctionSpecTest, NameAndDirFromTrailingSlashAndRelativeDir) {
    std::ofstream(dir_ / "function.toml") << kContainer;
    auto spec = load_function_spec(dir_.string() + "/");
    EXPECT_EQ(spec->name, "hello");
    EXPECT_EQ(spec->dir, dir_);

    fs::path cwd = fs::current_path();
    fs::current_path(root_);
    auto relative = load_function_spec("registry/./hello");
    fs::current_path(cwd);
    EXPECT_EQ(relative->name, "hello");
    EXPECT_EQ(relative->dir, dir_);
    EXPECT_EQ(relative->file, dir_ / "function.toml");
}

TEST_F(FunctionSpecTest, ErrorNamesAbsoluteFileForRelativeDir) {
    std::ofstream(dir_ / "function.toml") << "concurrent-requests = 0\n" << kContainer;
    fs::path cwd = fs::current_path();
    fs::current_path(root_ / "registry");
    std::string message;
    try {
        load_function_spec("hello");
    } catch (const ConfigError& e) {
        message = e.what();
    }
    fs::current_path(cwd);
    EXPECT_EQ(message, file() + ": concurrent-requests: must be at least 1 (got 0)");
}

// --- names ---

TEST(FunctionNameTest, Valid) {
    for (std::string name : {"a", "A", "0", "hello", "hello-world", "hello_world", "v1.2.3", "a..b",
                             "x-", "nanos-go"}) {
        EXPECT_TRUE(is_valid_function_name(name)) << name;
    }
    EXPECT_TRUE(is_valid_function_name(std::string(128, 'a')));
}

TEST(FunctionNameTest, Invalid) {
    for (std::string name : {"", ".", "..", ".hidden", "-a", "_a", "a/b", "/a", "a b", "a:b",
                             "caf\xc3\xa9", "a\\b", "a%2f", "a?b"}) {
        EXPECT_FALSE(is_valid_function_name(name)) << name;
    }
    EXPECT_FALSE(is_valid_function_name(std::string(129, 'a')));
    EXPECT_FALSE(is_valid_function_name(std::string_view("a\0b", 3)));
}

TEST_F(FunctionSpecTest, SnapshotDefaultsOffAndIsRefusedWithNineP) {
    EXPECT_FALSE(load(vm_with("type = \"microvm\""))->vm().snapshot);
    EXPECT_TRUE(load(vm_with("type = \"microvm\"", "snapshot = true\n"))->vm().snapshot);
    EXPECT_TRUE(load(vm_with("type = \"firecracker\"", "snapshot = true\n"))->vm().snapshot);
    expect_error(vm_with("type = \"qemu\"", "snapshot = \"yes\"\n"),
                 "vm.snapshot: expected a boolean (true or false), got string");
    expect_error(
        "[vm]\nkernel = \"vmlinux\"\nimage = \"rootdir\"\nsnapshot = true\n"
        "hypervisor = { type = \"qemu\", disk-type = \"9p\" }\n",
        "vm.snapshot: not supported with disk-type 9p (QEMU cannot save a VM with a 9p share "
        "mounted)");
}

}  // namespace
}  // namespace unifaas

// --- [network] ---

namespace unifaas {
namespace {

TEST_F(FunctionSpecTest, NetworkPolicyDefaultsToCallbackOnly) {
    auto spec = load(kContainer);
    EXPECT_EQ(spec->network, NetworkPolicy{});
    EXPECT_EQ(spec->network.describe(), "callback-only");
}

TEST_F(FunctionSpecTest, NetworkTableOptIns) {
    auto spec = load("[network]\negress = true\nallow-invoke = true\n" + kContainer);
    EXPECT_TRUE(spec->network.egress);
    EXPECT_TRUE(spec->network.allow_invoke);
    EXPECT_EQ(spec->network.describe(), "callback+invoke+egress");
    EXPECT_EQ(load("[network]\nallow-invoke = true\n" + kContainer)->network.describe(),
              "callback+invoke");
}

TEST_F(FunctionSpecTest, NetworkTableUnknownKeysAndTypesAreErrors) {
    expect_error("[network]\negres = true\n" + kContainer, "network.egres: unknown key");
    EXPECT_NE(error("[network]\negress = \"yes\"\n" + kContainer).find("network.egress"),
              std::string::npos);
}

}  // namespace
}  // namespace unifaas
