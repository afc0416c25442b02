// Faults, end to end with the real daemon and the suite's private Docker engine: functions that
// misbehave after starting, an engine that goes away under load, repeated crashes of the daemon.
// Each test ends with the leak check of FaultTest::TearDown: no slot in use or queued, no
// container left, no working directory left, descriptors back to where they were.
// (Faults covered elsewhere: exits at once and never calls back: DaemonTest; subnet exhausted,
// QEMU killed, kill -9 with VMs: MicroVmTest; guest isolation: FirewallTest.)
#include <dirent.h>
#include <fcntl.h>
#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <future>
#include <map>
#include <mutex>
#include <regex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "guest_netns_fixture.h"
#include "link_events.h"
#include "registry_fixture.h"

namespace unifaas::test {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

const fs::path kRootfs = fs::path(UNIFAAS_BINARY_DIR) / "examples" / "hello-rootfs";
// Function processes (Docker or OCI containers, any runtime) started by a daemon whose callback
// port is in `ports`: their environment names it in UNIFAAS_CALLBACK. Other suites' containers
// (other daemons, other ports) are not counted.
std::vector<pid_t> instance_processes(const std::set<int>& ports) {
    return processes_where([&](const fs::path& proc) {
        std::string env = proc_file(proc, "environ");
        auto at = env.find("UNIFAAS_CALLBACK=http://");
        if (at == std::string::npos) {
            return false;
        }
        std::string url = env.substr(at, env.find('\0', at) - at);
        return std::any_of(ports.begin(), ports.end(), [&](int port) {
            return url.find(":" + std::to_string(port) + "/") != std::string::npos;
        });
    });
}

// Elements of the daemon's verdict map (interface names), "" when there are none or no table.
std::string nft_elements() {
    std::string map = run_command("nft list map inet unifaas guests 2>/dev/null");
    auto open = map.find("elements = {");
    return open == std::string::npos ? "" : map.substr(open);
}

bool empty_or_missing(const fs::path& dir) {
    return !fs::exists(dir) || fs::is_empty(dir);
}

std::size_t open_fds(pid_t pid) {
    std::size_t n = 0;
    for ([[maybe_unused]] const auto& entry :
         fs::directory_iterator("/proc/" + std::to_string(pid) + "/fd")) {
        ++n;
    }
    return n;
}

class FaultTest : public RegistryTest {
  protected:
    void TearDown() override {
        if (daemon_ && daemon_->running()) {
            expect_nothing_held();
        }
        RegistryTest::TearDown();
    }

    httplib::Result get(const std::string& path) {
        if (!client_ || client_port_ != daemon_->http_port()) {
            client_ = std::make_unique<httplib::Client>(daemon_->client());
            client_port_ = daemon_->http_port();
        }
        return client_->Get(path);
    }

    nlohmann::json status() {
        auto res = get("/status");
        return res ? nlohmann::json::parse(res->body) : nlohmann::json{};
    }

    static bool settled(const nlohmann::json& st) {
        if (st.is_null() || st["in_flight"] != 0) {
            return false;
        }
        for (auto& f : st["functions"]) {
            if (f["queued"] != 0) {
                return false;
            }
            for (auto& i : f["instances"]) {
                if (i["in_use"] != 0) {
                    return false;
                }
            }
        }
        return true;
    }

    // Descriptors of the daemon once it served a first request (its steady state).
    void remember_fds() { fds_at_start_ = open_fds(daemon_->pid()); }

    // The leak check: slots, queues, working directories, descriptors (containers: TearDown).
    void expect_nothing_held() {
        auto st = status();
        for (int i = 0; i < 200 && !settled(st); ++i) {
            std::this_thread::sleep_for(10ms);  // a slot is released just after its response
            st = status();
        }
        EXPECT_TRUE(settled(st)) << st.dump(2);
        fs::path instances = daemon_->runtime_dir() / "instances";
        auto count_workdirs = [&] {
            std::size_t n = 0;
            std::error_code ec;
            for (fs::directory_iterator it(instances, ec), end; !ec && it != end;
                 it.increment(ec)) {
                ++n;
            }
            return n;
        };
        std::size_t live = 0, slots = 0;
        for (auto& f : st["functions"]) {
            live += f["instances"].size();
            for (auto& i : f["instances"]) {
                slots += i["capacity"].get<std::size_t>();
            }
        }
        // A retired instance leaves the status at once; its working directory goes when the
        // stop queue has destroyed its sandbox: allow that a few seconds, as for descriptors.
        std::size_t workdirs = count_workdirs();
        for (auto until = std::chrono::steady_clock::now() + 10s;
             workdirs > live && std::chrono::steady_clock::now() < until;
             workdirs = count_workdirs()) {
            std::this_thread::sleep_for(50ms);
        }
        EXPECT_LE(workdirs, live) << "working directories without an instance";
        if (fds_at_start_ > 0) {
            // Each slot of a live instance may keep its upstream connection open for reuse. A
            // retired instance's connections close when the stop queue has destroyed its
            // sandbox, which the status does not show: allow that a few seconds.
            std::size_t bound = fds_at_start_ + slots + 2;
            std::size_t now = open_fds(daemon_->pid());
            for (auto until = std::chrono::steady_clock::now() + 10s;
                 now > bound && std::chrono::steady_clock::now() < until;
                 now = open_fds(daemon_->pid())) {
                std::this_thread::sleep_for(50ms);
            }
            EXPECT_LE(now, bound) << "descriptors leaked: " << fds_at_start_ << " -> " << now
                                  << " (" << slots << " slots)";
            std::cout << "[ fds      ] " << fds_at_start_ << " -> " << now << "\n";
        }
    }

    void add_misbehaving(const std::string& name, const std::string& env_line,
                         const std::string& top = "") {
        write_function(name, top + "max-instances = 1\nqueue-timeout = 5\n[container]\nimage = \"" +
                                 engine().image_name() + "\"\nmemory = 64\n[env]\n" + env_line +
                                 "\n");
    }

    // An engine = "oci" function running the example rootfs with crun.
    void add_oci(const std::string& name, const std::string& top = "") {
        write_function(name, top + "\n[container]\nengine = \"oci\"\nimage = \"" +
                                 kRootfs.string() + "\"\nentrypoint = [\"/hello\"]\nmemory = 64\n");
    }

    // A QEMU microVM (TCG) booting the hello guest; the name carries the test's pid so its qemu
    // processes can be told apart from other suites'.
    std::string add_vm(const std::string& base, const std::string& top = "") {
        std::string name = base + "-f" + std::to_string(getpid());
        write_function(name, hello_vm_toml({.top = top}));
        return name;
    }

    // These checks count containers, processes and working dirs of instances: no OCI spares
    // (containers created ahead, README "Spares"; OciTest covers them).
    static constexpr const char* kNoSpares = "\noci-spare-memory = 0\n";
    void start_daemon(const std::string& extra = "") {
        RegistryTest::start_daemon(extra + kNoSpares);
    }

    // A daemon on a runtime dir that outlives it (restarts after kill -9).
    void start_daemon_in(const fs::path& run, const std::string& extra_config) {
        DaemonProcess::Options o;
        o.registry = registry_;
        o.docker_socket = engine().socket_path();
        o.runtime_dir = run;
        o.extra_config = extra_config + kNoSpares;
        daemon_ = std::make_unique<DaemonProcess>(o);
        callback_ports_.insert(daemon_->callback_port());
    }

    // What a crashed daemon may leave and a restarted (or stopped) one must have removed:
    // containers, OCI processes and veths, taps, namespaces, runtime state, working dirs,
    // nft elements, qemu processes, scopes. Returns a description of what is left ("" = none).
    std::string leftovers(const fs::path& run, const std::string& vm_marker) {
        std::string left;
        auto add = [&](bool bad, const std::string& what) {
            if (bad) {
                left += what + "; ";
            }
        };
        add(!engine().unifaas_containers().empty(), "docker containers");
        add(!interfaces_with_prefix("faasv").empty(), "veths");
        add(!interfaces_with_prefix("faas").empty(), "taps/veths");
        add(!empty_or_missing(run / "netns"), "netns");
        add(!empty_or_missing(run / "oci"), "oci state");
        add(!empty_or_missing(run / "instances"), "working dirs");
        add(!nft_elements().empty(), "nft elements: " + nft_elements());
        add(!instance_processes(callback_ports_).empty(), "container processes");
        add(!qemu_processes(vm_marker).empty(), "qemu processes");
        add(!run_command("find /sys/fs/cgroup -maxdepth 3 -name 'unifaas-*.scope' 2>/dev/null")
                 .empty(),
            "scopes");
        return left;
    }

    std::set<int> callback_ports_;  // of every daemon this test started (instance_processes)
    std::unique_ptr<httplib::Client> client_;
    int client_port_ = 0;
    std::size_t fds_at_start_ = 0;
};

TEST_F(FaultTest, GarbageAnswerIs502NamingTheFunctionAndFreesTheSlot) {
    add_hello("hello");
    add_misbehaving("garbage", "HELLO_GARBAGE = \"1\"");
    start_daemon();
    ASSERT_EQ(get("/invoke/hello/hello")->status, 200);
    remember_fds();
    for (int i = 0; i < 3; ++i) {  // max-instances = 1: a slot kept would make the next one 503
        auto res = get("/invoke/garbage/hello");
        ASSERT_TRUE(res);
        EXPECT_EQ(res->status, 502) << res->body;
        EXPECT_NE(res->body.find("garbage"), std::string::npos) << res->body;
    }
    EXPECT_EQ(get("/invoke/hello/hello")->status, 200);
}

TEST_F(FaultTest, NoAnswerWithinRequestTimeoutIs504AndTheInstanceServesOn) {
    add_misbehaving("slow", "UNUSED = \"1\"", "request-timeout = 1\n");
    start_daemon();
    ASSERT_EQ(get("/invoke/slow/hello")->status, 200);
    remember_fds();
    auto begin = std::chrono::steady_clock::now();
    auto res = get("/invoke/slow/sleep?ms=30000");
    ASSERT_TRUE(res);
    EXPECT_EQ(res->status, 504) << res->body;
    EXPECT_NE(res->body.find("request-timeout"), std::string::npos) << res->body;
    EXPECT_LT(std::chrono::steady_clock::now() - begin, 10s);
    EXPECT_EQ(get("/invoke/slow/hello")->status, 200) << "slot kept by the timed-out request";
}

TEST_F(FaultTest, InstanceThatDiesAfterItsCallbackIs502WithItsExit) {
    add_hello("hello");
    add_misbehaving("dies", "HELLO_EXIT_AFTER_CALLBACK = \"1\"");
    start_daemon();
    ASSERT_EQ(get("/invoke/hello/hello")->status, 200);
    remember_fds();
    for (int i = 0; i < 3; ++i) {
        auto res = get("/invoke/dies/hello");
        ASSERT_TRUE(res);
        EXPECT_EQ(res->status, 502) << res->body;
        EXPECT_NE(res->body.find("dies"), std::string::npos) << res->body;
    }
    // Every instance that died is gone (its container too: TearDown).
    auto st = status();
    for (int i = 0; i < 200; ++i) {
        bool any = false;
        for (auto& f : st["functions"]) {
            any = any || (f["name"] == "dies" && !f["instances"].empty());
        }
        if (!any) {
            break;
        }
        std::this_thread::sleep_for(10ms);
        st = status();
    }
    for (auto& f : st["functions"]) {
        if (f["name"] == "dies") {
            EXPECT_TRUE(f["instances"].empty()) << st.dump(2);
        }
    }
}

// The engine stops while an instance is warm, then starts again: while it is down clients get
// 503 naming the engine, afterwards full service on a new instance, and no slot or container of
// the instance that died with the engine is left. (Stopping the engine while clients keep
// cold-starting containers also works, but now and then leaves a container that the restarted
// engine itself cannot remove, "overlay2 ... device or resource busy", which would poison the
// suite's shared engine; so the load runs before the stop here.)
TEST_F(FaultTest, EngineStoppedIs503NamingItThenFullServiceAgain) {
    add_hello("hello", "concurrent-requests = 4\nmax-instances = 2\nqueue-timeout = 2");
    start_daemon();
    ASSERT_EQ(get("/invoke/hello/hello")->status, 200);
    remember_fds();
    {
        std::vector<std::thread> clients;
        std::atomic<int> ok{0};
        for (int c = 0; c < 4; ++c) {
            clients.emplace_back([&] {
                auto client = daemon_->client(20s);
                for (int i = 0; i < 200; ++i) {
                    auto res = client.Get("/invoke/hello/hello");
                    ok += res && res->status == 200;
                }
            });
        }
        for (auto& t : clients) {
            t.join();
        }
        EXPECT_EQ(ok, 800);
    }
    engine().stop_engine();
    for (int i = 0; i < 3; ++i) {
        auto res = get("/invoke/hello/hello");
        ASSERT_TRUE(res);
        EXPECT_EQ(res->status, 503) << res->body;
        EXPECT_NE(res->body.find("docker engine unreachable"), std::string::npos) << res->body;
    }
    engine().start_engine();
    for (int i = 0; i < 5; ++i) {
        auto res = get("/invoke/hello/hello");
        ASSERT_TRUE(res);
        EXPECT_EQ(res->status, 200) << res->body;
    }
    // The container of the instance that died with the engine could not be removed while it
    // was down: it goes once the engine answers again (bounded wait: nothing announces it).
    std::size_t live = 0, containers = 0;
    for (int i = 0; i < 100; ++i) {
        live = 0;
        auto st = status();  // (outlives the loop)
        for (auto& f : st["functions"]) {
            live += f["instances"].size();
        }
        containers = engine().unifaas_containers().size();
        if (containers <= live) {
            break;
        }
        std::this_thread::sleep_for(50ms);
    }
    EXPECT_LE(containers, live) << "containers of dead instances left after the engine restart";
}

// kill -9 of the daemon while Docker containers, OCI containers (crun, with their netns and
// veths) and, every fourth round, a QEMU microVM run; the restart must find and remove all of
// it before it is ready, then serve. 20 rounds. A VM boot costs ~2-3 s of a core under TCG
// against ~0.1 s for the containers, and the VM's leftovers (qemu, tap, nft element, working
// dir) take the same startup path every time, so 5 of the 20 rounds run one (bounded suite).
// The engine stops while clients keep calling (the instance dies with it, new starts fail),
// then starts again under the same load: while it is down every failure is a 503 naming the
// engine (or a 502 for a request the dying container held), afterwards full service, and no
// slot, queue entry or container is left over.
// Docker 20.10 itself sometimes fails here (session 5: 3 runs in 8, under load): the engine,
// stopped while it starts a container, exits with that container's overlay still mounted in the
// host's own mount namespace (no other namespace held a copy: every process and dockerd thread was
// polled), and the restarted engine then cannot remove the container ("unlinkat .../merged: device
// or resource busy"). The suite's engine detaches what a stopped dockerd left mounted, as an
// operator would (docker_engine.cpp, named on stderr); what is tested is the daemon.
TEST_F(FaultTest, EngineStoppedMidLoadIs503NamingItThenFullServiceNoStuckSlots) {
    add_hello("busy", "concurrent-requests = 4\nmax-instances = 1\nqueue-timeout = 2");
    start_daemon();
    ASSERT_EQ(get("/invoke/busy/hello")->status, 200);
    remember_fds();
    std::atomic<bool> stop{false}, down{false};
    std::atomic<int> ok{0}, engine_503{0}, dead_502{0};
    std::mutex mu;
    std::map<std::string, int> unexpected;
    std::vector<std::thread> clients;
    for (int c = 0; c < 4; ++c) {
        clients.emplace_back([&] {
            auto client = daemon_->client(20s);
            while (!stop) {
                auto res = client.Get("/invoke/busy/sleep?ms=5");
                if (res && res->status == 200) {
                    ++ok;
                } else if (res && res->status == 503 &&
                           res->body.find("docker engine unreachable") != std::string::npos) {
                    ++engine_503;
                } else if (res && res->status == 502) {
                    ++dead_502;
                } else {
                    std::lock_guard lock(mu);
                    ++unexpected[res ? std::to_string(res->status) + " " + res->body.substr(0, 80)
                                     : std::string("no response")];
                }
                if (down) {
                    std::this_thread::sleep_for(20ms);  // (pace the loop while it fails fast)
                }
            }
        });
    }
    auto wait_ok = [&](int more) {
        int until = ok + more;
        return eventually([&] { return ok >= until; }, 30s);
    };
    EXPECT_TRUE(wait_ok(200)) << "no load before the stop";
    engine().stop_engine();
    down = true;
    int before = engine_503;
    EXPECT_TRUE(eventually([&] { return engine_503 >= before + 20; }, 20s))
        << "no 503 naming the engine while it was down";
    engine().start_engine();
    down = false;
    EXPECT_TRUE(wait_ok(200)) << "service did not come back";
    stop = true;
    for (auto& t : clients) {
        t.join();
    }
    for (const auto& [what, n] : unexpected) {
        ADD_FAILURE() << n << " x " << what;
    }
    std::cout << "[ engine   ] " << ok << " ok, " << engine_503 << " 503 naming the engine, "
              << dead_502 << " 502 (held by the dying container)\n";
    for (int i = 0; i < 5; ++i) {
        EXPECT_EQ(get("/invoke/busy/hello")->status, 200);
    }
    std::size_t live = 0, containers = 0;
    eventually(
        [&] {
            live = 0;
            auto st = status();
            for (auto& f : st["functions"]) {
                live += f["instances"].size();
            }
            containers = engine().unifaas_containers().size();
            return containers <= live;
        },
        10s);
    EXPECT_LE(containers, live) << "containers of dead instances left after the engine restart";
}

TEST_F(FaultTest, RepeatedKill9WithContainersAndVmsThenRestartLeavesNothing) {
    ASSERT_TRUE(fs::exists(kGuest / "kernel" / "vmlinux")) << "guest images not built";
    constexpr int kRounds = 20;
    constexpr int kVmEvery = 4;
    add_hello("a");
    add_hello("b", "concurrent-requests = 2");
    add_oci("o", "concurrent-requests = 1\nmax-instances = 2");
    std::string vm = add_vm("v");
    std::string marker = "-f" + std::to_string(getpid());
    fs::path run = registry_.string() + "-run";
    const std::string config = "accel = \"tcg\"\ntap-prealloc = 0\n";
    auto begin = std::chrono::steady_clock::now();
    for (int round = 0; round < kRounds; ++round) {
        SCOPED_TRACE("round " + std::to_string(round));
        start_daemon_in(run, config);
        // Ready means the startup cleanup is done: nothing of the crashed run may remain
        // (OCI processes die with their namespace's teardown: a bounded wait for them).
        std::string left;
        eventually([&] { return (left = leftovers(run, marker)).empty(); }, 10s);
        EXPECT_EQ(left, "") << "restart did not remove the leftovers\n" << daemon_->log();
        ASSERT_EQ(get("/invoke/a/hello")->status, 200);
        ASSERT_EQ(get("/invoke/b/hello")->status, 200);
        std::vector<std::future<int>> oci;
        for (int i = 0; i < 2; ++i) {  // two OCI instances, each holding a request
            oci.push_back(std::async(std::launch::async, [&] {
                auto r = daemon_->client().Get("/invoke/o/sleep?ms=300");
                return r ? r->status : -1;
            }));
        }
        for (auto& call : oci) {
            EXPECT_EQ(call.get(), 200);
        }
        bool with_vm = round % kVmEvery == 0;
        if (with_vm) {
            ASSERT_EQ(get("/invoke/" + vm + "/hello")->status, 200);
        }
        // There is something to clean up: the crash leaves it.
        EXPECT_EQ(engine().unifaas_containers().size(), 2u);
        EXPECT_EQ(instance_processes(callback_ports_).size(), 4u);
        EXPECT_FALSE(interfaces_with_prefix("faasv").empty());
        EXPECT_FALSE(nft_elements().empty());
        daemon_->kill9();
        if (with_vm) {
            EXPECT_GT(interfaces_with_prefix("faas").size(), interfaces_with_prefix("faasv").size())
                << "no tap left by the crashed daemon's VM";
        }
    }
    start_daemon_in(run, config);
    std::string left;
    eventually([&] { return (left = leftovers(run, marker)).empty(); }, 10s);
    EXPECT_EQ(left, "");
    EXPECT_EQ(get("/invoke/a/hello")->status, 200);
    EXPECT_EQ(get("/invoke/o/hello")->status, 200);
    EXPECT_EQ(get("/invoke/" + vm + "/hello")->status, 200);
    double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - begin).count();
    std::cout << "[ kill -9  ] " << kRounds << " rounds (" << (kRounds + kVmEvery - 1) / kVmEvery
              << " with a VM) in " << seconds << " s\n";
    // The full leak check after a clean stop.
    EXPECT_EQ(daemon_->terminate(), 0) << daemon_->log();
    EXPECT_EQ(leftovers(run, marker), "");
    EXPECT_EQ(run_command("nft list table inet unifaas 2>/dev/null"), "") << "table left at stop";
    fs::remove_all(run);
}

}  // namespace
}  // namespace unifaas::test

namespace unifaas::test {
namespace {

// Resident memory of a process, total (VmRSS) and anonymous (RssAnon: heap, arenas, stacks).
struct Rss {
    std::size_t total_kib = 0;
    std::size_t anon_kib = 0;
};

Rss rss_of(pid_t pid) {
    Rss rss;
    std::ifstream in("/proc/" + std::to_string(pid) + "/status");
    std::string line;
    while (std::getline(in, line)) {
        if (line.rfind("VmRSS:", 0) == 0) {
            rss.total_kib = std::stoul(line.substr(6));
        } else if (line.rfind("RssAnon:", 0) == 0) {
            rss.anon_kib = std::stoul(line.substr(8));
        }
    }
    return rss;
}

std::ostream& operator<<(std::ostream& out, const Rss& rss) {
    return out << rss.total_kib << " KiB (anon " << rss.anon_kib << ")";
}

// The soak: 10 000 mixed requests from 64 connections (warm invocations on a Docker function,
// bodies, unknown functions) while single-use OCI containers (crun, ~40-70 ms each) go through
// 1 000 cold-start/stop cycles, each with its own netns lease and nft element. Nothing but the
// expected statuses; descriptors back where they were.
// Memory: RSS is read at the start, after a warm-up (the first 2 000 requests and 100 cycles:
// every thread has run its share and the allocator its arenas) and at the end. After the
// warm-up it must stay within kWarmGrowthBound: a leak of 3.5 KiB or more per cycle (one
// instance's records, a netlink buffer, a log line kept) exceeds it over 900 cycles. Over the
// whole run it must stay within kTotalGrowthBound: before libnftables got a thread of its own
// (net/firewall.cpp), every start/stop thread's arena kept ~2 MiB of nft buffers and RSS grew
// 17 -> 35 MiB.
// UNIFAAS_SOAK_COLD_CYCLES overrides the cycle count (e.g. a longer run by hand; at least 200).
TEST_F(FaultTest, SoakMixedRequestsAndColdStopCycles) {
    constexpr int kConnections = 64;
    constexpr int kRequests = 10'000;
    constexpr int kWarmRequests = 2'000;
    constexpr int kWarmCycles = 100;
    const int kColdCycles = std::max(
        2 * kWarmCycles,
        getenv("UNIFAAS_SOAK_COLD_CYCLES") ? std::atoi(getenv("UNIFAAS_SOAK_COLD_CYCLES")) : 1000);
    constexpr std::size_t kWarmGrowthBound = 3072;   // KiB
    constexpr std::size_t kTotalGrowthBound = 8192;  // KiB
    // Descriptors made on first use of something shared (seen: one) may come after the
    // baseline; a leak per request or per instance would show as tens or thousands.
    constexpr std::size_t kFdSlack = 2;
    add_hello("warm",
              "concurrent-requests = 16\nmax-instances = 4\nqueue-timeout = 30\nkeepalive = 2");
    add_oci("once", "single-use = true\nmax-instances = 4\nqueue-timeout = 60");
    start_daemon();
    callback_ports_.insert(daemon_->callback_port());
    ASSERT_EQ(get("/invoke/warm/hello")->status, 200);
    ASSERT_EQ(get("/invoke/once/hello")->status, 200);
    expect_nothing_held();
    remember_fds();
    Rss rss_start = rss_of(daemon_->pid());

    std::mutex mu;
    std::map<std::string, int> unexpected;
    auto note = [&](const std::string& what) {
        std::lock_guard lock(mu);
        ++unexpected[what];
    };
    // The next of [counter, limit) to send; limit when there is none left (never beyond it, so
    // the next phase goes on from there).
    auto take = [](std::atomic<int>& counter, int limit) {
        int i = counter.load();
        while (i < limit && !counter.compare_exchange_weak(i, i + 1)) {
        }
        return i;
    };
    // Sends requests up to `requests` and cycles up to `cycles`, at full concurrency.
    std::atomic<int> next{0}, cold_next{0};
    auto load = [&](int requests, int cycles) {
        std::vector<std::thread> threads;
        for (int c = 0; c < kConnections; ++c) {
            threads.emplace_back([&] {
                auto client = daemon_->client(60s);
                for (int i = take(next, requests); i < requests; i = take(next, requests)) {
                    int want = i % 10 == 1 ? 404 : 200;
                    auto res = i % 10 == 0   ? client.Post("/invoke/warm/echo",
                                                           std::string(1000, 'x'), "text/plain")
                               : i % 10 == 1 ? client.Get("/invoke/no-such-function/x")
                                             : client.Get("/invoke/warm/hello");
                    if (!res || res->status != want) {
                        note(res ? std::to_string(res->status) + " " + res->body.substr(0, 80)
                                 : "no response");
                    }
                }
            });
        }
        for (int c = 0; c < 4; ++c) {
            threads.emplace_back([&] {
                auto client = daemon_->client(60s);
                for (int i = take(cold_next, cycles); i < cycles; i = take(cold_next, cycles)) {
                    auto res = client.Get("/invoke/once/hello");
                    if (!res || res->status != 200) {
                        note("cold: " +
                             (res ? std::to_string(res->status) + " " + res->body.substr(0, 80)
                                  : std::string("no response")));
                    }
                }
            });
        }
        for (auto& t : threads) {
            t.join();
        }
    };
    auto begin = std::chrono::steady_clock::now();
    load(kWarmRequests, kWarmCycles);
    Rss rss_warm = rss_of(daemon_->pid());
    load(kRequests, kColdCycles);
    double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - begin).count();
    for (const auto& [what, n] : unexpected) {
        ADD_FAILURE() << n << " x " << what;
    }
    expect_nothing_held();
    Rss rss_end = rss_of(daemon_->pid());
    std::cout << "[ soak     ] " << kRequests << " requests at c=" << kConnections << " + "
              << kColdCycles << " cold/stop cycles in " << seconds << " s\n"
              << "[ soak     ] RSS start " << rss_start << ", after warm-up (" << kWarmRequests
              << " requests, " << kWarmCycles << " cycles) " << rss_warm << ", end " << rss_end
              << "\n";
    EXPECT_LE(rss_end.total_kib, rss_warm.total_kib + kWarmGrowthBound)
        << "RSS grew after the warm-up: a leak per cycle or per request?";
    EXPECT_LE(rss_end.total_kib, rss_start.total_kib + kTotalGrowthBound)
        << "RSS grew over the soak: memory kept per thread?";
    // Once keepalive has stopped every instance, the daemon holds no more descriptors than after
    // the warm-up (which had one instance and its upstream connection): nothing accumulated.
    bool idle = false;
    for (int i = 0; i < 300 && !idle; ++i) {
        auto st = status();  // (outlives the loop)
        idle = true;
        for (auto& f : st["functions"]) {
            idle = idle && f["instances"].empty();
        }
        if (!idle) {
            std::this_thread::sleep_for(50ms);
        }
    }
    ASSERT_TRUE(idle) << "keepalive did not stop the instances";
    // Retired instances (and the upstream sockets of their slots) are destroyed on the stop
    // queue, container removal included: wait for the engine to have none left (bounded).
    std::size_t fds_idle = 0;
    for (int i = 0; i < 200; ++i) {
        fds_idle = open_fds(daemon_->pid());
        if (engine().unifaas_containers().empty() && fds_idle <= fds_at_start_ + kFdSlack) {
            break;
        }
        std::this_thread::sleep_for(50ms);
    }
    EXPECT_TRUE(engine().unifaas_containers().empty());
    EXPECT_TRUE(eventually([&] { return instance_processes(callback_ports_).empty(); }, 10s));
    EXPECT_LE(fds_idle, fds_at_start_ + kFdSlack);
    std::cout << "[ soak     ] fds " << fds_at_start_ << " -> " << fds_idle << " once idle\n";
}

}  // namespace
}  // namespace unifaas::test

namespace unifaas::test {
namespace {

// Whether a TCP connect from this thread to ip:port completes within a second.
bool host_can_connect(const std::string& ip, int port) {
    std::string out = run_command("timeout 2 bash -c 'exec 3<>/dev/tcp/" + ip + "/" +
                                  std::to_string(port) + "' 2>/dev/null && echo yes");
    return out.find("yes") != std::string::npos;
}

// An "outside" network: a namespace behind the veth wan0 (192.0.2.1 here, 192.0.2.2 there),
// with a listener on 192.0.2.2:port. Made in the suite's private namespace, gone with it.
class Outside {
  public:
    Outside() {
        std::thread([this] {
            if (::unshare(CLONE_NEWNET) == 0) {
                fd_ = ::open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
                listener_ = listen_ephemeral("0.0.0.0");
            }
        }).join();
        std::string ns = "/proc/" + std::to_string(getpid()) + "/fd/" + std::to_string(fd_);
        run_command(
            "ip link add wan0 type veth peer name peer0 netns " + ns +
            " && ip addr add 192.0.2.1/24 dev wan0 && ip link set wan0 up && nsenter --net=" + ns +
            " sh -c 'ip link set lo up && ip addr add 192.0.2.2/24 dev peer0 && ip link " +
            "set peer0 up'");
    }
    ~Outside() {
        run_command("ip link del wan0 2>/dev/null");
        ::close(listener_.first);
        ::close(fd_);
    }
    int port() const { return listener_.second; }

  private:
    int fd_ = -1;
    std::pair<int, int> listener_{-1, 0};
};

// The guest firewall seen from inside a QEMU guest: the hello function's /connect probe, run in
// a microVM with the default policy, reaches the daemon's callback port on its host-side
// address and nothing else: not another port the host listens on, not another guest (a Docker
// container and an OCI container of the same daemon), not the outside (no egress). Positive
// controls: the test itself reaches each target, and the callback connect from the guest works.
TEST_F(FaultTest, GuestFirewallHoldsFromInsideAQemuGuest) {
    ASSERT_TRUE(fs::exists(kGuest / "kernel" / "vmlinux")) << "guest images not built";
    add_hello("peer");
    add_oci("ocipeer");
    std::string vm = add_vm("probe", "max-instances = 1");
    Outside outside;
    ASSERT_TRUE(host_can_connect("192.0.2.2", outside.port())) << "outside not set up";
    auto [host_listener, host_port] = listen_ephemeral("0.0.0.0");
    start_daemon("accel = \"tcg\"\ntap-prealloc = 0\n");
    ASSERT_EQ(get("/invoke/peer/hello")->status, 200);
    ASSERT_EQ(get("/invoke/ocipeer/hello")->status, 200);
    ASSERT_EQ(get("/invoke/" + vm + "/hello")->status, 200);
    std::map<std::string, std::string> address;
    auto st = status();  // (outlives the loop)
    for (auto& f : st["functions"]) {
        ASSERT_EQ(f["instances"].size(), 1u) << f.dump();
        address[f["name"].get<std::string>()] = f["instances"][0]["address"].get<std::string>();
    }
    // The host-side address of the VM's tap: the source of the route to the guest.
    std::string route = run_command("ip -o -4 route get " + address[vm]);
    std::smatch src;
    ASSERT_TRUE(std::regex_search(route, src, std::regex(R"(dev faas\d+ .*src (\S+))"))) << route;
    std::string gateway = src[1];
    ASSERT_FALSE(gateway.empty());

    auto probe = [&](const std::string& host, int port) {
        auto res = get("/invoke/" + vm + "/connect?host=" + host + "&port=" + std::to_string(port));
        return res && res->status == 200 ? res->body : std::string("no answer");
    };
    // Its own way back to the daemon: open.
    EXPECT_EQ(probe(gateway, daemon_->callback_port()), "connected\n");
    // A port the host listens on (on every address): rejected by the firewall (an ICMP
    // admin-prohibited, "No route to host"; without the firewall it would connect).
    ASSERT_TRUE(host_can_connect(gateway, host_port));
    EXPECT_NE(probe(gateway, host_port).find("No route to host"), std::string::npos)
        << probe(gateway, host_port);
    EXPECT_EQ(probe("192.0.2.1", host_port).rfind("failed", 0), 0u) << "host's other address";
    // Other guests: the Docker container and the OCI container, both listening.
    for (const char* peer : {"peer", "ocipeer"}) {
        ASSERT_TRUE(host_can_connect(address[peer], 8080)) << peer;
        EXPECT_EQ(probe(address[peer], 8080).rfind("failed", 0), 0u) << peer;
    }
    // The outside, through the host: no egress.
    EXPECT_EQ(probe("192.0.2.2", outside.port()).rfind("failed", 0), 0u);
    ::close(host_listener);
}

}  // namespace
}  // namespace unifaas::test

namespace unifaas::test {
namespace {

// runtime-dir on a 2 MiB tmpfs that the test fills: a cold start that cannot write its bundle
// fails with an error naming the file and the cause, leaves no half-written working directory,
// others keep serving, and once space is back the same function starts normally. (The tmpfs is
// mounted in the test's mount namespace, on a path of its own under /tmp: the suite's process
// is multi-threaded, so it cannot unshare a mount namespace of its own for the daemon.)
TEST_F(FaultTest, DiskFullInRuntimeDirIsAClearErrorAndNothingHalfWrittenIsUsed) {
    add_hello("warm");
    add_oci("first");
    add_oci("cold");
    fs::path run = registry_.string() + "-tmpfs";
    fs::create_directories(run);
    ASSERT_EQ(run_command("mount -t tmpfs -o size=2m,mode=0755 unifaas-test " + run.string() +
                          " 2>&1 && echo ok"),
              "ok\n");
    struct Unmount {
        fs::path dir;
        ~Unmount() { run_command("umount -l " + dir.string() + " 2>/dev/null"); }
    } unmount{run};
    start_daemon_in(run, "");
    ASSERT_EQ(get("/invoke/warm/hello")->status, 200);
    ASSERT_EQ(get("/invoke/first/hello")->status, 200);
    remember_fds();
    // Fill what is left (dd stops at ENOSPC).
    run_command("dd if=/dev/zero of=" + (run / "filler").string() + " bs=64k 2>/dev/null");
    ASSERT_EQ(std::stoul(run_command("df --output=avail -B1 " + run.string() + " | tail -1")), 0u);
    std::size_t dirs_before = 0;
    for ([[maybe_unused]] const auto& e : fs::directory_iterator(run / "instances")) {
        ++dirs_before;
    }
    for (int i = 0; i < 3; ++i) {
        auto res = get("/invoke/cold/hello");
        ASSERT_TRUE(res);
        EXPECT_GE(res->status, 500) << res->body;
        EXPECT_NE(res->body.find("No space left on device"), std::string::npos) << res->body;
        EXPECT_NE(res->body.find("cold"), std::string::npos) << res->body;
    }
    // The failed starts left nothing behind to be picked up later.
    std::size_t dirs_after = 0;
    for ([[maybe_unused]] const auto& e : fs::directory_iterator(run / "instances")) {
        ++dirs_after;
    }
    EXPECT_EQ(dirs_after, dirs_before) << "a failed start left its working directory";
    // Warm instances keep serving while the disk is full.
    EXPECT_EQ(get("/invoke/warm/hello")->status, 200);
    EXPECT_EQ(get("/invoke/first/hello")->status, 200);
    fs::remove(run / "filler");
    auto res = get("/invoke/cold/hello");
    ASSERT_TRUE(res);
    EXPECT_EQ(res->status, 200) << res->body;
    expect_nothing_held();
    EXPECT_EQ(daemon_->terminate(), 0) << daemon_->log();
    EXPECT_EQ(leftovers(run, "no-vm"), "");
}

}  // namespace
}  // namespace unifaas::test
