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
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/inotify.h>
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
#include <map>
#include <mutex>
#include <optional>
#include <regex>
#include <set>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include <httplib.h>
#include "guest_netns_fixture.h"
#include "private_netns.h"

#include "gateway/listening_server.h"
#include "net/network.h"
#include "sandbox/accel.h"
#include "sandbox/child_process.h"
#include "sandbox/firecracker_backend.h"
#include "sandbox/vm_template.h"

namespace unifaas::test {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

std::vector<std::string> read_lines(const fs::path& file) {
    std::ifstream in(file);
    std::vector<std::string> lines;
    for (std::string line; std::getline(in, line);) {
        lines.push_back(line);
    }
    return lines;
}

// `text` as a regular expression matching exactly itself.
std::string literal(const std::string& text) {
    static const std::regex kSpecial(R"([.^$|()\[\]{}*+?\\])");
    return std::regex_replace(text, kSpecial, R"(\$&)");
}

// Receives GET /ready/<token> on 0.0.0.0 of the calling thread's namespace; as the daemon's
// registry does for snapshot templates, runs what a backend expects for a token it issued.
class Callbacks : public CallbackRegistry {
  public:
    Callbacks() {
        server_.Get(R"(/ready/([0-9a-zA-Z]+))",
                    [this](const httplib::Request& req, httplib::Response& res) {
                        std::function<void()> expected;
                        {
                            std::lock_guard lock(mutex_);
                            tokens_.push_back(req.matches[1]);
                            if (auto it = expected_.find(req.matches[1]); it != expected_.end()) {
                                expected = std::move(it->second);
                                expected_.erase(it);
                            }
                        }
                        cv_.notify_all();
                        if (expected) {
                            expected();
                        }
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

    std::string issue() override {
        std::lock_guard lock(mutex_);
        return "tpl" + std::to_string(++issued_);
    }
    void expect(const std::string& token, std::string, std::function<void()> on_ready) override {
        std::lock_guard lock(mutex_);
        expected_[token] = std::move(on_ready);
    }
    void forget(const std::string& token) override {
        std::lock_guard lock(mutex_);
        expected_.erase(token);
    }

  private:
    ListeningServer server_{2};
    std::uint16_t port_ = 0;
    std::mutex mutex_;
    std::condition_variable cv_;
    std::vector<std::string> tokens_;
    std::map<std::string, std::function<void()>> expected_;
    unsigned issued_ = 0;
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

// Answers every PUT and PATCH with 204 and prints "PUT <path> <sorted JSON body>" as its console
// (before answering, so the console is complete once start() returns); refuses a kernel whose
// path contains "bad" the way Firecracker does, and a tap that does not exist. Every line also
// goes to trace-<id> next to the stand-in, after a first line "cwd: <its working directory>".
// Like a guest would: after InstanceStart it calls the cb= URL of its boot_args back; on
// /snapshot/create it writes the two files and marks its disk ("template was here"); on
// /snapshot/load it attaches to the overriding tap and answers the restore protocol's message
// there (unless a file "deaf" is next to it), then calls the message's callback back.
constexpr const char* kStandIn = R"PY(#!/usr/bin/env python3
import fcntl, http.server, json, os, re, socket, socketserver, struct, sys, threading, urllib.request
args = sys.argv[1:]
here = os.path.dirname(os.path.abspath(sys.argv[0]))
trace = open(os.path.join(here, "trace-" + args[args.index("--id") + 1]), "a")
trace.write("cwd: " + os.getcwd() + "\n")
def say(line):
    print(line, flush=True)
    trace.write(line + "\n")
    trace.flush()
say("argv: " + " ".join(args))
state = {}
def call_back(url):
    try:
        urllib.request.urlopen(url, timeout=5).read()
    except Exception:
        pass
def checksum(header):
    total = sum(struct.unpack("!10H", header))
    total = (total >> 16) + (total & 0xffff)
    return ~(total + (total >> 16)) & 0xffff
def guest(tap, mac):
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, 0x400454ca, struct.pack("16sH", tap.encode(), 0x0002 | 0x1000))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:  # SIOCGIFHWADDR
        host_mac = fcntl.ioctl(s, 0x8927, struct.pack("256s", tap.encode()))[18:24]
    while True:
        frame = os.read(fd, 65536)
        if frame[12:14] != b"\x08\x00" or frame[23] != 17:
            continue
        ihl = (frame[14] & 15) * 4
        udp = frame[14 + ihl:]
        if struct.unpack("!H", udp[2:4])[0] != 8125:
            continue
        fields = dict(l.split("=", 1) for l in udp[8:].decode().splitlines() if "=" in l)
        if fields["nonce"] == state.get("nonce"):
            continue  # the same message again (resent until acknowledged)
        state["nonce"] = fields["nonce"]
        say("restore message on " + tap + ": ip=" + fields["ip"] + " gw=" + fields["gw"] +
            " callback=" + fields["callback"])
        if os.path.exists(os.path.join(here, "deaf")):
            continue
        payload = ("unifaas-restored=1\nnonce=" + fields["nonce"] + "\n").encode()
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + 8 + len(payload), 0, 0, 64, 17, 0,
                         socket.inet_aton(fields["ip"]), socket.inet_aton(fields["gw"]))
        ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
        udp_out = struct.pack("!HHHH", 8125, 8125, 8 + len(payload), 0) + payload
        os.write(fd, host_mac + bytes.fromhex(mac.replace(":", "")) + b"\x08\x00" + ip + udp_out)
        call_back(fields["callback"])
        return
class Api(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def refuse(self, message):
        out = json.dumps({"fault_message": message}).encode()
        self.send_response(400)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)
    def do_PATCH(self):
        self.do_PUT()
    def do_PUT(self):
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        say(self.command + " " + self.path + " " + json.dumps(body, sort_keys=True))
        if self.path == "/boot-source" and "bad" in body["kernel_image_path"]:
            return self.refuse("The kernel file cannot be opened: No such file or directory (os error 2)")
        if self.path.startswith("/network-interfaces/") and os.system(
                "ip link show dev " + body["host_dev_name"] + " >/dev/null 2>&1") != 0:
            return self.refuse("Open tap device failed")
        if self.path == "/boot-source":
            state["cb"] = re.search(r"cb=(\S+)", body.get("boot_args", ""))
        if self.path.startswith("/drives/"):
            state["drive"] = body
        if self.path.startswith("/network-interfaces/"):
            state["mac"] = body["guest_mac"]
        if self.path == "/snapshot/create":
            open(body["snapshot_path"], "w").write(json.dumps({"mac": state["mac"]}))
            open(body["mem_file_path"], "w").write("guest memory")
            if not state["drive"]["is_read_only"]:
                with open(state["drive"]["path_on_host"], "r+") as disk:
                    disk.write("template was here")
        if self.path == "/snapshot/load":
            if not os.path.exists(body["snapshot_path"]):
                return self.refuse("Load snapshot error: no snapshot file")
            override = body["network_overrides"][0]["host_dev_name"]
            mac = json.load(open(body["snapshot_path"]))["mac"]
            threading.Thread(target=guest, args=(override, mac), daemon=True).start()
        if self.path == "/actions":
            say("stand-in: guest started")
        self.send_response(204)
        self.end_headers()
        if self.path == "/actions":
            if state.get("cb"):
                threading.Thread(target=call_back, args=(state["cb"].group(1),), daemon=True).start()
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

    std::shared_ptr<FunctionSpec> spec(const std::string& kernel, bool copy_rootfs,
                                       bool snapshot = false) const {
        VmSpec vm;
        vm.kernel = dir_ / kernel;
        vm.image = dir_ / "rootfs.ext4";
        vm.memory_mib = 96;
        vm.cpus = 2;
        vm.cmdline = "console=ttyS0 ip=%ip::%gateway:%netmask::eth0:off cb=%callback";
        vm.hypervisor = HypervisorType::Firecracker;
        vm.copy_rootfs = copy_rootfs;
        vm.snapshot = snapshot;
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

    // What a snapshot test runs the backend with, made inside its private namespace: taps, exit
    // watching, readiness callbacks (on 0.0.0.0: bring the loopback up first, the template calls
    // back there) and a template store in <dir>/snapshots.
    struct SnapshotRig {
        explicit SnapshotRig(const fs::path& dir)
            : snapshots(dir / "snapshots"),
              store(snapshots, 1ULL << 30),
              env{dir / "runtime", callbacks.port(), &network, &exits} {
            env.callbacks = &callbacks;
            env.templates = &store;
        }
        Network network{network_config()};
        ExitWatcher exits;
        Callbacks callbacks;
        const fs::path snapshots;
        VmTemplateStore store;
        VmEnvironment env;
    };

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

// [vm] snapshot = true on firecracker: the first cold start boots while a template is built
// beside it (booted, called back, paused, saved Full into a partial directory renamed into
// place, killed); the next cold start is a fresh firecracker loading that snapshot on its own tap.
// Both conversations are checked request by request.
TEST_F(FirecrackerStandInTest, TemplateIsSavedThroughTheApiAndACloneLoadsItOnItsOwnTap) {
    in_private_netns([&] {
        ASSERT_EQ(std::system("ip link set lo up"), 0);
        SnapshotRig rig(dir_);
        auto fn = spec("vmlinux", true, true);
        const std::string exe = (dir_ / "firecracker").string();
        const std::string key = template_key(*fn, exe, Accel::Kvm);
        const std::string port = std::to_string(rig.callbacks.port());
        {
            FirecrackerBackend backend(rig.env, exe);
            auto booted = backend.start(context(fn, nullptr));
            EXPECT_STREQ(booted->start_kind(), "boot");
            std::string tpl = wait_new_template(rig.snapshots, {}, 30s);
            ASSERT_FALSE(tpl.empty()) << "no template was saved";
            EXPECT_EQ(tpl.rfind(key + "-", 0), 0u) << tpl;

            // The template's conversation.
            fs::path trace;
            for (const auto& e : fs::directory_iterator(dir_)) {
                if (e.path().filename().string().rfind("trace-template-", 0) == 0) {
                    trace = e.path();
                }
            }
            ASSERT_FALSE(trace.empty()) << "the template's firecracker never ran";
            const std::string id = trace.filename().string().substr(6);
            EXPECT_TRUE(std::regex_match(id, std::regex("template-[0-9a-f]{12}"))) << id;
            const fs::path work = dir_ / "runtime" / "instances" / id;
            const std::string partial =
                literal(rig.snapshots.string()) + "/\\.partial-" + key + "-[0-9a-f]{8}";
            std::vector<std::string> expected{
                literal("cwd: " + work.string()),
                literal("argv: --api-sock " + (work / "api.sock").string() + " --id " + id +
                        " --level Warning"),
                literal("PUT /machine-config {\"mem_size_mib\": 96, \"vcpu_count\": 2}"),
                literal("PUT /boot-source {\"boot_args\": \"console=ttyS0 ip=") +
                    R"((10\.124\.0\.\d+)::(10\.124\.0\.\d+):255\.255\.255\.252::eth0:off cb=http://\2:)" +
                    port +
                    literal("/ready/tpl1\", \"kernel_image_path\": \"" +
                            (dir_ / "vmlinux").string() + "\"}"),
                // The private copy by a relative path: each clone opens its own.
                literal("PUT /drives/rootfs {\"drive_id\": \"rootfs\", \"is_read_only\": false, "
                        "\"is_root_device\": true, \"path_on_host\": \"rootfs.ext4\"}"),
                literal("PUT /network-interfaces/eth0 {\"guest_mac\": \"") +
                    R"(02:fa:0a:7c:00:[0-9a-f]{2}", "host_dev_name": "fcs\d+", "iface_id": "eth0"\})",
                literal("PUT /actions {\"action_type\": \"InstanceStart\"}"),
                literal("stand-in: guest started"),
                literal("PATCH /vm {\"state\": \"Paused\"}"),
                literal("PUT /snapshot/create {\"mem_file_path\": \"") + partial +
                    literal("/memory\", \"snapshot_path\": \"") + partial +
                    literal("/state\", \"snapshot_type\": \"Full\"}"),
            };
            auto lines = read_lines(trace);
            ASSERT_EQ(lines.size(), expected.size()) << ::testing::PrintToString(lines);
            for (std::size_t i = 0; i < lines.size(); ++i) {
                EXPECT_TRUE(std::regex_match(lines[i], std::regex(expected[i])))
                    << lines[i] << "\n  does not match\n"
                    << expected[i];
            }
            EXPECT_FALSE(fs::exists(work)) << "the template's working directory was left";
            // Its disk as the template left it, kept with the snapshot; the image untouched.
            std::string disk(17, '\0');
            std::ifstream(rig.snapshots / tpl / "rootfs.ext4").read(disk.data(), 17);
            EXPECT_EQ(disk, "template was here");
            std::string image(10, '\0');
            std::ifstream(dir_ / "rootfs.ext4").read(image.data(), 10);
            EXPECT_EQ(image, "superblock");

            // A clone.
            InstanceContext ctx = context(fn, nullptr);
            ctx.instance_id = "00112233ccdd";
            ctx.callback_path = "/ready/clone1";
            auto clone = backend.start(ctx);
            EXPECT_STREQ(clone->start_kind(), "restore");
            EXPECT_NE(clone->address(), booted->address());
            std::smatch m;
            std::string described = clone->describe();
            ASSERT_TRUE(std::regex_match(described, m,
                                         std::regex(R"(firecracker pid \d+ \(tap (fcs\d+)\))")))
                << described;
            const std::string tap = m[1];
            const fs::path clone_work = dir_ / "runtime" / "instances" / ctx.instance_id;
            const std::string gateway =
                clone->address().substr(0, clone->address().rfind('.')) + "." +
                std::to_string(std::stoi(clone->address().substr(clone->address().rfind('.') + 1)) -
                               1);
            // The guest calls its own new readiness URL back once it has its identity.
            ASSERT_TRUE(rig.callbacks.wait_for("clone1", 10s)) << "the clone did not call back";
            EXPECT_EQ(
                read_lines(dir_ / "trace-00112233ccdd"),
                (std::vector<std::string>{
                    "cwd: " + clone_work.string(),
                    "argv: --api-sock " + (clone_work / "api.sock").string() +
                        " --id 00112233ccdd --level Warning",
                    "PUT /snapshot/load {\"mem_backend\": {\"backend_path\": \"" +
                        (rig.snapshots / tpl / "memory").string() +
                        "\", \"backend_type\": \"File\"}, \"network_overrides\": "
                        "[{\"host_dev_name\": \"" +
                        tap +
                        "\", \"iface_id\": \"eth0\"}], \"resume_vm\": true, "
                        "\"snapshot_path\": \"" +
                        (rig.snapshots / tpl / "state").string() + "\"}",
                    "restore message on " + tap + ": ip=" + clone->address() + " gw=" + gateway +
                        " callback=http://" + gateway + ":" + port + "/ready/clone1",
                }));
            std::ifstream(clone_work / "rootfs.ext4").read(disk.data(), 17);
            EXPECT_EQ(disk, "template was here") << "the clone's disk is not the template's";
            EXPECT_EQ(rig.network.stats().leased, 2u);
        }
        EXPECT_EQ(rig.network.stats().leased, 0u) << "a tap was not given back";
        EXPECT_TRUE(fs::is_empty(dir_ / "runtime" / "instances"));
        EXPECT_EQ(templates_in(rig.snapshots).size(), 1u);
    });
}

// A clone whose guest never acknowledges its restore message is destroyed and the cold start
// boots; after VmTemplateStore::kMaxFailedRestores such clones in a row the template is deleted
// and the next cold start builds a new one.
TEST_F(FirecrackerStandInTest, ClonesThatNeverAnswerFallBackToBootAndTheTemplateIsRebuilt) {
    in_private_netns([&] {
        ASSERT_EQ(std::system("ip link set lo up"), 0);
        SnapshotRig rig(dir_);
        auto fn = spec("vmlinux", false, true);
        // The restore deadline per clone, and the template build's wait for its callback: 5 s, as
        // the stand-in's callback took over 3 s on a 2-core machine at load 10+.
        fn->boot_timeout = std::chrono::seconds(5);
        FirecrackerBackend backend(rig.env, (dir_ / "firecracker").string());
        backend.start(context(fn, nullptr)).reset();
        std::string first = wait_new_template(rig.snapshots, {}, 30s);
        ASSERT_FALSE(first.empty()) << "no template was saved";

        std::ofstream(dir_ / "deaf").flush();
        for (unsigned i = 0; i < VmTemplateStore::kMaxFailedRestores; ++i) {
            InstanceContext ctx = context(fn, nullptr);
            ctx.instance_id = "0000000000c" + std::to_string(i);
            auto instance = backend.start(ctx);
            EXPECT_STREQ(instance->start_kind(), "boot") << i;
            auto lines = read_lines(dir_ / ("trace-" + ctx.instance_id));
            auto load = std::find_if(lines.begin(), lines.end(), [](const std::string& l) {
                return l.rfind("PUT /snapshot/load ", 0) == 0;
            });
            EXPECT_NE(load, lines.end()) << "no restore was tried";
            EXPECT_NE(
                std::find(load, lines.end(), "PUT /actions {\"action_type\": \"InstanceStart\"}"),
                lines.end())
                << "no boot after the failed restore";
            instance.reset();
            EXPECT_EQ(rig.network.stats().leased, 0u) << "the failed clone kept its tap";
        }
        EXPECT_FALSE(fs::exists(rig.snapshots / first))
            << "a template failing every restore was kept";
        fs::remove(dir_ / "deaf");
        // The next cold start boots and builds a new template beside it.
        backend.start(context(fn, nullptr)).reset();
        std::string second = wait_new_template(rig.snapshots, {first}, 30s);
        EXPECT_FALSE(second.empty()) << "the template was not rebuilt";
    });
}

}  // namespace
}  // namespace unifaas::test
