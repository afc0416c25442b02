// DockerBackend against the private engine: real containers of the example image, readiness
// callbacks to a small in-test server on the bridge gateway, requests to the container IPs.
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <future>
#include <iostream>
#include <mutex>
#include <optional>
#include <random>
#include <thread>

#include <gtest/gtest.h>
#include <httplib.h>

#include "docker_engine.h"
#include "gateway/listening_server.h"
#include "sandbox/docker_backend.h"
#include "sandbox/docker_client.h"

namespace unifaas::test {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

double ms_between(Clock::time_point from, Clock::time_point to) {
    return std::chrono::duration<double, std::milli>(to - from).count();
}

std::string random_hex(std::size_t n) {
    static std::mt19937_64 rng{std::random_device{}()};
    static std::mutex mutex;
    std::lock_guard lock(mutex);
    std::string out;
    for (std::size_t i = 0; i < n; ++i) {
        out += "0123456789abcdef"[rng() % 16];
    }
    return out;
}

// Receives GET /ready/<token> on 0.0.0.0:<ephemeral port> (inside the test namespace).
class CallbackServer {
  public:
    struct Call {
        std::string remote_addr;
        Clock::time_point at;
    };

    CallbackServer() {
        server_.Get(R"(/ready/([0-9a-zA-Z]+))",
                    [this](const httplib::Request& req, httplib::Response& res) {
                        {
                            std::lock_guard lock(mutex_);
                            calls_[req.matches[1]] = Call{req.remote_addr, Clock::now()};
                        }
                        cv_.notify_all();
                        res.set_content("ok\n", "text/plain");
                    });
        // The socket listens already: callbacks queue in its backlog until the loop accepts.
        int fd = bind_listener("0.0.0.0", 0);
        port_ = local_port(fd);
        server_.serve(fd);
    }
    // (httplib's own stop() is a no-op until its loop runs; ListeningServer's is not.)
    ~CallbackServer() {
        server_.stop_accepting();
        server_.join();
    }

    std::uint16_t port() const { return static_cast<std::uint16_t>(port_); }

    std::optional<Call> wait_for(const std::string& token, std::chrono::milliseconds timeout) {
        std::unique_lock lock(mutex_);
        if (!cv_.wait_for(lock, timeout, [&] { return calls_.count(token) != 0; })) {
            return std::nullopt;
        }
        return calls_.at(token);
    }

  private:
    ListeningServer server_{4};
    int port_ = -1;
    std::mutex mutex_;
    std::condition_variable cv_;
    std::map<std::string, Call> calls_;
};

// Collects on_exit reasons of one instance.
struct ExitRecorder {
    std::mutex mutex;
    std::condition_variable cv;
    std::vector<std::string> reasons;

    std::function<void(const std::string&)> callback() {
        return [this](const std::string& reason) {
            {
                std::lock_guard lock(mutex);
                reasons.push_back(reason);
            }
            cv.notify_all();
        };
    }
    std::optional<std::string> wait(std::chrono::milliseconds timeout) {
        std::unique_lock lock(mutex);
        if (!cv.wait_for(lock, timeout, [&] { return !reasons.empty(); })) {
            return std::nullopt;
        }
        return reasons.front();
    }
    std::size_t count() {
        std::lock_guard lock(mutex);
        return reasons.size();
    }
};

std::shared_ptr<FunctionSpec> hello_spec(const std::string& image = engine().image_name()) {
    auto spec = std::make_shared<FunctionSpec>();
    spec->name = "hello";
    spec->concurrent_requests = 4;
    ContainerSpec container;
    container.image = image;
    container.memory_mib = 64;
    spec->sandbox = container;
    return spec;
}

struct Started {
    std::unique_ptr<Instance> instance;
    std::string token;
};

class DockerBackendTest : public ::testing::Test {
  protected:
    void SetUp() override {
        ASSERT_TRUE(engine().unifaas_containers().empty()) << "containers left by an earlier test";
        backend_ = std::make_unique<DockerBackend>(engine().socket_path(), callbacks_.port());
    }
    void TearDown() override {
        backend_.reset();
        EXPECT_EQ(engine().unifaas_containers(), std::vector<std::string>{})
            << "unifaas containers left behind";
    }

    InstanceContext context(std::shared_ptr<const FunctionSpec> spec, const std::string& token,
                            std::function<void(const std::string&)> on_exit = {}) {
        InstanceContext ctx;
        ctx.instance_id = random_hex(12);
        ctx.spec = std::move(spec);
        ctx.callback_path = "/ready/" + token;
        ctx.on_exit = std::move(on_exit);
        return ctx;
    }

    Started start(std::shared_ptr<const FunctionSpec> spec,
                  std::function<void(const std::string&)> on_exit = {}) {
        Started started;
        started.token = random_hex(24);
        started.instance = backend_->start(context(std::move(spec), started.token, on_exit));
        return started;
    }

    // Waits for the instance's callback and checks it came from the container's own address.
    void expect_ready(const Started& started) {
        auto call = callbacks_.wait_for(started.token, 20s);
        ASSERT_TRUE(call) << "no readiness callback within 20 s; output:\n"
                          << started.instance->output_tail();
        EXPECT_EQ(call->remote_addr, started.instance->address());
    }

    static std::string get(const Instance& instance, const std::string& path) {
        httplib::Client cli(instance.address(), instance.port());
        cli.set_connection_timeout(5);
        cli.set_read_timeout(5);
        auto res = cli.Get(path.c_str());
        if (!res) {
            return "error: " + httplib::to_string(res.error());
        }
        return std::to_string(res->status) + " " + res->body;
    }

    CallbackServer callbacks_;
    std::unique_ptr<DockerBackend> backend_;
};

TEST_F(DockerBackendTest, StartsCallsBackServesAndIsRemoved) {
    auto begin = Clock::now();
    auto started = start(hello_spec());
    auto returned = Clock::now();
    ASSERT_NO_FATAL_FAILURE(expect_ready(started));
    auto call = callbacks_.wait_for(started.token, 0ms);
    std::cout << "[ timing ] start() returned after " << ms_between(begin, returned)
              << " ms; callback after " << ms_between(begin, call->at) << " ms\n";

    const Instance& instance = *started.instance;
    EXPECT_EQ(instance.port(), 8080);
    EXPECT_EQ(instance.describe().rfind("container ", 0), 0u) << instance.describe();
    EXPECT_EQ(instance.describe().size(), std::string("container ").size() + 12);
    EXPECT_EQ(get(instance, "/hello"), "200 hello from unifaas\n");
    EXPECT_EQ(get(instance, "/nope").substr(0, 4), "404 ");
    std::string echo = get(instance, "/echo/a/b?x=1&y=2");
    EXPECT_NE(echo.find("path: /echo/a/b\n"), std::string::npos) << echo;
    EXPECT_NE(echo.find("query: x=1&y=2\n"), std::string::npos) << echo;
    EXPECT_EQ(get(instance, "/sleep?ms=20"), "200 slept 20 ms\n");
    EXPECT_NE(instance.output_tail().find("hello: listening on 0.0.0.0:8080"), std::string::npos)
        << instance.output_tail();

    auto containers = engine().unifaas_containers();
    ASSERT_EQ(containers.size(), 1u);
    EXPECT_EQ(containers[0].rfind("unifaas-hello-", 0), 0u) << containers[0];

    started.instance.reset();
    EXPECT_TRUE(engine().unifaas_containers().empty());
}

TEST_F(DockerBackendTest, PassesEnvironmentAndCallbackArgument) {
    auto spec = hello_spec();
    spec->env["GREETING"] = "hi";
    spec->env["UNIFAAS_INSTANCE"] = "spoofed";  // the daemon's own variables win
    auto started = start(spec);
    ASSERT_NO_FATAL_FAILURE(expect_ready(started));
    auto info = engine().client().inspect_container(started.instance->describe().substr(10));
    EXPECT_EQ(info.labels["unifaas.function"], "hello");
    EXPECT_EQ(info.labels["unifaas.instance"].size(), 12u);
    // The echo route prints UNIFAAS_INSTANCE: the real instance id, not the spec's value.
    std::string echo = get(*started.instance, "/echo");
    EXPECT_NE(echo.find("instance: " + info.labels["unifaas.instance"] + "\n"), std::string::npos)
        << echo;
}

TEST_F(DockerBackendTest, MissingImageIs500NamingIt) {
    try {
        start(hello_spec("no-such-image"));
        FAIL() << "start() succeeded";
    } catch (const SandboxError& e) {
        EXPECT_EQ(e.http_status(), 500);
        EXPECT_NE(std::string(e.what()).find("image \"no-such-image\" not found"),
                  std::string::npos)
            << e.what();
    }
}

TEST_F(DockerBackendTest, UnknownRuntimeIs500NamingIt) {
    auto spec = hello_spec();
    std::get<ContainerSpec>(spec->sandbox).runtime = "no-such-runtime";
    try {
        start(spec);
        FAIL() << "start() succeeded";
    } catch (const SandboxError& e) {
        EXPECT_EQ(e.http_status(), 500);
        EXPECT_NE(std::string(e.what()).find("container runtime \"no-such-runtime\" is not known"),
                  std::string::npos)
            << e.what();
    }
}

// The container exits at once. Depending on timing start() sees it (502 with status and output)
// or the instance reports it through on_exit; either way exactly once and nothing is left.
TEST_F(DockerBackendTest, ExitBeforeReadyIsReportedOnce) {
    auto spec = hello_spec();
    spec->env["HELLO_EXIT_BEFORE_READY"] = "1";
    int thrown = 0;
    int reported = 0;
    for (int round = 0; round < 3; ++round) {
        ExitRecorder exits;
        try {
            auto started = start(spec, exits.callback());
            auto reason = exits.wait(10s);
            ASSERT_TRUE(reason) << "no on_exit within 10 s";
            EXPECT_EQ(*reason, "container exited with status 3");
            EXPECT_NE(started.instance->output_tail().find("HELLO_EXIT_BEFORE_READY"),
                      std::string::npos);
            ++reported;
        } catch (const SandboxError& e) {
            EXPECT_EQ(e.http_status(), 502);
            std::string what = e.what();
            EXPECT_NE(what.find("container exited before it was ready (status 3)"),
                      std::string::npos)
                << what;
            EXPECT_NE(what.find("HELLO_EXIT_BEFORE_READY=1, exiting with status 3"),
                      std::string::npos)
                << what;
            ++thrown;
        }
        EXPECT_LE(exits.count(), 1u);
        EXPECT_TRUE(engine().unifaas_containers().empty());
    }
    std::cout << "[ info   ] exit before ready: " << thrown << "x from start(), " << reported
              << "x via on_exit\n";
}

TEST_F(DockerBackendTest, ContainerKilledFromOutsideCallsOnExit) {
    ExitRecorder exits;
    auto started = start(hello_spec(), exits.callback());
    ASSERT_NO_FATAL_FAILURE(expect_ready(started));
    httplib::Client cli(engine().socket_path());
    cli.set_address_family(AF_UNIX);
    std::string id = started.instance->describe().substr(10);
    auto res = cli.Post(("/containers/" + id + "/kill").c_str(), {{"Host", "localhost"}}, "",
                        "text/plain");
    ASSERT_TRUE(res);
    ASSERT_EQ(res->status, 204) << res->body;
    auto reason = exits.wait(10s);
    ASSERT_TRUE(reason);
    EXPECT_EQ(*reason, "container exited with status 137");
    started.instance.reset();
    EXPECT_EQ(exits.count(), 1u);
}

TEST_F(DockerBackendTest, DestroyingAnInstanceDoesNotReportAnExit) {
    ExitRecorder exits;
    auto started = start(hello_spec(), exits.callback());
    ASSERT_NO_FATAL_FAILURE(expect_ready(started));
    started.instance.reset();
    // A die event for our own removal would arrive within milliseconds; give it a moment.
    EXPECT_FALSE(exits.wait(500ms));
}

// dockerd stops the container while going down and the event stream breaks: the exit still
// reaches on_exit exactly once (from the last events, or from the check after reconnecting),
// and the backend starts containers again once the engine is back.
TEST_F(DockerBackendTest, EngineRestartReportsExitAndRecovers) {
    ExitRecorder exits;
    auto started = start(hello_spec(), exits.callback());
    ASSERT_NO_FATAL_FAILURE(expect_ready(started));
    auto begin = Clock::now();
    engine().restart_dockerd();
    std::cout << "[ timing ] dockerd restart took " << ms_between(begin, Clock::now()) << " ms\n";
    auto reason = exits.wait(20s);
    ASSERT_TRUE(reason) << "no on_exit within 20 s of the engine restart";
    EXPECT_EQ(*reason, "container exited with status 0");  // hello exits 0 on SIGTERM

    auto again = start(hello_spec());
    ASSERT_NO_FATAL_FAILURE(expect_ready(again));
    EXPECT_EQ(get(*again.instance, "/hello"), "200 hello from unifaas\n");
    started.instance.reset();
    EXPECT_EQ(exits.count(), 1u);
}

TEST_F(DockerBackendTest, ConcurrentStarts) {
    constexpr int kCount = 4;
    auto spec = hello_spec();
    auto begin = Clock::now();
    std::vector<std::future<Started>> futures;
    for (int i = 0; i < kCount; ++i) {
        futures.push_back(std::async(std::launch::async, [&] { return start(spec); }));
    }
    std::vector<Started> started;
    for (auto& future : futures) {
        started.push_back(future.get());
    }
    for (const auto& one : started) {
        ASSERT_NO_FATAL_FAILURE(expect_ready(one));
        EXPECT_EQ(get(*one.instance, "/hello"), "200 hello from unifaas\n");
    }
    std::cout << "[ timing ] " << kCount << " concurrent starts ready after "
              << ms_between(begin, Clock::now()) << " ms\n";
    EXPECT_EQ(engine().unifaas_containers().size(), static_cast<std::size_t>(kCount));
}

TEST_F(DockerBackendTest, RemoveLeftoversRemovesLabelledContainers) {
    auto client = engine().client();
    nlohmann::json config = {{"Image", engine().image_name()},
                             {"Env", {"HELLO_NO_CALLBACK=1"}},
                             {"Labels", {{"unifaas.instance", "leftover0001"}}}};
    std::string running = client.create_container("unifaas-leftover-1", config);
    client.start_container(running);
    client.create_container("unifaas-leftover-2", config);  // created, never started
    ASSERT_EQ(engine().unifaas_containers().size(), 2u);

    EXPECT_EQ(backend_->remove_leftovers(), 2u);
    EXPECT_TRUE(engine().unifaas_containers().empty());
    EXPECT_EQ(backend_->remove_leftovers(), 0u);
}

TEST_F(DockerBackendTest, RemoveLeftoversSparesLiveInstances) {
    auto started = start(hello_spec());
    EXPECT_EQ(backend_->remove_leftovers(), 0u);
    EXPECT_EQ(engine().unifaas_containers().size(), 1u);
}

TEST_F(DockerBackendTest, CrunRuntime) {
    if (!engine().enable_crun()) {
        GTEST_SKIP() << "crun is not installed";
    }
    auto spec = hello_spec();
    std::get<ContainerSpec>(spec->sandbox).runtime = "crun";
    auto begin = Clock::now();
    auto started = start(spec);
    ASSERT_NO_FATAL_FAILURE(expect_ready(started));
    std::cout << "[ timing ] crun: callback after "
              << ms_between(begin, callbacks_.wait_for(started.token, 0ms)->at) << " ms\n";
    EXPECT_EQ(get(*started.instance, "/hello"), "200 hello from unifaas\n");
}

TEST(DockerBackendStandalone, UnreachableEngineIs503) {
    DockerBackend backend("/nonexistent/docker.sock", 8124);
    InstanceContext ctx;
    ctx.instance_id = "0123456789ab";
    ctx.spec = hello_spec("unifaas-hello");
    ctx.callback_path = "/ready/x";
    try {
        backend.start(ctx);
        FAIL() << "start() succeeded";
    } catch (const SandboxError& e) {
        EXPECT_EQ(e.http_status(), 503);
        EXPECT_EQ(std::string(e.what()).rfind(
                      "docker engine unreachable at /nonexistent/docker.sock: ", 0),
                  0u)
            << e.what();
    }
    EXPECT_EQ(backend.remove_leftovers(), 0u);
}

TEST(DockerBackendStandalone, ChoosesSocketFromDockerHost) {
    EXPECT_EQ(choose_docker_socket("/var/run/docker.sock", nullptr), "/var/run/docker.sock");
    EXPECT_EQ(choose_docker_socket("/var/run/docker.sock", "unix:///tmp/d.sock"), "/tmp/d.sock");
    EXPECT_EQ(choose_docker_socket("/srv/docker.sock", "unix:///tmp/d.sock"), "/srv/docker.sock");
    EXPECT_EQ(choose_docker_socket("/var/run/docker.sock", "tcp://10.0.0.1:2375"),
              "/var/run/docker.sock");
    EXPECT_EQ(choose_docker_socket("/var/run/docker.sock", "unix://"), "/var/run/docker.sock");
}

TEST(DockerClientStandalone, DemultiplexesLogFrames) {
    std::string raw;
    auto frame = [&](char stream, const std::string& text) {
        raw += stream;
        raw += std::string(3, '\0');
        auto n = static_cast<std::uint32_t>(text.size());
        raw += static_cast<char>(n >> 24);
        raw += static_cast<char>(n >> 16);
        raw += static_cast<char>(n >> 8);
        raw += static_cast<char>(n);
        raw += text;
    };
    frame(1, "out line\n");
    frame(2, "err line\n");
    EXPECT_EQ(docker::demultiplex_log_stream(raw), "out line\nerr line\n");
    EXPECT_EQ(docker::demultiplex_log_stream("plain tty text\n"), "plain tty text\n");
}

}  // namespace
}  // namespace unifaas::test
