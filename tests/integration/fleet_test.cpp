// A node behind a load balancer: the agent-check protocol on a real socket, and the daemon's
// drain on SIGTERM (health 503 and agent "drain" while requests are still served, then exit).
// The whole fleet behind a real HAProxy is tests/fleet/run.sh.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>
#include <nlohmann/json.hpp>

#include <atomic>
#include <chrono>
#include <future>
#include <string>
#include <thread>

#include "fleet/agent_server.h"
#include "gateway/listening_server.h"
#include "registry_fixture.h"

namespace unifaas::test {

PrivateDockerEngine& engine();

namespace {

using namespace std::chrono_literals;

// Connects to 127.0.0.1:port, optionally sends `send` (HAProxy's agent-send), reads until the
// peer closes. Empty on a connection failure.
std::string agent_exchange(int port, const std::string& send = "") {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in sin{};
    sin.sin_family = AF_INET;
    sin.sin_port = htons(static_cast<std::uint16_t>(port));
    inet_pton(AF_INET, "127.0.0.1", &sin.sin_addr);
    if (connect(fd, reinterpret_cast<sockaddr*>(&sin), sizeof(sin)) != 0) {
        close(fd);
        return "";
    }
    if (!send.empty()) {
        EXPECT_EQ(write(fd, send.data(), send.size()), static_cast<ssize_t>(send.size()));
    }
    timeval tv{5, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    std::string out;
    char buf[256];
    ssize_t n;
    while ((n = read(fd, buf, sizeof(buf))) > 0) {
        out.append(buf, static_cast<std::size_t>(n));
    }
    EXPECT_EQ(n, 0) << "the agent must close the connection with a FIN after its line";
    close(fd);
    return out;
}

TEST(AgentServer, AnswersOneLinePerConnectionAndCloses) {
    int fd = bind_listener("127.0.0.1", 0);
    int port = local_port(fd);
    std::atomic<int> weight{100};
    {
        AgentServer agent(fd, [&] { return "up ready " + std::to_string(weight.load()) + "%\n"; });
        EXPECT_EQ(agent_exchange(port), "up ready 100%\n");
        weight = 40;
        EXPECT_EQ(agent_exchange(port), "up ready 40%\n") << "computed per connection";
        // HAProxy's agent-send: the line is read away, the answer still arrives whole.
        EXPECT_EQ(agent_exchange(port, "backend/node-a\n"), "up ready 40%\n");
        // Checks in parallel (HAProxy checks each server on its own schedule).
        std::vector<std::future<std::string>> answers;
        for (int i = 0; i < 16; ++i) {
            answers.push_back(
                std::async(std::launch::async, [port] { return agent_exchange(port); }));
        }
        for (auto& a : answers) {
            EXPECT_EQ(a.get(), "up ready 40%\n");
        }
    }
    EXPECT_EQ(agent_exchange(port), "") << "the port is closed with the server";
}

class FleetDaemonTest : public RegistryTest {
  protected:
    // A free port on 127.0.0.1 for agent-listen (the test runs in its own network namespace).
    static int free_port() {
        auto [fd, port] = listen_ephemeral("127.0.0.1");
        close(fd);
        return port;
    }

    httplib::Result get(const std::string& path) { return daemon_->client().Get(path); }
};

TEST_F(FleetDaemonTest, NodeNameAndAgentReportCapacity) {
    add_hello("slow", "max-instances = 1");
    int agent_port = free_port();
    start_daemon(
        "node-name = \"node-a\"\nagent-listen = \"127.0.0.1:" + std::to_string(agent_port) + "\"");
    auto status = nlohmann::json::parse(get("/status")->body);
    EXPECT_EQ(status["node"], "node-a");
    EXPECT_EQ(status["state"], "serving");
    auto metrics = get("/metrics")->body;
    EXPECT_NE(metrics.find("unifaas_node_info{node=\"node-a\",version=\""), std::string::npos)
        << metrics;
    EXPECT_EQ(agent_exchange(agent_port), "up ready 100%\n");

    // The function's only slot taken: the node is full.
    auto busy = std::async(std::launch::async,
                           [&] { return daemon_->client().Get("/invoke/slow/sleep?ms=3000"); });
    std::string line;
    for (int i = 0; i < 200 && line != "up ready 1%\n"; ++i) {
        std::this_thread::sleep_for(50ms);  // nothing announces the slot being taken
        line = agent_exchange(agent_port);
    }
    EXPECT_EQ(line, "up ready 1%\n");
    auto res = busy.get();
    ASSERT_TRUE(res);
    EXPECT_EQ(res->status, 200);
    EXPECT_EQ(agent_exchange(agent_port), "up ready 100%\n") << "the slot is free again";
}

// SIGTERM: /healthz 503 and agent "drain" for drain-delay while invocations are still served;
// then the listener closes, requests in flight finish, exit 0.
TEST_F(FleetDaemonTest, SigtermDrainsBeforeTheListenerCloses) {
    add_hello("hello", "concurrent-requests = 4");
    int agent_port = free_port();
    start_daemon("drain-delay = 3\nagent-listen = \"127.0.0.1:" + std::to_string(agent_port) +
                 "\"");
    ASSERT_EQ(get("/invoke/hello/hello")->status, 200);
    ASSERT_EQ(get("/healthz")->status, 200);
    // In flight across the whole drain: it must finish.
    auto long_call = std::async(
        std::launch::async, [&] { return daemon_->client().Get("/invoke/hello/sleep?ms=3500"); });
    std::this_thread::sleep_for(200ms);  // let it reach the instance (nothing announces that)

    ASSERT_EQ(::kill(daemon_->pid(), SIGTERM), 0);
    int health = 200;
    for (int i = 0; i < 100 && health != 503; ++i) {
        auto h = get("/healthz");  // a new connection each time: the listener is still open
        ASSERT_TRUE(h) << "the listener closed before the drain delay\n" << daemon_->log();
        health = h->status;
        if (health != 503) {
            std::this_thread::sleep_for(10ms);  // the signal is taken asynchronously
        }
    }
    ASSERT_EQ(health, 503);
    EXPECT_EQ(get("/healthz")->body, "draining\n");
    EXPECT_EQ(agent_exchange(agent_port), "drain\n");
    auto during = get("/invoke/hello/hello");
    ASSERT_TRUE(during) << "a new request during the drain delay was refused";
    EXPECT_EQ(during->status, 200);

    auto finished = long_call.get();
    ASSERT_TRUE(finished) << daemon_->log();
    EXPECT_EQ(finished->status, 200);
    EXPECT_EQ(daemon_->terminate(), 0) << daemon_->log();  // already going: waits for the exit
    EXPECT_NE(daemon_->log().find("draining for 3.0 s"), std::string::npos) << daemon_->log();
}

}  // namespace
}  // namespace unifaas::test
