// Faults, end to end with the real daemon and the suite's private Docker engine: functions that
// misbehave after starting, an engine that goes away under load, repeated crashes of the daemon.
// Each test ends with the leak check of FaultTest::TearDown: no slot in use or queued, no
// container left, no working directory left, descriptors back to where they were.
// (Faults covered elsewhere: exits at once and never calls back: DaemonTest; subnet exhausted,
// QEMU killed, kill -9 with VMs: MicroVmTest; guest isolation: FirewallTest.)
#include <dirent.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "registry_fixture.h"

namespace unifaas::test {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

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
        std::size_t workdirs = 0;
        if (fs::exists(instances)) {
            for ([[maybe_unused]] const auto& e : fs::directory_iterator(instances)) {
                ++workdirs;
            }
        }
        std::size_t live = 0, slots = 0;
        for (auto& f : st["functions"]) {
            live += f["instances"].size();
            for (auto& i : f["instances"]) {
                slots += i["capacity"].get<std::size_t>();
            }
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
            EXPECT_LE(now, bound)
                << "descriptors leaked: " << fds_at_start_ << " -> " << now << " (" << slots
                << " slots)";
            std::cout << "[ fds      ] " << fds_at_start_ << " -> " << now << "\n";
        }
    }

    void add_misbehaving(const std::string& name, const std::string& env_line,
                         const std::string& top = "") {
        write_function(name, top + "max-instances = 1\nqueue-timeout = 5\n[container]\nimage = \"" +
                                 engine().image_name() + "\"\nmemory = 64\n[env]\n" + env_line +
                                 "\n");
    }

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

TEST_F(FaultTest, RepeatedKill9WithRunningContainersThenRestartLeavesNothing) {
    add_hello("a");
    add_hello("b", "concurrent-requests = 2");
    constexpr int kRounds = 5;
    for (int round = 0; round < kRounds; ++round) {
        start_daemon();
        if (round > 0) {
            EXPECT_TRUE(engine().unifaas_containers().empty())
                << "round " << round << ": restart did not remove the leftovers";
        }
        ASSERT_EQ(get("/invoke/a/hello")->status, 200);
        ASSERT_EQ(get("/invoke/b/hello")->status, 200);
        EXPECT_EQ(engine().unifaas_containers().size(), 2u);
        daemon_->kill9();
    }
    start_daemon();
    EXPECT_TRUE(engine().unifaas_containers().empty());
    EXPECT_EQ(get("/invoke/a/hello")->status, 200);
}

}  // namespace
}  // namespace unifaas::test

namespace unifaas::test {
namespace {

std::size_t rss_kib(pid_t pid) {
    std::ifstream in("/proc/" + std::to_string(pid) + "/status");
    std::string line;
    while (std::getline(in, line)) {
        if (line.rfind("VmRSS:", 0) == 0) {
            return std::stoul(line.substr(6));
        }
    }
    return 0;
}

// A bounded soak: 10 000 mixed requests from 64 connections (warm invocations, bodies, unknown
// functions) while single-use instances go through cold-start/stop cycles. Nothing but the
// expected statuses; descriptors back where they were. RSS is reported, not judged.
TEST_F(FaultTest, SoakMixedRequestsAndColdStopCycles) {
    constexpr int kConnections = 64;
    constexpr int kRequests = 10'000;
    constexpr int kColdCycles = 40;
    // Descriptors made on first use of something shared (seen: one) may come after the
    // baseline; a leak per request or per instance would show as tens or thousands.
    constexpr std::size_t kFdSlack = 2;
    add_hello("warm",
              "concurrent-requests = 16\nmax-instances = 4\nqueue-timeout = 30\nkeepalive = 2");
    add_hello("once", "single-use = true\nmax-instances = 4\nqueue-timeout = 60");
    start_daemon();
    ASSERT_EQ(get("/invoke/warm/hello")->status, 200);
    ASSERT_EQ(get("/invoke/once/hello")->status, 200);
    expect_nothing_held();
    remember_fds();
    std::size_t rss_start = rss_kib(daemon_->pid());

    std::atomic<int> next{0}, cold_next{0};
    std::mutex mu;
    std::map<std::string, int> unexpected;
    auto note = [&](const std::string& what) {
        std::lock_guard lock(mu);
        ++unexpected[what];
    };
    auto begin = std::chrono::steady_clock::now();
    std::vector<std::thread> threads;
    for (int c = 0; c < kConnections; ++c) {
        threads.emplace_back([&] {
            auto client = daemon_->client(60s);
            for (int i = next++; i < kRequests; i = next++) {
                int want = i % 10 == 1 ? 404 : 200;
                auto res = i % 10 == 0   ? client.Post("/invoke/warm/echo", std::string(1000, 'x'),
                                                       "text/plain")
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
            for (int i = cold_next++; i < kColdCycles; i = cold_next++) {
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
    double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - begin).count();
    for (const auto& [what, n] : unexpected) {
        ADD_FAILURE() << n << " x " << what;
    }
    expect_nothing_held();
    std::size_t rss_end = rss_kib(daemon_->pid());
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
    EXPECT_LE(fds_idle, fds_at_start_ + kFdSlack);
    std::cout << "[ soak     ] " << kRequests << " requests at c=" << kConnections << " + "
              << kColdCycles << " cold/stop cycles in " << seconds << " s; RSS " << rss_start
              << " -> " << rss_end << " KiB; fds " << fds_at_start_ << " -> " << fds_idle
              << " once idle\n";
}

}  // namespace
}  // namespace unifaas::test
