// FirecrackerBackend against the real kernel, with taps of a Network living in a network
// namespace of the test's own.
//
// FirecrackerTest uses a real firecracker: boots the guest image from guest/ (ELF vmlinux +
// hello initramfs), waits for the readiness callback, talks to the function, reports a killed
// hypervisor, gives everything back. It runs only where a firecracker executable is found
// (daemon-style lookup: $FIRECRACKER_EXE, then PATH) and /dev/kvm really runs guests.
//
// FirecrackerStandInTest runs everywhere python3 is: a stand-in executable serving the same API
// calls on --api-sock (204 for each, its "console" listing them) drives the whole start():
// lease, private sparse rootfs copy, spawn, socket wait, the conversation, exit reporting and
// the release of everything, on success and on each kind of failure.
#include <sched.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <mutex>
#include <optional>
#include <regex>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include <httplib.h>
#include "private_netns.h"

#include "gateway/listening_server.h"
#include "net/network.h"
#include "sandbox/accel.h"
#include "sandbox/child_process.h"
#include "sandbox/firecracker_backend.h"

namespace unifaas::test {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

const fs::path kGuest = fs::path(UNIFAAS_BINARY_DIR) / "guest";

// Receives GET /ready/<token> on 0.0.0.0 of the calling thread's namespace.
class Callbacks {
  public:
    Callbacks() {
        server_.Get(R"(/ready/([0-9a-zA-Z]+))",
                    [this](const httplib::Request& req, httplib::Response& res) {
                        {
                            std::lock_guard lock(mutex_);
                            tokens_.push_back(req.matches[1]);
                        }
                        cv_.notify_all();
                        res.set_content("ok\n", "text/plain");
                    });
        int fd = bind_listener("0.0.0.0", 0);
        port_ = local_port(fd);
        server_.serve(fd);
    }
    ~Callbacks() {
        server_.stop_accepting();
        server_.join();
    }
    std::uint16_t port() const { return port_; }
    bool wait_for(const std::string& token, std::chrono::milliseconds timeout) {
        std::unique_lock lock(mutex_);
        return cv_.wait_for(lock, timeout, [&] {
            return std::find(tokens_.begin(), tokens_.end(), token) != tokens_.end();
        });
    }

  private:
    ListeningServer server_{2};
    std::uint16_t port_ = 0;
    std::mutex mutex_;
    std::condition_variable cv_;
    std::vector<std::string> tokens_;
};

// The exit reason an instance reports through on_exit, once.
class ExitReport {
  public:
    std::function<void(const std::string&)> callback() {
        return [this](const std::string& reason) {
            {
                std::lock_guard lock(mutex_);
                reasons_.push_back(reason);
            }
            cv_.notify_all();
        };
    }
    std::optional<std::string> wait(std::chrono::milliseconds timeout) {
        std::unique_lock lock(mutex_);
        if (!cv_.wait_for(lock, timeout, [&] { return !reasons_.empty(); })) {
            return std::nullopt;
        }
        return reasons_.front();
    }
    std::size_t count() {
        std::lock_guard lock(mutex_);
        return reasons_.size();
    }

  private:
    std::mutex mutex_;
    std::condition_variable cv_;
    std::vector<std::string> reasons_;
};

class FirecrackerTest : public ::testing::Test {
  protected:
    void SetUp() override {
        executable_ = find_firecracker("");
        if (executable_.empty()) {
            GTEST_SKIP()
                << "firecracker not installed: real boot test skipped (set FIRECRACKER_EXE)";
        }
        std::string why;
        if (!kvm_runs_guests(&why)) {
            GTEST_SKIP() << "firecracker found (" << executable_
                         << ") but /dev/kvm cannot run guests here: " << why;
        }
        ASSERT_TRUE(fs::exists(kGuest / "kernel" / "vmlinux")) << "guest images not built";
        ASSERT_TRUE(fs::exists(kGuest / "hello-initramfs.cpio.gz")) << "guest images not built";
        char tmpl[] = "/tmp/unifaas-fctest-XXXXXX";
        ASSERT_NE(::mkdtemp(tmpl), nullptr);
        dir_ = tmpl;
        // An unused root drive (the function runs from the initramfs): sparse, so its per-instance
        // copy is cheap.
        std::ofstream(dir_ / "rootfs.ext4").flush();
        fs::resize_file(dir_ / "rootfs.ext4", 64 << 20);
    }
    void TearDown() override {
        if (!dir_.empty()) {
            std::error_code ec;
            fs::remove_all(dir_, ec);
        }
    }

    std::shared_ptr<FunctionSpec> spec(const fs::path& kernel) const {
        VmSpec vm;
        vm.kernel = kernel;
        vm.initrd = kGuest / "hello-initramfs.cpio.gz";
        vm.image = dir_ / "rootfs.ext4";
        vm.memory_mib = 128;
        vm.cpus = 1;
        vm.cmdline =
            "console=ttyS0 reboot=k panic=1 pci=off cryptomgr.notests quiet unifaas.ip=%ip "
            "unifaas.gw=%gateway unifaas.mask=%netmask unifaas.callback=%callback";
        vm.hypervisor = HypervisorType::Firecracker;
        vm.copy_rootfs = true;
        auto spec = std::make_shared<FunctionSpec>();
        spec->name = "hello-fc";
        spec->sandbox = vm;
        return spec;
    }

    static NetworkConfig network_config() {
        NetworkConfig config;
        config.subnet = Ipv4Net::parse("10.123.0.0/24");
        config.tap_prefix = "fct";
        config.prealloc = 1;
        return config;
    }

    std::string executable_;
    fs::path dir_;
};

TEST_F(FirecrackerTest, BootsCallsBackServesReportsAKillAndGivesEverythingBack) {
    in_private_netns([&] {
        ASSERT_EQ(std::system("ip link set lo up"), 0);
        Network network(network_config());
        ExitWatcher exits;
        Callbacks callbacks;
        FirecrackerBackend backend(
            VmEnvironment{dir_ / "runtime", callbacks.port(), &network, &exits}, executable_);
        ExitReport exit_report;
        InstanceContext ctx;
        ctx.instance_id = "0123456789ab";
        ctx.spec = spec(kGuest / "kernel" / "vmlinux");
        ctx.callback_path = "/ready/fctoken";
        ctx.on_exit = exit_report.callback();

        auto begin = Clock::now();
        auto instance = backend.start(ctx);
        auto started = Clock::now();
        ASSERT_TRUE(callbacks.wait_for("fctoken", 20s)) << instance->output_tail();
        std::cout << "[ timing ] firecracker start() "
                  << std::chrono::duration<double, std::milli>(started - begin).count()
                  << " ms, boot to callback "
                  << std::chrono::duration<double, std::milli>(Clock::now() - begin).count()
                  << " ms\n";

        std::smatch m;
        std::string described = instance->describe();
        ASSERT_TRUE(
            std::regex_match(described, m, std::regex(R"(firecracker pid (\d+) \(tap fct\d+\))")))
            << described;
        pid_t pid = std::stoi(m[1]);
        fs::path workdir = dir_ / "runtime" / "instances" / ctx.instance_id;
        EXPECT_TRUE(fs::exists(workdir / "rootfs.ext4")) << "no private rootfs copy";

        httplib::Client client(instance->address(), instance->port());
        client.set_connection_timeout(5s);
        auto res = client.Get("/hello");
        ASSERT_TRUE(res) << httplib::to_string(res.error()) << "\n" << instance->output_tail();
        EXPECT_EQ(res->body, "hello from unifaas\n");
        EXPECT_EQ(network.stats().leased, 1u);

        ASSERT_EQ(::kill(pid, SIGKILL), 0);
        auto reason = exit_report.wait(5s);
        ASSERT_TRUE(reason.has_value()) << "the killed firecracker was not reported";
        EXPECT_EQ(*reason, "firecracker killed by signal 9 (SIGKILL)");

        instance.reset();
        EXPECT_FALSE(fs::exists(workdir)) << "working directory left behind";
        EXPECT_EQ(network.stats().leased, 0u) << "tap not given back";
        EXPECT_EQ(exit_report.count(), 1u);
    });
}

TEST_F(FirecrackerTest, RefusedBootIs502AndLeavesNothing) {
    in_private_netns([&] {
        Network network(network_config());
        ExitWatcher exits;
        FirecrackerBackend backend(VmEnvironment{dir_ / "runtime", 8081, &network, &exits},
                                   executable_);
        InstanceContext ctx;
        ctx.instance_id = "ba9876543210";
        ctx.spec = spec(dir_ / "rootfs.ext4");  // not a kernel
        ctx.callback_path = "/ready/never";
        try {
            backend.start(ctx);
            ADD_FAILURE() << "a VM without a kernel started";
        } catch (const SandboxError& e) {
            EXPECT_EQ(e.http_status(), 502);
            EXPECT_EQ(std::string(e.what()).rfind("firecracker rejected PUT /", 0), 0u) << e.what();
        }
        EXPECT_FALSE(fs::exists(dir_ / "runtime" / "instances" / ctx.instance_id));
        EXPECT_EQ(network.stats().leased, 0u);
    });
}

// --- with a stand-in for firecracker ---

// Answers every PUT with 204 and prints "PUT <path> <sorted JSON body>" as its console (before
// answering, so the console is complete once start() returns); refuses
// a kernel whose path contains "bad" the way Firecracker does, and a tap that does not exist.
constexpr const char* kStandIn = R"PY(#!/usr/bin/env python3
import http.server, json, os, socketserver, sys
args = sys.argv[1:]
print("argv: " + " ".join(args), flush=True)
class Api(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def refuse(self, message):
        out = json.dumps({"fault_message": message}).encode()
        self.send_response(400)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)
    def do_PUT(self):
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        print("PUT " + self.path + " " + json.dumps(body, sort_keys=True), flush=True)
        if self.path == "/boot-source" and "bad" in body["kernel_image_path"]:
            return self.refuse("The kernel file cannot be opened: No such file or directory (os error 2)")
        if self.path.startswith("/network-interfaces/") and os.system(
                "ip link show dev " + body["host_dev_name"] + " >/dev/null 2>&1") != 0:
            return self.refuse("Open tap device failed")
        if self.path == "/actions":
            print("stand-in: guest started", flush=True)
        self.send_response(204)
        self.end_headers()
    def log_message(self, *args):
        pass
class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
Server(args[args.index("--api-sock") + 1], Api).serve_forever()
)PY";

class FirecrackerStandInTest : public ::testing::Test {
  protected:
    void SetUp() override {
        if (find_executable("python3").empty()) {
            GTEST_SKIP() << "no python3 for the firecracker stand-in";
        }
        char tmpl[] = "/tmp/unifaas-fcstand-XXXXXX";
        ASSERT_NE(::mkdtemp(tmpl), nullptr);
        dir_ = tmpl;
        std::ofstream(dir_ / "firecracker") << kStandIn;
        fs::permissions(dir_ / "firecracker", fs::perms::owner_all);
        std::ofstream(dir_ / "vmlinux") << "kernel";
        std::ofstream(dir_ / "bad-vmlinux") << "kernel";
        std::ofstream(dir_ / "rootfs.ext4") << "superblock";
        fs::resize_file(dir_ / "rootfs.ext4", 256 << 20);
    }
    void TearDown() override {
        if (!dir_.empty()) {
            std::error_code ec;
            fs::remove_all(dir_, ec);
        }
    }

    std::shared_ptr<FunctionSpec> spec(const std::string& kernel, bool copy_rootfs) const {
        VmSpec vm;
        vm.kernel = dir_ / kernel;
        vm.image = dir_ / "rootfs.ext4";
        vm.memory_mib = 96;
        vm.cpus = 2;
        vm.cmdline = "console=ttyS0 ip=%ip::%gateway:%netmask::eth0:off cb=%callback";
        vm.hypervisor = HypervisorType::Firecracker;
        vm.copy_rootfs = copy_rootfs;
        auto spec = std::make_shared<FunctionSpec>();
        spec->name = "standin";
        spec->port = 9000;
        spec->sandbox = vm;
        return spec;
    }

    InstanceContext context(std::shared_ptr<FunctionSpec> spec, ExitReport* report) const {
        InstanceContext ctx;
        ctx.instance_id = "00112233aabb";
        ctx.spec = std::move(spec);
        ctx.callback_path = "/ready/standin";
        if (report != nullptr) {
            ctx.on_exit = report->callback();
        }
        return ctx;
    }

    fs::path workdir() const { return dir_ / "runtime" / "instances" / "00112233aabb"; }

    static NetworkConfig network_config() {
        NetworkConfig config;
        config.subnet = Ipv4Net::parse("10.124.0.0/24");
        config.tap_prefix = "fcs";
        config.prealloc = 0;
        return config;
    }

    fs::path dir_;
};

TEST_F(FirecrackerStandInTest, StartDrivesTheApiReportsTheExitAndGivesEverythingBack) {
    in_private_netns([&] {
        Network network(network_config());
        ExitWatcher exits;
        FirecrackerBackend backend(VmEnvironment{dir_ / "runtime", 8081, &network, &exits},
                                   (dir_ / "firecracker").string());
        ExitReport report;
        auto instance = backend.start(context(spec("vmlinux", true), &report));

        std::string tap = "fcs0";
        std::string expected =
            "argv: --api-sock " + (workdir() / "api.sock").string() +
            " --id 00112233aabb --level Warning\n"
            "PUT /machine-config {\"mem_size_mib\": 96, \"vcpu_count\": 2}\n"
            "PUT /boot-source {\"boot_args\": \"console=ttyS0 "
            "ip=10.124.0.2::10.124.0.1:255.255.255.252::eth0:off "
            "cb=http://10.124.0.1:8081/ready/standin\", \"kernel_image_path\": \"" +
            (dir_ / "vmlinux").string() +
            "\"}\n"
            "PUT /drives/rootfs {\"drive_id\": \"rootfs\", \"is_read_only\": false, "
            "\"is_root_device\": true, \"path_on_host\": \"" +
            (workdir() / "rootfs.ext4").string() +
            "\"}\n"
            "PUT /network-interfaces/eth0 {\"guest_mac\": \"02:fa:0a:7c:00:02\", "
            "\"host_dev_name\": \"" +
            tap +
            "\", \"iface_id\": \"eth0\"}\n"
            "PUT /actions {\"action_type\": \"InstanceStart\"}\n"
            "stand-in: guest started";
        EXPECT_EQ(instance->output_tail(), expected);
        EXPECT_EQ(instance->address(), "10.124.0.2");
        EXPECT_EQ(instance->port(), 9000);

        // The private copy is sparse: 256 MiB long, next to nothing allocated.
        struct stat st {};
        ASSERT_EQ(::stat((workdir() / "rootfs.ext4").c_str(), &st), 0);
        EXPECT_EQ(st.st_size, 256 << 20);
        EXPECT_LT(st.st_blocks * 512, 1 << 20);

        std::smatch m;
        std::string described = instance->describe();
        ASSERT_TRUE(
            std::regex_match(described, m, std::regex(R"(firecracker pid (\d+) \(tap fcs0\))")))
            << described;
        ASSERT_EQ(::kill(std::stoi(m[1]), SIGTERM), 0);
        auto reason = report.wait(5s);
        ASSERT_TRUE(reason.has_value()) << "the exit was not reported";
        EXPECT_EQ(*reason, "firecracker killed by signal 15 (SIGTERM)");

        EXPECT_EQ(network.stats().leased, 1u);
        instance.reset();
        EXPECT_FALSE(fs::exists(workdir()));
        EXPECT_EQ(network.stats().leased, 0u);
        EXPECT_EQ(report.count(), 1u);
    });
}

TEST_F(FirecrackerStandInTest, SharedImageIsReadOnlyAndOurOwnStopIsNoExit) {
    in_private_netns([&] {
        Network network(network_config());
        ExitWatcher exits;
        FirecrackerBackend backend(VmEnvironment{dir_ / "runtime", 8081, &network, &exits},
                                   (dir_ / "firecracker").string());
        ExitReport report;
        auto instance = backend.start(context(spec("vmlinux", false), &report));
        EXPECT_NE(instance->output_tail().find("\"is_read_only\": true, \"is_root_device\": true, "
                                               "\"path_on_host\": \"" +
                                               (dir_ / "rootfs.ext4").string() + "\""),
                  std::string::npos)
            << instance->output_tail();
        EXPECT_FALSE(fs::exists(workdir() / "rootfs.ext4"));
        instance.reset();
        std::this_thread::sleep_for(100ms);
        EXPECT_EQ(report.count(), 0u) << "destroying the instance was reported as an exit";
        EXPECT_FALSE(fs::exists(workdir()));
        EXPECT_EQ(network.stats().leased, 0u);
    });
}

TEST_F(FirecrackerStandInTest, FailuresAre502WithTheirCauseAndLeaveNothing) {
    in_private_netns([&] {
        Network network(network_config());
        ExitWatcher exits;
        auto failure = [&](const std::string& executable, const std::string& kernel) {
            FirecrackerBackend backend(VmEnvironment{dir_ / "runtime", 8081, &network, &exits},
                                       executable);
            try {
                backend.start(context(spec(kernel, true), nullptr));
            } catch (const SandboxError& e) {
                EXPECT_FALSE(fs::exists(workdir())) << e.what();
                EXPECT_EQ(network.stats().leased, 0u) << e.what();
                return std::to_string(e.http_status()) + " " + e.what();
            }
            return std::string("started");
        };
        EXPECT_EQ(failure((dir_ / "firecracker").string(), "bad-vmlinux"),
                  "502 firecracker rejected PUT /boot-source: The kernel file cannot be opened: "
                  "No such file or directory (os error 2)");
        EXPECT_EQ(failure("/bin/false", "vmlinux"),
                  "502 firecracker exited with status 1 before its API socket appeared: (no "
                  "output)");
        EXPECT_EQ(failure((dir_ / "firecracker").string(), "missing-vmlinux").substr(0, 4), "500 ");
    });
}

}  // namespace
}  // namespace unifaas::test
