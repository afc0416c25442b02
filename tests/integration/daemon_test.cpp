// The whole daemon against a real Docker engine (private, in the test's network namespace):
// cold start, warm reuse, slots, single-use, keepalive, failures, crash recovery, shutdown.
#include <gtest/gtest.h>
#include <sched.h>
#include <signal.h>
#include <unistd.h>
#include <nlohmann/json.hpp>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <future>
#include <optional>

#include "container_events.h"
#include "daemon_process.h"
#include "docker_engine.h"
#include "registry_fixture.h"

namespace unifaas::test {

PrivateDockerEngine& engine();

namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

class DaemonTest : public RegistryTest {
  protected:
    void TearDown() override {
        if (daemon_ && daemon_->running()) {
            expect_no_slot_in_use();
        }
        RegistryTest::TearDown();
    }

    // Sequential requests share one keep-alive connection: the daemon finishes writing (and
    // releases the slot of) one response before it reads the next request on that connection,
    // so /status read this way reflects every earlier request.
    httplib::Result get(const std::string& path) {
        if (!client_ || client_port_ != daemon_->http_port()) {
            client_ = std::make_unique<httplib::Client>(daemon_->client());
            client_port_ = daemon_->http_port();
        }
        return client_->Get(path);
    }

    nlohmann::json status() {
        auto res = get("/status");
        EXPECT_TRUE(res) << "no /status";
        return res ? nlohmann::json::parse(res->body) : nlohmann::json{};
    }

    std::size_t instance_count(const std::string& function) {
        auto s = status();  // (outlives the loop)
        for (auto& f : s["functions"]) {
            if (f["name"] == function) {
                return f["instances"].size();
            }
        }
        return 0;
    }

    // Responses to other connections may still be finishing: a response reaches the client
    // just before the daemon releases its slot, and nothing announces the release. Read the
    // state until it settles (bounded).
    void expect_no_slot_in_use() {
        auto settled = [](const nlohmann::json& st) {
            if (st["in_flight"] != 0) {
                return false;
            }
            for (auto& f : st["functions"]) {
                for (auto& i : f["instances"]) {
                    if (i["in_use"] != 0) {
                        return false;
                    }
                }
            }
            return true;
        };
        auto s = status();
        for (int i = 0; i < 100 && !settled(s); ++i) {
            std::this_thread::sleep_for(std::chrono::milliseconds(10));
            s = status();
        }
        EXPECT_EQ(s["in_flight"], 0);
        for (auto& f : s["functions"]) {
            EXPECT_EQ(f["queued"], 0) << f["name"];
            for (auto& i : f["instances"]) {
                EXPECT_EQ(i["in_use"], 0) << f["name"] << " instance " << i["id"];
            }
        }
    }

    std::unique_ptr<httplib::Client> client_;
    int client_port_ = 0;
};

TEST_F(DaemonTest, ColdStartThenWarmReuse) {
    add_hello("hello", "concurrent-requests = 4");
    start_daemon();
    ContainerEvents events(engine().socket_path());
    auto first = get("/invoke/hello/hello");
    ASSERT_TRUE(first);
    EXPECT_EQ(first->status, 200);
    EXPECT_EQ(first->body, "hello from unifaas\n");
    auto second = get("/invoke/hello/hello");
    ASSERT_TRUE(second);
    EXPECT_EQ(second->status, 200);
    EXPECT_EQ(events.count("create"), 1u) << "warm request started another container";
    auto s = status();
    ASSERT_EQ(s["functions"][0]["instances"].size(), 1u);
    EXPECT_EQ(s["functions"][0]["instances"][0]["requests"], 2);
    EXPECT_EQ(engine().unifaas_containers().size(), 1u);
}

TEST_F(DaemonTest, ForwardsMethodsPathsQueriesHeadersAndBodies) {
    add_hello("hello", "concurrent-requests = 4");
    start_daemon();
    auto cli = daemon_->client();
    auto res = cli.Get("/invoke/hello/echo/a/b/c?x=1&y=two");
    ASSERT_TRUE(res);
    EXPECT_EQ(res->status, 200);
    EXPECT_NE(res->body.find("method: GET"), std::string::npos) << res->body;
    EXPECT_NE(res->body.find("path: /echo/a/b/c"), std::string::npos) << res->body;
    EXPECT_NE(res->body.find("query: x=1&y=two"), std::string::npos) << res->body;

    res = cli.Post("/invoke/hello/echo/post", "payload-123", "text/plain");
    ASSERT_TRUE(res);
    EXPECT_NE(res->body.find("method: POST"), std::string::npos) << res->body;
    EXPECT_NE(res->body.find("body: payload-123"), std::string::npos) << res->body;

    res = cli.Put("/invoke/hello/echo", "put-body", "text/plain");
    ASSERT_TRUE(res);
    EXPECT_NE(res->body.find("method: PUT"), std::string::npos) << res->body;
    res = cli.Delete("/invoke/hello/echo");
    ASSERT_TRUE(res);
    EXPECT_NE(res->body.find("method: DELETE"), std::string::npos) << res->body;

    for (auto path : {"/invoke/hello", "/invoke/hello/"}) {
        res = cli.Get(path);
        ASSERT_TRUE(res);
        EXPECT_EQ(res->status, 200) << path;
        EXPECT_EQ(res->body, "unifaas hello function\n") << path;
    }
    res = cli.Get("/invoke/hello/no-such-path");
    ASSERT_TRUE(res);
    EXPECT_EQ(res->status, 404) << "the function's own status must come back unchanged";
    EXPECT_TRUE(res->has_header("Content-Type"));
}

TEST_F(DaemonTest, ConcurrentRequestsLimitIsObserved) {
    add_hello("slots", "concurrent-requests = 2\nmax-instances = 1\nqueue-timeout = 20");
    start_daemon();
    ASSERT_EQ(get("/invoke/slots/hello")->status, 200);  // warm it up
    auto started = std::chrono::steady_clock::now();
    std::vector<std::future<int>> calls;
    for (int i = 0; i < 4; ++i) {
        calls.push_back(std::async(std::launch::async, [&] {
            auto res = daemon_->client().Get("/invoke/slots/sleep?ms=600");
            return res ? res->status : -1;
        }));
    }
    for (auto& c : calls) {
        EXPECT_EQ(c.get(), 200);
    }
    auto elapsed = std::chrono::steady_clock::now() - started;
    // Two slots on one instance: four 600 ms requests need at least two rounds.
    EXPECT_GE(elapsed, 1200ms);
    EXPECT_EQ(engine().unifaas_containers().size(), 1u);
}

TEST_F(DaemonTest, SingleUseStopsTheContainerAfterItsRequest) {
    add_hello("once", "single-use = true");
    start_daemon();
    ContainerEvents events(engine().socket_path());
    auto res = get("/invoke/once/hello");
    ASSERT_TRUE(res);
    EXPECT_EQ(res->status, 200);
    EXPECT_TRUE(events.wait_for("destroy", 1)) << "single-use container not removed";
    EXPECT_EQ(instance_count("once"), 0u);
    res = get("/invoke/once/hello");
    ASSERT_TRUE(res);
    EXPECT_EQ(res->status, 200);
    EXPECT_TRUE(events.wait_for("destroy", 2));
    EXPECT_EQ(events.count("create"), 2u);
}

TEST_F(DaemonTest, KeepaliveExpiryRemovesTheContainer) {
    add_hello("brief", "keepalive = 1");
    start_daemon();
    ContainerEvents events(engine().socket_path());
    ASSERT_EQ(get("/invoke/brief/hello")->status, 200);
    auto answered = std::chrono::steady_clock::now();
    EXPECT_TRUE(events.wait_for("destroy", 1, 20s)) << "idle container outlived keepalive";
    EXPECT_GE(std::chrono::steady_clock::now() - answered, 900ms) << "stopped before keepalive";
    EXPECT_EQ(instance_count("brief"), 0u);
}

TEST_F(DaemonTest, MissingImageIs500NamingTheImage) {
    write_function("ghost", "[container]\nimage = \"no-such-image\"\n");
    start_daemon();
    auto res = get("/invoke/ghost/hello");
    ASSERT_TRUE(res);
    EXPECT_EQ(res->status, 500);
    EXPECT_NE(res->body.find("no-such-image"), std::string::npos) << res->body;
    EXPECT_NE(res->body.find("ghost"), std::string::npos) << res->body;
}

TEST_F(DaemonTest, UnknownRuntimeIs500NamingTheRuntime) {
    add_hello("gvisor", "", "runtime = \"runsc-kvm\"");
    start_daemon();
    auto res = get("/invoke/gvisor/hello");
    ASSERT_TRUE(res);
    EXPECT_EQ(res->status, 500);
    EXPECT_NE(res->body.find("runsc-kvm"), std::string::npos) << res->body;
}

TEST_F(DaemonTest, ContainerExitingBeforeReadyIs502AndLeavesNothing) {
    add_hello("crash", "", "");
    write_function("crash", "[container]\nimage = \"" + engine().image_name() +
                                "\"\n[env]\nHELLO_EXIT_BEFORE_READY = \"1\"\n");
    start_daemon();
    ContainerEvents events(engine().socket_path());
    auto res = get("/invoke/crash/hello");
    ASSERT_TRUE(res);
    EXPECT_EQ(res->status, 502);
    EXPECT_NE(res->body.find("crash"), std::string::npos) << res->body;
    EXPECT_NE(res->body.find("exited"), std::string::npos) << res->body;
    EXPECT_TRUE(events.wait_for("destroy", 1));
    EXPECT_EQ(instance_count("crash"), 0u);
}

TEST_F(DaemonTest, BootTimeoutIs504AndLeavesNothing) {
    write_function("silent", "boot-timeout = 1.5\n[container]\nimage = \"" + engine().image_name() +
                                 "\"\n[env]\nHELLO_NO_CALLBACK = \"1\"\n");
    start_daemon();
    ContainerEvents events(engine().socket_path());
    auto res = get("/invoke/silent/hello");
    ASSERT_TRUE(res);
    EXPECT_EQ(res->status, 504);
    EXPECT_NE(res->body.find("boot-timeout"), std::string::npos) << res->body;
    EXPECT_TRUE(events.wait_for("destroy", 1));
}

TEST_F(DaemonTest, BrokenFunctionAnswers500AndOthersKeepServing) {
    write_function("broken", "concurrent-requests = 0\n[container]\nimage = \"x\"\n");
    add_hello("hello");
    start_daemon();
    auto res = get("/invoke/broken/hello");
    ASSERT_TRUE(res);
    EXPECT_EQ(res->status, 500);
    EXPECT_NE(res->body.find("concurrent-requests"), std::string::npos) << res->body;
    EXPECT_NE(res->body.find("function.toml"), std::string::npos) << res->body;
    EXPECT_EQ(get("/invoke/hello/hello")->status, 200);
    res = get("/invoke/nobody/hello");
    ASSERT_TRUE(res);
    EXPECT_EQ(res->status, 404);
    EXPECT_NE(res->body.find("nobody"), std::string::npos);
    res = get("/invoke/..%2F..%2Fetc/passwd");
    ASSERT_TRUE(res);
    EXPECT_EQ(res->status, 404);

    // Fixing the file makes it invocable without a restart; a new directory appears too.
    add_hello("broken");
    EXPECT_EQ(get("/invoke/broken/hello")->status, 200);
    add_hello("newcomer");
    EXPECT_EQ(get("/invoke/newcomer/hello")->status, 200);
}

TEST_F(DaemonTest, OversizedBodyIs413) {
    add_hello("hello");
    start_daemon("max-body-size = 1024");
    auto res = daemon_->client().Post("/invoke/hello/echo", std::string(4096, 'x'), "text/plain");
    ASSERT_TRUE(res);
    EXPECT_EQ(res->status, 413);
    EXPECT_NE(res->body.find("1 KiB"), std::string::npos) << res->body;
    EXPECT_EQ(get("/invoke/hello/hello")->status, 200) << "daemon stopped serving";
}

TEST_F(DaemonTest, SigtermStopsAllContainers) {
    add_hello("a", "min-instances = 1");
    add_hello("b");
    start_daemon();
    ASSERT_EQ(get("/invoke/b/hello")->status, 200);
    ASSERT_EQ(get("/invoke/a/hello")->status, 200);
    EXPECT_EQ(engine().unifaas_containers().size(), 2u);
    expect_no_slot_in_use();
    EXPECT_EQ(daemon_->terminate(), 0) << daemon_->log();
    EXPECT_TRUE(engine().unifaas_containers().empty());
}

TEST_F(DaemonTest, RestartAfterKill9RemovesLeftovers) {
    add_hello("hello");
    start_daemon();
    ASSERT_EQ(get("/invoke/hello/hello")->status, 200);
    ASSERT_EQ(engine().unifaas_containers().size(), 1u);
    daemon_->kill9();
    EXPECT_EQ(engine().unifaas_containers().size(), 1u) << "a crashed daemon cannot clean up";
    start_daemon();
    EXPECT_TRUE(engine().unifaas_containers().empty()) << "restart did not remove leftovers";
    EXPECT_NE(daemon_->log().find("left behind"), std::string::npos);
    EXPECT_EQ(get("/invoke/hello/hello")->status, 200);
}

// The demo's arrangement: the invocation socket belongs to another network namespace than the
// daemon (activated in the host, daemon moved into the private one). It must serve requests and
// still stop promptly on SIGTERM.
TEST_F(DaemonTest, ServesAndStopsOnASocketFromAnotherNamespace) {
    add_hello("hello");
    int fd = -1;
    int port = 0;
    std::promise<void> done;
    std::promise<std::string> answer;
    std::thread other_ns([&] {
        ASSERT_EQ(unshare(CLONE_NEWNET), 0);
        ASSERT_EQ(system("ip link set lo up"), 0);
        std::tie(fd, port) = listen_ephemeral("127.0.0.1");
        done.set_value();
        // Requests come from this namespace, where the socket lives.
        httplib::Client c("127.0.0.1", port);
        c.set_read_timeout(std::chrono::seconds(30));
        auto res = c.Get("/invoke/hello/hello");
        answer.set_value(res ? res->body : "no answer: " + httplib::to_string(res.error()));
    });
    done.get_future().wait();
    DaemonProcess::Options o;
    o.registry = registry_;
    o.docker_socket = engine().socket_path();
    o.http_fd = fd;
    daemon_ = std::make_unique<DaemonProcess>(o);
    EXPECT_EQ(answer.get_future().get(), "hello from unifaas\n");
    other_ns.join();
    close(fd);
    auto started = std::chrono::steady_clock::now();
    EXPECT_EQ(daemon_->terminate(std::chrono::seconds(30)), 0) << daemon_->log();
    EXPECT_LT(std::chrono::steady_clock::now() - started, 15s) << "shutdown hung";
}

TEST_F(DaemonTest, MetricsCountInvocationsColdStartsAndInstances) {
    add_hello("hello", "concurrent-requests = 4");
    start_daemon();
    ASSERT_EQ(get("/invoke/hello/hello")->status, 200);
    ASSERT_EQ(get("/invoke/hello/nope")->status, 404);
    ASSERT_EQ(get("/invoke/hello/hello")->status, 200);
    auto res = get("/metrics");
    ASSERT_TRUE(res);
    EXPECT_EQ(res->status, 200);
    for (auto line : {"unifaas_invocations_total{function=\"hello\",code=\"200\"} 2\n",
                      "unifaas_invocations_total{function=\"hello\",code=\"404\"} 1\n",
                      "unifaas_cold_starts_total{function=\"hello\",kind=\"boot\"} 1\n",
                      "unifaas_cold_starts_total{function=\"hello\",kind=\"restore\"} 0\n",
                      "unifaas_cold_start_duration_seconds_count{function=\"hello\"} 1\n",
                      "unifaas_invocation_duration_seconds_count{function=\"hello\"} 3\n",
                      "unifaas_instances{function=\"hello\",state=\"ready\"} 1\n",
                      "unifaas_queue_length{function=\"hello\"} 0\n", "unifaas_tap_leases"}) {
        EXPECT_NE(res->body.find(line), std::string::npos) << line << "\n---\n" << res->body;
    }
}

TEST_F(DaemonTest, HealthzAnswers) {
    start_daemon();
    auto res = get("/healthz");
    ASSERT_TRUE(res);
    EXPECT_EQ(res->status, 200);
}

}  // namespace
}  // namespace unifaas::test
