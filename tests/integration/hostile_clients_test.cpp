// The real daemon with a real container function while clients misbehave: garbage, stalled heads
// (slowloris), truncated bodies, pipelining, resets, protocol errors, clients that leave while
// their request waits for a cold start, a queue slot or a slow instance. A well-behaved client
// must be served throughout, and nothing may leak: no slot in use, nothing in flight, no client
// connection left open in the daemon, a clean log and a clean exit.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include "container_events.h"
#include "daemon_process.h"
#include "docker_engine.h"
#include "registry_fixture.h"

namespace unifaas::test {

PrivateDockerEngine& engine();

namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

constexpr std::string_view kHello = "hello from unifaas\n";

// A response as the client saw it.
struct Response {
    int status = 0;
    std::string head;  // status line and header fields, up to and including the empty line
    std::string body;
    bool says_close() const { return head.find("\r\nConnection: close\r\n") != std::string::npos; }
};

// One TCP connection to the daemon, spoken to byte by byte.
class RawConnection {
  public:
    explicit RawConnection(int port) : fd_(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)) {
        if (fd_ < 0) {
            throw std::system_error(errno, std::generic_category(), "socket");
        }
        sockaddr_in addr{};
        addr.sin_family = AF_INET;
        addr.sin_port = htons(static_cast<std::uint16_t>(port));
        addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        if (connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
            int err = errno;
            ::close(fd_);
            throw std::system_error(err, std::generic_category(), "connect");
        }
        int one = 1;
        setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    }
    ~RawConnection() { close(); }
    RawConnection(const RawConnection&) = delete;
    RawConnection& operator=(const RawConnection&) = delete;

    bool send(std::string_view data) {
        while (!data.empty()) {
            ssize_t n = ::send(fd_, data.data(), data.size(), MSG_NOSIGNAL);
            if (n < 0 && errno == EINTR) {
                continue;
            }
            if (n <= 0) {
                error_ = std::string("send: ") + std::strerror(errno);
                return false;
            }
            data.remove_prefix(static_cast<std::size_t>(n));
        }
        return true;
    }

    // The next response (Content-Length framed, as every answer of the daemon is); nullopt on
    // timeout, end of stream or a malformed response (error() says which).
    std::optional<Response> read_response(std::chrono::milliseconds timeout = 15s) {
        auto deadline = Clock::now() + timeout;
        std::size_t end;
        while ((end = in_.find("\r\n\r\n")) == std::string::npos) {
            if (!fill(deadline)) {
                return std::nullopt;
            }
        }
        Response r;
        r.head = in_.substr(0, end + 4);
        if (r.head.size() < 12 || r.head.compare(0, 9, "HTTP/1.1 ") != 0) {
            error_ = "malformed status line: " + r.head.substr(0, 40);
            return std::nullopt;
        }
        r.status = std::stoi(r.head.substr(9, 3));
        std::size_t length = 0;
        constexpr std::string_view kLength = "\r\nContent-Length: ";
        if (auto at = r.head.find(kLength); at != std::string::npos) {
            length = std::stoul(r.head.substr(at + kLength.size()));
        } else if (r.status != 204 && r.status >= 200) {
            error_ = "no Content-Length in " + r.head;
            return std::nullopt;
        }
        while (in_.size() < end + 4 + length) {
            if (!fill(deadline)) {
                return std::nullopt;
            }
        }
        r.body = in_.substr(end + 4, length);
        in_.erase(0, end + 4 + length);
        return r;
    }

    // Waits until the daemon ends the connection (FIN or reset). Bytes that arrive meanwhile are
    // kept in unread(). False on timeout.
    bool await_close(std::chrono::milliseconds timeout = 10s) {
        auto deadline = Clock::now() + timeout;
        while (fill(deadline)) {
        }
        return closed_;
    }

    // True when for `period` nothing arrives and the connection stays open (a bounded wait to
    // show that something does not happen).
    bool stays_open_and_quiet(std::chrono::milliseconds period) {
        pollfd p{fd_, POLLIN, 0};
        return poll(&p, 1, static_cast<int>(period.count())) == 0;
    }

    void shutdown_write() { shutdown(fd_, SHUT_WR); }
    // Closes with a reset (SO_LINGER 0), as a crashing client or a middlebox would.
    void reset() {
        linger abortive{1, 0};
        setsockopt(fd_, SOL_SOCKET, SO_LINGER, &abortive, sizeof(abortive));
        close();
    }
    void close() {
        if (fd_ >= 0) {
            ::close(fd_);
            fd_ = -1;
        }
    }

    const std::string& unread() const { return in_; }
    const std::string& error() const { return error_; }

  private:
    // Reads once, waiting until the deadline. False on end of stream, error or timeout.
    bool fill(Clock::time_point deadline) {
        auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
        pollfd p{fd_, POLLIN, 0};
        if (left.count() <= 0 || poll(&p, 1, static_cast<int>(left.count())) <= 0) {
            error_ = "timed out";
            return false;
        }
        char buf[16384];
        ssize_t n = recv(fd_, buf, sizeof(buf), 0);
        if (n > 0) {
            in_.append(buf, static_cast<std::size_t>(n));
            return true;
        }
        closed_ = n == 0 || errno == ECONNRESET;
        error_ = n == 0 ? "closed by the daemon" : std::string("recv: ") + std::strerror(errno);
        return false;
    }

    int fd_;
    std::string in_;
    std::string error_;
    bool closed_ = false;
};

std::string get_request(std::string_view target, std::string_view extra_fields = "") {
    return "GET " + std::string(target) + " HTTP/1.1\r\nHost: test\r\n" +
           std::string(extra_fields) + "\r\n";
}

std::string post_request(std::string_view target, std::string_view body) {
    return "POST " + std::string(target) +
           " HTTP/1.1\r\nHost: test\r\nContent-Length: " + std::to_string(body.size()) +
           "\r\n\r\n" + std::string(body);
}

// Client connections the daemon holds open on its invocation port: its socket descriptors whose
// local port is `port`, other than the listener.
std::size_t open_client_connections(pid_t pid, int port) {
    std::vector<std::string> inodes;
    std::error_code ec;
    for (const auto& entry : fs::directory_iterator("/proc/" + std::to_string(pid) + "/fd", ec)) {
        auto target = fs::read_symlink(entry.path(), ec).string();
        if (!ec && target.starts_with("socket:[")) {
            inodes.push_back(target.substr(8, target.size() - 9));
        }
    }
    std::size_t count = 0;
    for (const char* table : {"tcp", "tcp6"}) {
        std::ifstream in("/proc/" + std::to_string(pid) + "/net/" + table);
        std::string line;
        std::getline(in, line);  // column titles
        while (std::getline(in, line)) {
            std::istringstream fields(line);
            std::string slot, local, remote, state, queues, timer, retransmits, uid, timeout, inode;
            fields >> slot >> local >> remote >> state >> queues >> timer >> retransmits >> uid >>
                timeout >> inode;
            auto colon = local.rfind(':');
            if (colon == std::string::npos || state == "0A") {  // 0A: listening
                continue;
            }
            int local_port = std::stoi(local.substr(colon + 1), nullptr, 16);
            if (local_port == port &&
                std::find(inodes.begin(), inodes.end(), inode) != inodes.end()) {
                ++count;
            }
        }
    }
    return count;
}

// Failures found on helper threads, reported on the test's thread (with their count).
class Problems {
  public:
    void add(std::string what) {
        std::lock_guard lk(mu_);
        if (list_.size() < 20) {
            list_.push_back(std::move(what));
        }
        ++count_;
    }
    std::size_t count() const {
        std::lock_guard lk(mu_);
        return count_;
    }
    std::string text() const {
        std::lock_guard lk(mu_);
        std::string out;
        for (const auto& p : list_) {
            out += "  " + p + "\n";
        }
        return out;
    }

  private:
    mutable std::mutex mu_;
    std::vector<std::string> list_;
    std::size_t count_ = 0;
};

// Runs a client's loop on a thread of its own; an exception (e.g. connect refused by a daemon that
// crashed) becomes a problem instead of ending the test binary.
std::thread client_thread(Problems& problems, std::string what, std::function<void()> body) {
    return std::thread([&problems, what = std::move(what), body = std::move(body)] {
        try {
            body();
        } catch (const std::exception& e) {
            problems.add(what + ": " + e.what());
        }
    });
}

class HostileClients : public RegistryTest {
  protected:
    void TearDown() override {
        if (daemon_ && daemon_->running()) {
            expect_nothing_held();
            int status = daemon_->terminate();
            EXPECT_EQ(status, 0) << "the daemon did not exit cleanly (negative: signal)";
            expect_clean_log(daemon_->log());
            if (HasFailure()) {
                std::cerr << "---- daemon log ----\n" << daemon_->log() << "---- end ----\n";
            }
        }
        daemon_.reset();
        // After a crash: remove what the daemon left, so the next test starts clean.
        bool leaked = !engine().unifaas_containers().empty();
        auto docker = engine().client();
        for (const auto& c : docker.list_containers("unifaas.instance")) {
            docker.remove_container(c.id);
        }
        EXPECT_FALSE(leaked) << "containers leaked";
        RegistryTest::TearDown();
    }

    int port() const { return daemon_->http_port(); }

    // A control request on a connection of its own, closed by the daemon after the answer, so
    // it never counts among the connections a test expects to be gone.
    Response control(const std::string& target) {
        try {
            RawConnection c(port());
            EXPECT_TRUE(c.send(get_request(target, "Connection: close\r\n"))) << c.error();
            auto res = c.read_response();
            EXPECT_TRUE(res) << target << ": " << c.error();
            EXPECT_TRUE(c.await_close()) << target << ": the daemon kept a Connection: close open";
            return res.value_or(Response{});
        } catch (const std::exception& e) {
            ADD_FAILURE() << target << ": " << e.what();
            return {};
        }
    }

    nlohmann::json status() {
        auto res = control("/status");
        EXPECT_EQ(res.status, 200) << res.body;
        return res.status == 200 ? nlohmann::json::parse(res.body) : nlohmann::json::object();
    }

    static const nlohmann::json* function_in(const nlohmann::json& status,
                                             const std::string& name) {
        if (!status.contains("functions")) {
            return nullptr;
        }
        for (const auto& f : status["functions"]) {
            if (f["name"] == name) {
                return &f;
            }
        }
        return nullptr;
    }

    static bool nothing_held(const nlohmann::json& s) {
        if (s.value("in_flight", -1) != 0) {
            return false;
        }
        for (const auto& f : s["functions"]) {
            if (f["queued"] != 0) {
                return false;
            }
            for (const auto& i : f["instances"]) {
                if (i["in_use"] != 0) {
                    return false;
                }
            }
        }
        return true;
    }

    // Polls /status until `done` holds for it (or the deadline passes); returns the last one.
    nlohmann::json status_when(const std::function<bool(const nlohmann::json&)>& done,
                               std::chrono::milliseconds timeout) {
        auto deadline = Clock::now() + timeout;
        auto s = status();
        while (!s.empty() && !done(s) && Clock::now() < deadline) {
            std::this_thread::sleep_for(20ms);
            s = status();
        }
        return s;
    }

    // No request in flight, none queued, no slot in use, no client connection left open.
    void expect_nothing_held() {
        auto s = status_when(nothing_held, 10s);
        EXPECT_TRUE(nothing_held(s)) << s.dump(2);
        auto deadline = Clock::now() + 10s;  // connections the daemon closed linger up to 2 s
        std::size_t open = open_client_connections(daemon_->pid(), port());
        while (open != 0 && Clock::now() < deadline) {
            std::this_thread::sleep_for(20ms);
            open = open_client_connections(daemon_->pid(), port());
        }
        EXPECT_EQ(open, 0u) << "client connections still open in the daemon";
    }

    static void expect_clean_log(const std::string& log) {
        std::istringstream lines(log);
        std::string line;
        while (std::getline(lines, line)) {
            bool bad = line.starts_with("critical:") || line.starts_with("error:") ||
                       line.find("internal error") != std::string::npos ||
                       line.find("terminate called") != std::string::npos ||
                       line.starts_with("warning: http:");
            EXPECT_FALSE(bad) << line;
        }
    }
};

// ---- 1. A good client among hostile ones -------------------------------------------------------

// Sends one request that the daemon must refuse by itself; expects `status`, a body containing
// `text`, and the connection closed after it.
void expect_refused(int port, const std::string& request, int status, const std::string& text,
                    Problems& problems, const std::string& what) {
    RawConnection c(port);
    if (!c.send(request)) {
        problems.add(what + ": " + c.error());
        return;
    }
    auto res = c.read_response();
    if (!res) {
        problems.add(what + ": no response: " + c.error());
        return;
    }
    if (res->status != status || res->body.find(text) == std::string::npos || !res->says_close()) {
        problems.add(what + ": got " + res->head + res->body);
        return;
    }
    if (!c.await_close()) {
        problems.add(what + ": connection not closed after the " + std::to_string(status));
    }
}

TEST_F(HostileClients, WellBehavedClientIsServedWhileOthersMisbehave) {
    add_hello("hello", "concurrent-requests = 8");
    start_daemon("max-body-size = 65536");
    ASSERT_EQ(control("/invoke/hello/hello").status, 200);  // warm

    // Slowloris: a request line and one field, then nothing, held open all along.
    std::vector<std::unique_ptr<RawConnection>> stalled;
    for (int i = 0; i < 64; ++i) {
        stalled.push_back(std::make_unique<RawConnection>(port()));
        ASSERT_TRUE(stalled.back()->send("GET /invoke/hello/hello HTTP/1.1\r\nHost: slow\r\n"));
    }

    // The good client: one keep-alive connection, every answer checked.
    std::atomic<bool> hostiles_done{false};
    std::atomic<int> good_served{0};
    Problems good_problems;
    std::thread good = client_thread(good_problems, "good client", [&] {
        RawConnection c(port());
        for (int i = 0; !hostiles_done.load() || i < 50; ++i) {
            bool echo = i % 2 == 1;
            std::string body = "good-" + std::to_string(i);
            std::string req =
                echo ? post_request("/invoke/hello/echo/good?i=" + std::to_string(i), body)
                     : get_request("/invoke/hello/hello");
            if (!c.send(req)) {
                good_problems.add("request " + std::to_string(i) + ": " + c.error());
                return;
            }
            auto res = c.read_response();
            if (!res) {
                good_problems.add("request " + std::to_string(i) + ": " + c.error());
                return;
            }
            std::string want = echo ? "path: /echo/good\nquery: i=" + std::to_string(i) + "\n"
                                    : std::string(kHello);
            bool body_ok = echo ? res->body.find(want) != std::string::npos &&
                                      res->body.find("body: " + body + "\n") != std::string::npos
                                : res->body == want;
            if (res->status != 200 || !body_ok || res->says_close()) {
                good_problems.add("request " + std::to_string(i) + ": " + res->head + res->body);
            }
            good_served.fetch_add(1);
        }
    });

    Problems problems;
    std::vector<std::thread> hostiles;
    // Random binary garbage, then close; with a first byte no method starts with, a 400.
    hostiles.push_back(client_thread(problems, "garbage", [&] {
        std::mt19937 rng(12345);
        for (int i = 0; i < 600; ++i) {
            std::string junk(1 + rng() % 4096, '\0');
            for (auto& ch : junk) {
                ch = static_cast<char>(rng());
            }
            if (i % 2 == 0) {
                RawConnection c(port());
                c.send(junk);  // the daemon may already have refused and closed: no check
                continue;
            }
            junk[0] = '\x01';
            expect_refused(port(), junk, 400, "bad request", problems, "garbage");
        }
    }));
    // Heads announcing big bodies, then closed (or reset) part way through the body.
    hostiles.push_back(client_thread(problems, "truncated bodies", [&] {
        for (int i = 0; i < 600; ++i) {
            RawConnection c(port());
            c.send("POST /invoke/hello/echo HTTP/1.1\r\nHost: t\r\nContent-Length: 60000\r\n\r\n" +
                   std::string(static_cast<std::size_t>(i * 97 % 30000), 'b'));
            if (i % 2 == 0) {
                c.reset();
            }
        }
    }));
    // Pipelining: many requests in one write, answered in order; the last one closes.
    hostiles.push_back(client_thread(problems, "pipelining", [&] {
        for (int round = 0; round < 60; ++round) {
            constexpr int kRequests = 24;
            std::string batch;
            for (int i = 0; i < kRequests; ++i) {
                std::string extra = i == kRequests - 1 ? "Connection: close\r\n" : "";
                if (i % 6 == 5) {
                    batch += get_request("/healthz", extra);
                } else if (i % 6 == 4) {
                    batch += post_request("/invoke/hello/echo/p" + std::to_string(i), "x");
                } else {
                    batch += get_request("/invoke/hello/echo/p" + std::to_string(i), extra);
                }
            }
            RawConnection c(port());
            if (!c.send(batch)) {
                problems.add("pipelined: " + c.error());
                continue;
            }
            for (int i = 0; i < kRequests; ++i) {
                auto res = c.read_response();
                std::string want = i % 6 == 5 ? "ok\n" : "path: /echo/p" + std::to_string(i) + "\n";
                if (!res || res->status != 200 || res->body.find(want) == std::string::npos) {
                    problems.add("pipelined round " + std::to_string(round) + " request " +
                                 std::to_string(i) + ": " +
                                 (res ? res->head + res->body : c.error()));
                    break;
                }
            }
            if (!c.await_close() || !c.unread().empty()) {
                problems.add("pipelined: not closed after Connection: close, or more bytes: " +
                             c.unread());
            }
        }
    }));
    // Resets: right after connecting, in the middle of a head, and with a whole request sent
    // (its answer then has nobody to go to).
    hostiles.push_back(client_thread(problems, "resets", [&] {
        for (int i = 0; i < 600; ++i) {
            RawConnection c(port());
            if (i % 3 == 1) {
                c.send("GET /invoke/hello/hel");
            } else if (i % 3 == 2) {
                c.send(get_request("/invoke/hello/sleep?ms=5"));
            }
            c.reset();
        }
    }));
    // Requests the daemon refuses by itself.
    hostiles.push_back(client_thread(problems, "refused requests", [&] {
        for (int i = 0; i < 40; ++i) {
            expect_refused(port(),
                           "GET /invoke/hello/hello HTTP/1.1\r\nHost: t\r\nX-Big: " +
                               std::string(70000, 'a') + "\r\n\r\n",
                           431, "too large", problems, "oversized head");
            expect_refused(port(), "GET /invoke/hello/hello\r\nHost: t\r\n\r\n", 400,
                           "malformed request line", problems, "request line without version");
            expect_refused(port(), "GET /invoke/hello/hello HTTP/1.1 x\r\n\r\n", 400,
                           "malformed HTTP version", problems, "request line with extra word");
            expect_refused(port(),
                           "POST /invoke/hello/echo HTTP/1.1\r\nHost: t\r\n"
                           "Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
                           400, "invalid chunk size", problems, "chunk size not hex");
            expect_refused(port(),
                           "POST /invoke/hello/echo HTTP/1.1\r\nHost: t\r\n"
                           "Transfer-Encoding: chunked\r\n\r\n5\r\nhelloXX\r\n0\r\n\r\n",
                           400, "chunk data not followed by CRLF", problems, "chunk too long");
            expect_refused(port(),
                           "POST /invoke/hello/echo HTTP/1.1\r\nHost: t\r\n"
                           "Transfer-Encoding: chunked\r\n\r\n-5\r\nhello\r\n0\r\n\r\n",
                           400, "invalid chunk size", problems, "negative chunk size");
            expect_refused(port(),
                           "POST /invoke/hello/echo HTTP/1.1\r\nHost: t\r\n"
                           "Content-Length: 100000\r\n\r\n",
                           413, "function hello: request body exceeds the limit of 64 KiB",
                           problems, "Content-Length over max-body-size");
            expect_refused(port(),
                           "POST /invoke/hello/echo HTTP/1.1\r\nHost: t\r\n"
                           "Transfer-Encoding: chunked\r\n\r\n8000\r\n" +
                               std::string(0x8000, 'c') + "\r\n8001\r\n",
                           413, "function hello: request body exceeds the limit of 64 KiB",
                           problems, "chunked body over max-body-size");
            expect_refused(port(),
                           "POST /invoke/hello/echo HTTP/1.1\r\nHost: t\r\n"
                           "Transfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\n",
                           413, "exceeds the limit", problems, "chunk size overflowing 64 bits");
        }
    }));
    for (auto& t : hostiles) {
        t.join();
    }
    hostiles_done.store(true);
    good.join();
    EXPECT_EQ(problems.count(), 0u) << problems.text();
    EXPECT_EQ(good_problems.count(), 0u) << good_problems.text();
    EXPECT_GE(good_served.load(), 50);

    // The stalled connections are still open, and each is served once its head is complete.
    for (std::size_t i = 0; i < stalled.size(); ++i) {
        auto& c = *stalled[i];
        ASSERT_TRUE(c.send("\r\n")) << "stalled connection " << i << ": " << c.error();
        auto res = c.read_response();
        ASSERT_TRUE(res) << "stalled connection " << i << ": " << c.error();
        EXPECT_EQ(res->status, 200) << res->body;
        EXPECT_EQ(res->body, kHello);
    }
    stalled.clear();

    EXPECT_EQ(control("/healthz").body, "ok\n");
    EXPECT_EQ(control("/invoke/hello/hello").body, kHello);
    expect_nothing_held();
}

// ---- 2. Clients that leave while their request waits for a cold start --------------------------

TEST_F(HostileClients, ClientGoneDuringColdStartLeaksNothing) {
    add_hello("lazy");
    add_hello("once", "single-use = true");
    start_daemon();
    ContainerEvents events(engine().socket_path());

    // A function kept warm afterwards: the client closes (FIN) while its container is created.
    {
        RawConnection c(port());
        ASSERT_TRUE(c.send(get_request("/invoke/lazy/hello")));
        ASSERT_TRUE(events.wait_for("create", 1)) << "no cold start";
        c.close();
    }
    auto ready_and_idle = [](const nlohmann::json& s) {
        const auto* f = function_in(s, "lazy");
        return f != nullptr && s.value("in_flight", -1) == 0 && (*f)["queued"] == 0 &&
               (*f)["instances"].size() == 1 && (*f)["instances"][0]["state"] == "ready" &&
               (*f)["instances"][0]["in_use"] == 0;
    };
    auto s = status_when(ready_and_idle, 30s);
    EXPECT_TRUE(ready_and_idle(s)) << s.dump(2);
    EXPECT_EQ(control("/invoke/lazy/hello").body, kHello);
    EXPECT_EQ(events.count("create"), 1u) << "the instance started for the gone client was lost";

    // A single-use function: the client resets while its container is created; the instance is
    // retired like after any request, and the next request gets a new one.
    {
        RawConnection c(port());
        ASSERT_TRUE(c.send(get_request("/invoke/once/hello")));
        ASSERT_TRUE(events.wait_for("create", 2)) << "no cold start";
        c.reset();
    }
    ASSERT_TRUE(events.wait_for("destroy", 1)) << "the single-use instance was never retired";
    auto once_gone = [](const nlohmann::json& s) {
        const auto* f = function_in(s, "once");
        return f != nullptr && (*f)["instances"].empty() && nothing_held(s);
    };
    s = status_when(once_gone, 10s);
    EXPECT_TRUE(once_gone(s)) << s.dump(2);
    EXPECT_EQ(control("/invoke/once/hello").body, kHello);
    EXPECT_TRUE(events.wait_for("destroy", 2));
}

// ---- 3. Clients that leave while their instance is slow or while they are queued ---------------

TEST_F(HostileClients, ClientGoneDuringSlowResponseGivesTheSlotBack) {
    add_hello("slow", "max-instances = 1\nqueue-timeout = 20");
    add_hello("hello");
    start_daemon();
    ASSERT_EQ(control("/invoke/slow/hello").body, kHello);
    ASSERT_EQ(control("/invoke/hello/hello").body, kHello);
    auto slow_instance = [](const nlohmann::json& s) -> nlohmann::json {
        const auto* f = function_in(s, "slow");
        return f != nullptr && (*f)["instances"].size() == 1 ? (*f)["instances"][0]
                                                             : nlohmann::json::object();
    };
    std::string instance_id = slow_instance(status()).value("id", "");
    ASSERT_FALSE(instance_id.empty());

    // The one slot is taken by a request the instance answers after 3 s; a second request
    // queues behind it. Both clients leave: one resets, the other closes (FIN). Either ends its
    // exchange at once: the queued request is dropped when the slot comes back.
    RawConnection sleeper(port());
    ASSERT_TRUE(sleeper.send(get_request("/invoke/slow/sleep?ms=3000")));
    auto busy = [&](const nlohmann::json& s) { return slow_instance(s).value("in_use", 0) == 1; };
    ASSERT_TRUE(busy(status_when(busy, 10s)));
    RawConnection queued(port());
    ASSERT_TRUE(queued.send(get_request("/invoke/slow/sleep?ms=200")));
    auto one_queued = [](const nlohmann::json& s) {
        const auto* f = function_in(s, "slow");
        return f != nullptr && (*f)["queued"] == 1;
    };
    ASSERT_TRUE(one_queued(status_when(one_queued, 10s)));
    auto reset_at = Clock::now();
    sleeper.reset();
    queued.close();

    // Others are served meanwhile, while the slot is still held.
    {
        RawConnection c(port());
        for (int i = 0; i < 20; ++i) {
            ASSERT_TRUE(c.send(get_request("/invoke/hello/hello")));
            auto res = c.read_response(5s);
            ASSERT_TRUE(res) << c.error();
            EXPECT_EQ(res->body, kHello);
        }
    }

    // The reset request's slot comes back without waiting for the instance's answer, the queued
    // request is not served in it, and the same instance serves the next client.
    auto idle = [&](const nlohmann::json& s) {
        const auto* f = function_in(s, "slow");
        return f != nullptr && (*f)["queued"] == 0 && slow_instance(s).value("in_use", 1) == 0 &&
               s.value("in_flight", -1) == 0;
    };
    auto s = status_when(idle, 15s);
    ASSERT_TRUE(idle(s)) << s.dump(2);
    EXPECT_LT(Clock::now() - reset_at, 2500ms)
        << "the slot was held until the instance answered a client that had reset";
    EXPECT_EQ(slow_instance(s)["id"], instance_id);
    EXPECT_EQ(control("/invoke/slow/hello").body, kHello);
    EXPECT_EQ(slow_instance(status())["id"], instance_id) << "the instance was replaced";
}

// Well-behaved clients, no hostile one: a request queued for a slot is handed the slot when the
// previous request's UpstreamCall is destroyed at the end of an event-loop batch. On the same
// loop, Gateway::invoke's acquire callback runs on_lease inline, during that release; an upstream
// call finishing at once then queued itself for release on the vector being cleared (memory
// corruption, usually SIGSEGV, in most runs). One loop makes the same-loop hand-over certain.
TEST_F(HostileClients, QueuedRequestHandedASlotOnTheSameLoopIsServed) {
    add_hello("one", "max-instances = 1\nqueue-timeout = 20");
    start_daemon("http-threads = 1");
    ASSERT_EQ(control("/invoke/one/hello").body, kHello);
    for (int round = 0; round < 200; ++round) {
        RawConnection holder(port());
        ASSERT_TRUE(holder.send(get_request("/invoke/one/sleep?ms=20")));
        RawConnection waiter(port());
        ASSERT_TRUE(waiter.send(get_request("/invoke/one/hello")));
        auto first = holder.read_response(5s);
        ASSERT_TRUE(first) << "round " << round << ": " << holder.error();
        auto second = waiter.read_response(5s);
        ASSERT_TRUE(second) << "round " << round << ": " << waiter.error();
        ASSERT_EQ(second->body, kHello) << "round " << round;
    }
}

// ---- 4. Clients that do not keep the connection -----------------------------------------------

TEST_F(HostileClients, Http10AndConnectionCloseClientsAreAnsweredThenClosed) {
    add_hello("hello", "concurrent-requests = 4");
    start_daemon();
    ASSERT_EQ(control("/invoke/hello/hello").body, kHello);

    struct Case {
        std::string what;
        std::string request;
        int status;
        std::string body;
    };
    std::vector<Case> cases = {
        {"HTTP/1.0 invocation", "GET /invoke/hello/hello HTTP/1.0\r\n\r\n", 200,
         std::string(kHello)},
        {"HTTP/1.0 POST", "POST /invoke/hello/echo HTTP/1.0\r\nContent-Length: 4\r\n\r\nten!", 200,
         "body: ten!\n"},
        {"HTTP/1.0 /healthz", "GET /healthz HTTP/1.0\r\n\r\n", 200, "ok\n"},
        {"HTTP/1.0 unknown function", "GET /invoke/nobody/x HTTP/1.0\r\n\r\n", 404, "nobody"},
        {"Connection: close invocation",
         get_request("/invoke/hello/hello", "Connection: close\r\n"), 200, std::string(kHello)},
        {"Connection: close error", get_request("/invoke/nobody/x", "Connection: close\r\n"), 404,
         "nobody"},
        {"HTTP/1.0 keep-alive, then close",
         "GET /invoke/hello/hello HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
         "GET /invoke/hello/hello HTTP/1.0\r\n\r\n",
         200, std::string(kHello)},
    };
    for (const auto& c : cases) {
        RawConnection conn(port());
        ASSERT_TRUE(conn.send(c.request)) << c.what;
        if (c.what.find("keep-alive") != std::string::npos) {
            auto first = conn.read_response();
            ASSERT_TRUE(first) << c.what << ": " << conn.error();
            EXPECT_FALSE(first->says_close()) << c.what << ": " << first->head;
        }
        auto res = conn.read_response();
        ASSERT_TRUE(res) << c.what << ": " << conn.error();
        EXPECT_EQ(res->status, c.status) << c.what << ": " << res->head << res->body;
        EXPECT_NE(res->body.find(c.body), std::string::npos) << c.what << ": " << res->body;
        EXPECT_TRUE(res->says_close()) << c.what << ": " << res->head;
        EXPECT_TRUE(conn.await_close()) << c.what << ": the daemon kept the connection open";
        EXPECT_EQ(conn.unread(), "") << c.what;
    }

    // HTTP/1.0 with keep-alive stays open after the answer (bounded wait).
    {
        RawConnection conn(port());
        ASSERT_TRUE(
            conn.send("GET /invoke/hello/hello HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"));
        auto res = conn.read_response();
        ASSERT_TRUE(res) << conn.error();
        EXPECT_EQ(res->body, kHello);
        EXPECT_TRUE(conn.stays_open_and_quiet(300ms)) << "closed a keep-alive HTTP/1.0 client";
        EXPECT_EQ(open_client_connections(daemon_->pid(), port()), 1u)
            << "the check for connections left open does not see this one";
    }

    // A client that half-closes after its request (printf … | nc): the daemon's own answers,
    // made at once, are still written; an invocation, still unanswered when the FIN is seen, is
    // abandoned as for a client that left (nginx's rule; Streaming tests the slot and the 499).
    for (const char* target : {"/healthz", "/status", "/invoke/nobody/x"}) {
        RawConnection conn(port());
        ASSERT_TRUE(conn.send(get_request(target)));
        conn.shutdown_write();
        auto res = conn.read_response();
        ASSERT_TRUE(res) << target << ": " << conn.error();
        EXPECT_NE(res->status, 0) << target;
        EXPECT_TRUE(conn.await_close()) << target;
    }
    {
        RawConnection conn(port());
        ASSERT_TRUE(conn.send(get_request("/invoke/hello/sleep?ms=2000")));
        auto sent_at = Clock::now();
        conn.shutdown_write();
        EXPECT_TRUE(conn.await_close()) << "a half-closed client's invocation was kept";
        EXPECT_LT(Clock::now() - sent_at, 1500ms) << "closed only after the instance answered";
        EXPECT_EQ(conn.unread(), "") << "answered a client that had left";
    }
}

// ---- 5. Heads announcing big bodies that never come --------------------------------------------

long rss_kib(pid_t pid) {
    std::ifstream in("/proc/" + std::to_string(pid) + "/status");
    std::string line;
    while (std::getline(in, line)) {
        if (line.starts_with("VmRSS:")) {
            return std::stol(line.substr(6));
        }
    }
    return -1;
}

// A client may announce a body up to max-body-size and then send nothing: each such connection
// must not cost the daemon memory in proportion to what was announced (32 heads of about 100 bytes
// must not take 192 MiB; max-connections of them would take 24 GiB). The 100 Continue the daemon
// sends once it waits for the body tells that it has read (and made room for) the head.
// (It did: the server reserved head + Content-Length at once, with a zeroing allocation.)
TEST_F(HostileClients, StalledBodiesDoNotCostTheirAnnouncedSize) {
    start_daemon();  // max-body-size 6 MiB (the default)
    ASSERT_EQ(control("/healthz").status, 200);
    long before = rss_kib(daemon_->pid());
    ASSERT_GT(before, 0);
    constexpr int kConnections = 32;
    std::vector<std::unique_ptr<RawConnection>> stalled;
    for (int i = 0; i < kConnections; ++i) {
        stalled.push_back(std::make_unique<RawConnection>(port()));
        auto& c = *stalled.back();
        ASSERT_TRUE(
            c.send("POST /invoke/hello/echo HTTP/1.1\r\nHost: t\r\n"
                   "Expect: 100-continue\r\nContent-Length: 6291456\r\n\r\n"));
        auto interim = c.read_response();
        ASSERT_TRUE(interim) << c.error();
        ASSERT_EQ(interim->status, 100) << interim->head;
    }
    long grown_mib = (rss_kib(daemon_->pid()) - before) / 1024;
    EXPECT_LT(grown_mib, 32) << kConnections
                             << " stalled heads announcing 6 MiB bodies grew the daemon's RSS by "
                             << grown_mib << " MiB";
    stalled.clear();
    EXPECT_EQ(control("/healthz").body, "ok\n");
}

}  // namespace
}  // namespace unifaas::test
