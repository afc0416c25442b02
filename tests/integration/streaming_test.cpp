// Streaming through the real daemon with the example function in real containers: server-sent
// events that reach the client one by one, a 1 GiB download through a reader that keeps stopping
// (the daemon's memory stays bounded), chunked bodies both ways, bodiless answers, pipelining
// after a stream, clients that leave mid-stream or before the answer, and the idle limit that
// cuts a stalled stream off.
#include <arpa/inet.h>
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>
#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <iterator>
#include <optional>
#include <string>
#include <system_error>
#include <thread>

#include "daemon_process.h"
#include "docker_engine.h"
#include "registry_fixture.h"

namespace unifaas::test {

PrivateDockerEngine& engine();

namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

constexpr std::size_t kMiB = 1024 * 1024;

// A client connection read piece by piece, so a test sees exactly when bytes arrive.
class StreamClient {
  public:
    explicit StreamClient(int port, int rcvbuf = 0) {
        fd_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd_ < 0) {
            throw std::system_error(errno, std::generic_category(), "socket");
        }
        if (rcvbuf > 0) {  // before connect: the window is negotiated then
            setsockopt(fd_, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf));
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
    ~StreamClient() {
        if (fd_ >= 0) {
            ::close(fd_);
        }
    }
    StreamClient(const StreamClient&) = delete;
    StreamClient& operator=(const StreamClient&) = delete;

    bool send(std::string_view data) {
        while (!data.empty()) {
            ssize_t n = ::send(fd_, data.data(), data.size(), MSG_NOSIGNAL);
            if (n <= 0) {
                return false;
            }
            data.remove_prefix(static_cast<std::size_t>(n));
        }
        return true;
    }

    // The response head (status line to the empty line); "" on timeout or end of stream.
    std::string read_head(std::chrono::milliseconds timeout = 30s) {
        auto deadline = Clock::now() + timeout;
        std::size_t end;
        while ((end = in_.find("\r\n\r\n")) == std::string::npos) {
            if (!fill(deadline)) {
                return {};
            }
        }
        std::string head = in_.substr(0, end + 4);
        in_.erase(0, end + 4);
        return head;
    }

    // Exactly n body bytes; nullopt when the connection ended (or timed out) first.
    std::optional<std::string> read_exact(std::size_t n, std::chrono::milliseconds timeout = 30s) {
        auto deadline = Clock::now() + timeout;
        while (in_.size() < n) {
            if (!fill(deadline)) {
                return std::nullopt;
            }
        }
        std::string out = in_.substr(0, n);
        in_.erase(0, n);
        return out;
    }

    // One chunk's data ("" for the last chunk, then its trailer's empty line is consumed too);
    // nullopt on a malformed chunk, timeout or end of stream.
    std::optional<std::string> read_chunk(std::chrono::milliseconds timeout = 30s) {
        auto deadline = Clock::now() + timeout;
        std::size_t eol;
        while ((eol = in_.find("\r\n")) == std::string::npos) {
            if (!fill(deadline)) {
                return std::nullopt;
            }
        }
        std::size_t size = std::stoul(in_.substr(0, eol), nullptr, 16);
        in_.erase(0, eol + 2);
        auto data = read_exact(size + 2, timeout);
        if (!data || data->substr(size) != "\r\n") {
            return std::nullopt;
        }
        data->resize(size);
        return data;
    }

    // Reads a chunked body to its end.
    std::optional<std::string> read_chunked_body() {
        std::string body;
        while (true) {
            auto chunk = read_chunk();
            if (!chunk) {
                return std::nullopt;
            }
            if (chunk->empty()) {
                return body;
            }
            body += *chunk;
        }
    }

    // Everything until the daemon closes; nullopt on timeout.
    std::optional<std::string> read_to_close(std::chrono::milliseconds timeout = 30s) {
        auto deadline = Clock::now() + timeout;
        while (!closed_) {
            if (!fill(deadline) && !closed_) {
                return std::nullopt;
            }
        }
        return std::exchange(in_, {});
    }

    // Reads and drops n bytes in reads of at most `step` bytes; false when the stream ended.
    bool drain(std::size_t n, std::size_t step, const std::function<void(std::size_t)>& every) {
        std::vector<char> buf(step);
        std::size_t got = std::min(in_.size(), n);
        in_.erase(0, got);
        while (got < n) {
            ssize_t r = recv(fd_, buf.data(), std::min(step, n - got), 0);
            if (r <= 0) {
                return false;
            }
            got += static_cast<std::size_t>(r);
            every(got);
        }
        return true;
    }

    // Closes with a reset (SO_LINGER 0), as a client that crashes or is killed.
    void reset() {
        linger abortive{1, 0};
        setsockopt(fd_, SOL_SOCKET, SO_LINGER, &abortive, sizeof(abortive));
        ::close(fd_);
        fd_ = -1;
    }

    bool closed() const { return closed_; }
    // Ends the sending side (FIN), as `printf ... | nc` does after its request.
    void shutdown_write() { shutdown(fd_, SHUT_WR); }

  private:
    bool fill(Clock::time_point deadline) {
        auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
        if (left.count() <= 0) {
            return false;
        }
        pollfd p{fd_, POLLIN, 0};
        if (poll(&p, 1, static_cast<int>(left.count())) <= 0) {
            return false;
        }
        char buf[65536];
        ssize_t n = recv(fd_, buf, sizeof(buf), 0);
        if (n <= 0) {
            closed_ = true;
            return false;
        }
        in_.append(buf, static_cast<std::size_t>(n));
        return true;
    }

    int fd_ = -1;
    std::string in_;
    bool closed_ = false;
};

std::string get(const std::string& target, const std::string& extra = "",
                const std::string& version = "HTTP/1.1") {
    return "GET " + target + " " + version + "\r\nHost: t\r\n" + extra + "\r\n";
}

bool has_field(const std::string& head, const std::string& field) {
    return head.find("\r\n" + field + "\r\n") != std::string::npos;
}

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

class Streaming : public RegistryTest {
  protected:
    int port() const { return daemon_->http_port(); }

    nlohmann::json status() {
        auto res = daemon_->client(10s).Get("/status");
        if (!res || res->status != 200) {
            ADD_FAILURE() << "/status failed";
            return nlohmann::json::object();
        }
        return nlohmann::json::parse(res->body);
    }

    // Slots in use on the function's instances; -1 when it has none.
    int in_use(const nlohmann::json& s, const std::string& function) {
        for (const auto& f : s.value("functions", nlohmann::json::array())) {
            if (f["name"] == function) {
                int used = -1;
                for (const auto& i : f["instances"]) {
                    used = std::max(used, 0) + i["in_use"].get<int>();
                }
                return used;
            }
        }
        return -1;
    }

    // Polls /status until `done` holds (or the timeout); true when it did.
    bool status_becomes(const std::function<bool(const nlohmann::json&)>& done,
                        std::chrono::milliseconds timeout) {
        auto deadline = Clock::now() + timeout;
        while (Clock::now() < deadline) {
            if (done(status())) {
                return true;
            }
            std::this_thread::sleep_for(20ms);
        }
        return false;
    }

    std::string invoke(const std::string& target) {
        auto res = daemon_->client(30s).Get(target);
        return res ? res->body : "(no answer)";
    }

    std::string metrics() {
        auto res = daemon_->client(10s).Get("/metrics");
        return res ? res->body : "";
    }
};

// Each event reaches the client while the function waits: it sends the next one only after the
// test, having read the previous one, calls /sse-ack. A daemon that held the body back would
// leave the test waiting for the first event. A pipelined request follows the stream.
TEST_F(Streaming, ServerSentEventsArriveOneByOneAndPipeliningFollows) {
    add_hello("sse", "concurrent-requests = 2\nmax-instances = 1");
    start_daemon();
    StreamClient c(port());
    ASSERT_TRUE(c.send(get("/invoke/sse/sse?n=3&gate=1") + get("/invoke/sse/hello")));
    std::string head = c.read_head();
    ASSERT_EQ(head.rfind("HTTP/1.1 200 ", 0), 0u) << head;
    EXPECT_TRUE(has_field(head, "Transfer-Encoding: chunked")) << head;
    EXPECT_TRUE(has_field(head, "Content-Type: text/event-stream")) << head;
    for (int i = 1; i <= 3; ++i) {
        auto event = c.read_chunk(20s);
        ASSERT_TRUE(event) << "event " << i << " did not arrive while the function waited";
        EXPECT_EQ(*event, "data: " + std::to_string(i) + "\n\n");
        if (i < 3) {
            EXPECT_EQ(invoke("/invoke/sse/sse-ack"), "hello from unifaas\n");
        }
    }
    auto last = c.read_chunk();
    ASSERT_TRUE(last);
    EXPECT_EQ(*last, "") << "no last chunk";
    std::string next = c.read_head();
    EXPECT_EQ(next.rfind("HTTP/1.1 200 ", 0), 0u) << "pipelined request after the stream: " << next;
    auto body = c.read_exact(19);
    ASSERT_TRUE(body);
    EXPECT_EQ(*body, "hello from unifaas\n");
}

// An HTTP/1.0 client cannot take chunks: it gets the body until the daemon closes.
TEST_F(Streaming, Http10ClientGetsACloseDelimitedStream) {
    add_hello("sse");
    start_daemon();
    StreamClient c(port());
    ASSERT_TRUE(c.send(get("/invoke/sse/bytes?n=300000&mode=chunked", "", "HTTP/1.0")));
    std::string head = c.read_head();
    ASSERT_EQ(head.rfind("HTTP/1.1 200 ", 0), 0u) << head;
    EXPECT_FALSE(has_field(head, "Transfer-Encoding: chunked")) << head;
    EXPECT_TRUE(has_field(head, "Connection: close")) << head;
    auto body = c.read_to_close();
    ASSERT_TRUE(body);
    EXPECT_EQ(body->size(), 300000u);
    EXPECT_EQ(body->find_first_not_of('x'), std::string::npos);
}

// 1 GiB through a reader with a small window that stops now and then: the daemon reads from the
// instance only as fast as the client takes it, so its memory stays bounded.
TEST_F(Streaming, GigabyteDownloadThroughASlowReaderKeepsTheDaemonSmall) {
    add_hello("big");
    start_daemon();
    constexpr std::size_t kSize = 1024 * kMiB;
    StreamClient c(port(), 64 * 1024);
    ASSERT_TRUE(c.send(get("/invoke/big/bytes?n=" + std::to_string(kSize))));
    std::string head = c.read_head();
    ASSERT_EQ(head.rfind("HTTP/1.1 200 ", 0), 0u) << head;
    EXPECT_TRUE(has_field(head, "Content-Length: " + std::to_string(kSize))) << head;
    long peak = 0;
    std::size_t next_pause = 16 * kMiB;
    bool whole = c.drain(kSize, 16 * 1024, [&](std::size_t got) {
        if (got >= next_pause) {
            // The reader stops: without back-pressure the daemon would keep reading the instance
            // into memory meanwhile.
            next_pause += 128 * kMiB;
            std::this_thread::sleep_for(300ms);
            peak = std::max(peak, rss_kib(daemon_->pid()));
        }
    });
    ASSERT_TRUE(whole) << "the download ended early";
    peak = std::max(peak, rss_kib(daemon_->pid()));
    EXPECT_LT(peak, 64 * 1024) << "daemon RSS reached " << peak / 1024 << " MiB";
    EXPECT_EQ(invoke("/invoke/big/hello"), "hello from unifaas\n");
}

// Chunked both ways: a chunked request body (decoded by the daemon) comes back chunked and whole;
// a long chunked answer reaches an HTTP/1.1 client chunked.
TEST_F(Streaming, ChunkedBodiesBothWays) {
    add_hello("chunky");
    start_daemon();
    StreamClient c(port());
    std::string body(3 * kMiB, 'a');
    for (std::size_t i = 0; i < body.size(); i += 4099) {
        body[i] = static_cast<char>('a' + i % 26);
    }
    std::string request =
        "POST /invoke/chunky/chunked-echo HTTP/1.1\r\nHost: t\r\n"
        "Transfer-Encoding: chunked\r\n\r\n";
    for (std::size_t at = 0; at < body.size(); at += 100'000) {
        std::string part = body.substr(at, 100'000);
        char size[16];
        snprintf(size, sizeof(size), "%zx\r\n", part.size());
        request += size + part + "\r\n";
    }
    request += "0\r\n\r\n";
    ASSERT_TRUE(c.send(request));
    std::string head = c.read_head();
    ASSERT_EQ(head.rfind("HTTP/1.1 200 ", 0), 0u) << head;
    ASSERT_TRUE(has_field(head, "Transfer-Encoding: chunked")) << head;
    auto echoed = c.read_chunked_body();
    ASSERT_TRUE(echoed);
    EXPECT_TRUE(*echoed == body) << "echoed " << echoed->size() << " bytes of " << body.size();

    ASSERT_TRUE(c.send(get("/invoke/chunky/bytes?n=8388608&mode=close")));
    head = c.read_head();
    ASSERT_TRUE(has_field(head, "Transfer-Encoding: chunked")) << "body until close: " << head;
    auto streamed = c.read_chunked_body();
    ASSERT_TRUE(streamed);
    EXPECT_EQ(streamed->size(), 8 * kMiB);
    ASSERT_TRUE(c.send(get("/invoke/chunky/hello")));
    EXPECT_EQ(c.read_head().rfind("HTTP/1.1 200 ", 0), 0u) << "connection unusable after";
}

// FNV-1a 64 over a byte stream, as hello's /upload computes it.
class Fnv1a {
  public:
    void add(std::string_view data) {
        for (unsigned char c : data) {
            hash_ = (hash_ ^ c) * 0x100000001b3ULL;
        }
    }
    std::string hex() const { return fmt::format("{:016x}", hash_); }

  private:
    std::uint64_t hash_ = 0xcbf29ce484222325ULL;
};

// A block of the upload: different at every offset, so a lost, repeated or reordered block
// changes the hash.
std::string upload_block(std::size_t index, std::size_t size) {
    std::string block(size, '\0');
    for (std::size_t i = 0; i < size; ++i) {
        block[i] = static_cast<char>((i * 131 + index * 7) >> 3);
    }
    return block;
}

// Request bodies stream to the instance as they arrive: 1 GiB with Content-Length (after a 100
// Continue) reaches the function whole and in order (it answers the count and a hash) while the
// daemon's RSS stays < 64 MiB: it reads from the client only as fast as the instance takes the
// bytes. The same as a chunked upload (re-framed chunked to the instance). The instance's slot is
// held while the body flows.
// (It once stalled for good under load: a resume from inside on_body() was lost - see
// HttpServerTest.ResumeFromInsideOnBodyIsNotLost.)
TEST_F(Streaming, GigabyteUploadStreamsThroughAndKeepsTheDaemonSmall) {
    add_hello("up", "max-body-size = 2147483648");
    start_daemon();
    constexpr std::size_t kBlock = kMiB;
    for (bool chunked : {false, true}) {
        SCOPED_TRACE(chunked ? "chunked" : "Content-Length");
        std::size_t blocks = chunked ? 256 : 1024;
        StreamClient c(port());
        std::string head = "POST /invoke/up/upload HTTP/1.1\r\nHost: t\r\n";
        head += chunked
                    ? "Transfer-Encoding: chunked\r\n\r\n"
                    : "Expect: 100-continue\r\nContent-Length: " + std::to_string(blocks * kBlock) +
                          "\r\n\r\n";
        ASSERT_TRUE(c.send(head));
        if (!chunked) {
            std::string interim = c.read_head();
            ASSERT_EQ(interim.rfind("HTTP/1.1 100 ", 0), 0u) << interim;
        }
        Fnv1a hash;
        long peak = 0;
        for (std::size_t i = 0; i < blocks; ++i) {
            std::string block = upload_block(i, kBlock);
            hash.add(block);
            if (chunked) {
                block = fmt::format("{:x}\r\n", block.size()) + block + "\r\n";
            }
            ASSERT_TRUE(c.send(block)) << "the daemon stopped taking the body at block " << i;
            if (i % 64 == 32) {
                peak = std::max(peak, rss_kib(daemon_->pid()));
                EXPECT_EQ(in_use(status(), "up"), 1) << "no slot held while the body flows";
            }
        }
        if (chunked) {
            ASSERT_TRUE(c.send("0\r\n\r\n"));
        }
        std::string answer = c.read_head(60s);
        ASSERT_EQ(answer.rfind("HTTP/1.1 200 ", 0), 0u) << answer;
        std::string want = fmt::format("bytes {} fnv1a64 {}\n", blocks * kBlock, hash.hex());
        auto body = c.read_exact(want.size());
        ASSERT_TRUE(body);
        EXPECT_EQ(*body, want);
        peak = std::max(peak, rss_kib(daemon_->pid()));
        EXPECT_LT(peak, 64 * 1024) << "daemon RSS reached " << peak / 1024 << " MiB";
        // The connection goes on.
        ASSERT_TRUE(c.send(get("/invoke/up/hello")));
        EXPECT_EQ(c.read_head().rfind("HTTP/1.1 200 ", 0), 0u) << "connection unusable after";
    }
    EXPECT_TRUE(status_becomes([&](const nlohmann::json& s) { return in_use(s, "up") == 0; }, 5s));
}

// A chunked upload that crosses max-body-size in the middle is cut there: the client gets a 413
// (the instance never answered), the connection ends and the slot is given back.
TEST_F(Streaming, ChunkedUploadCrossingTheLimitIsRefusedMidStream) {
    add_hello("capped", "max-body-size = 4194304");
    start_daemon();
    StreamClient c(port());
    ASSERT_TRUE(
        c.send("POST /invoke/capped/upload HTTP/1.1\r\nHost: t\r\n"
               "Transfer-Encoding: chunked\r\n\r\n"));
    std::thread sender([&] {
        std::string block = upload_block(0, 256 * 1024);
        std::string chunk = fmt::format("{:x}\r\n", block.size()) + block + "\r\n";
        for (int i = 0; i < 64 && c.send(chunk); ++i) {  // 16 MiB, or until the daemon stops
        }
    });
    std::string head = c.read_head(30s);
    sender.join();
    EXPECT_EQ(head.rfind("HTTP/1.1 413 ", 0), 0u) << head;
    EXPECT_TRUE(has_field(head, "Connection: close")) << head;
    EXPECT_TRUE(
        status_becomes([&](const nlohmann::json& s) { return in_use(s, "capped") == 0; }, 5s))
        << status().dump(2);
    EXPECT_EQ(invoke("/invoke/capped/hello"), "hello from unifaas\n");
}

// HEAD, 204 and 304 have no body, whatever their head says; the connection goes on after each.
TEST_F(Streaming, HeadNoContentAndNotModifiedHaveNoBody) {
    add_hello("heads");
    start_daemon();
    StreamClient c(port());
    ASSERT_TRUE(c.send("HEAD /invoke/heads/bytes?n=5000000 HTTP/1.1\r\nHost: t\r\n\r\n" +
                       get("/invoke/heads/status?code=204") + get("/invoke/heads/status?code=304") +
                       get("/invoke/heads/hello")));
    std::string head = c.read_head();
    EXPECT_EQ(head.rfind("HTTP/1.1 200 ", 0), 0u) << head;
    EXPECT_TRUE(has_field(head, "Content-Length: 5000000")) << head;
    head = c.read_head();
    EXPECT_EQ(head.rfind("HTTP/1.1 204 ", 0), 0u) << head;
    head = c.read_head();
    EXPECT_EQ(head.rfind("HTTP/1.1 304 ", 0), 0u) << head;
    head = c.read_head();
    EXPECT_EQ(head.rfind("HTTP/1.1 200 ", 0), 0u) << "a bodiless answer carried bytes: " << head;
    auto body = c.read_exact(19);
    ASSERT_TRUE(body);
    EXPECT_EQ(*body, "hello from unifaas\n");
}

// A client that leaves mid-stream gives the slot back at once; a single-use instance is retired.
TEST_F(Streaming, ClientLeavingMidStreamReleasesTheSlot) {
    add_hello("dl");
    add_hello("once", "single-use = true");
    add_hello("events", "concurrent-requests = 2\nmax-instances = 1");
    start_daemon();
    for (const std::string fn : {"dl", "once"}) {
        SCOPED_TRACE(fn);
        StreamClient c(port());
        ASSERT_TRUE(c.send(get("/invoke/" + fn + "/bytes?n=1073741824")));
        ASSERT_FALSE(c.read_head().empty());
        ASSERT_TRUE(c.read_exact(kMiB));
        EXPECT_EQ(in_use(status(), fn), 1);
        c.reset();
        EXPECT_TRUE(status_becomes(
            [&](const nlohmann::json& s) { return in_use(s, fn) == (fn == "once" ? -1 : 0); }, 5s))
            << status().dump(2);
    }
    // While the function waits between events, nothing is written: the reset itself is noticed.
    StreamClient c(port());
    ASSERT_TRUE(c.send(get("/invoke/events/sse?n=2&gate=1")));
    ASSERT_FALSE(c.read_head().empty());
    ASSERT_TRUE(c.read_chunk());
    EXPECT_EQ(in_use(status(), "events"), 1);
    c.reset();
    EXPECT_TRUE(
        status_becomes([&](const nlohmann::json& s) { return in_use(s, "events") == 0; }, 5s))
        << status().dump(2);
    EXPECT_EQ(invoke("/invoke/events/sse-ack"), "hello from unifaas\n");  // let it end
}

// A client that leaves while the instance still works on its request gives the slot back without
// waiting for the answer, and a single-use instance is retired. Leaving is a reset, or a FIN
// before any answer (the rule nginx follows: a client that closed its side before its answer
// gave up; `printf ... | nc` gets only what the daemon answers at once, see HostileClients). Each
// is counted as 499.
TEST_F(Streaming, ClientLeavingBeforeTheAnswerReleasesTheSlot) {
    add_hello("slow");
    add_hello("once", "single-use = true");
    start_daemon();
    for (const std::string fn : {"slow", "once"}) {
        for (bool reset : {true, false}) {
            SCOPED_TRACE(fn + (reset ? ": reset" : ": FIN"));
            StreamClient c(port());
            ASSERT_TRUE(c.send(get("/invoke/" + fn + "/sleep?ms=20000")));
            ASSERT_TRUE(
                status_becomes([&](const nlohmann::json& s) { return in_use(s, fn) == 1; }, 30s));
            auto left_at = Clock::now();
            if (reset) {
                c.reset();
            } else {
                c.shutdown_write();
            }
            EXPECT_TRUE(status_becomes(
                [&](const nlohmann::json& s) { return in_use(s, fn) == (fn == "once" ? -1 : 0); },
                5s))
                << status().dump(2);
            EXPECT_LT(Clock::now() - left_at, 5s);
            if (!reset) {
                auto rest = c.read_to_close(5s);
                ASSERT_TRUE(rest) << "the connection stayed open";
                EXPECT_EQ(*rest, "") << "answered a client that had left";
            }
        }
        EXPECT_NE(
            metrics().find("unifaas_invocations_total{function=\"" + fn + "\",code=\"499\"} 2"),
            std::string::npos)
            << metrics();
    }
}

// A stream that stalls longer than stream-idle-timeout is cut off: the client sees fewer bytes
// than Content-Length announced and the connection end; /metrics counts it; the slot is free.
TEST_F(Streaming, StalledStreamIsTruncatedAfterTheIdleTimeout) {
    add_hello("stall", "stream-idle-timeout = 1");
    start_daemon();
    StreamClient c(port());
    ASSERT_TRUE(c.send(get("/invoke/stall/bytes?n=10485760&stall=1048576")));
    std::string head = c.read_head();
    ASSERT_TRUE(has_field(head, "Content-Length: 10485760")) << head;
    auto started = Clock::now();
    auto rest = c.read_to_close(20s);
    ASSERT_TRUE(rest) << "the stalled stream was not cut off";
    EXPECT_EQ(rest->size(), kMiB);
    EXPECT_GE(Clock::now() - started, 900ms);
    EXPECT_NE(metrics().find("unifaas_truncated_responses_total{function=\"stall\"} 1"),
              std::string::npos)
        << metrics();
    EXPECT_TRUE(
        status_becomes([&](const nlohmann::json& s) { return in_use(s, "stall") == 0; }, 5s));
}

// A client that opens a new connection per request sends the next one the moment it has the
// answer: the slot must be free by then, or the pool starts a second instance for nothing.
// (It was not: the slot was given back only after the answer had been written, and the call
// holding it was freed after the loop's batch.)
TEST_F(Streaming, NewConnectionPerRequestReusesTheOneInstance) {
    add_hello("percall", "max-instances = 10");
    start_daemon();
    constexpr int kRequests = 300;
    for (int i = 0; i < kRequests; ++i) {
        StreamClient c(port());
        ASSERT_TRUE(c.send(get("/invoke/percall/hello", "Connection: close\r\n")));
        auto body = c.read_to_close();
        ASSERT_TRUE(body);
        ASSERT_NE(body->find("hello from unifaas"), std::string::npos) << *body;
    }
    auto s = status();
    int instances = 0;
    for (const auto& f : s["functions"]) {
        if (f["name"] == "percall") {
            instances = static_cast<int>(f["instances"].size());
        }
    }
    EXPECT_EQ(instances, 1) << kRequests << " sequential requests started more than one instance";
    EXPECT_NE(metrics().find("unifaas_cold_starts_total{function=\"percall\",kind=\"boot\"} 1\n"),
              std::string::npos)
        << metrics();
}

// max-body-size in function.toml overrides the daemon's for that function only, also for
// chunked bodies and for a client that waits for 100 Continue (refused with 413 instead).
TEST_F(Streaming, FunctionBodyLimitOverridesTheDaemons) {
    add_hello("small", "max-body-size = 1000");
    add_hello("large", "max-body-size = 8388608");
    add_hello("plain");
    start_daemon("max-body-size = 4096");
    // The status line's start ("HTTP/1.1 200") of the answer to a POST of `size` bytes; with
    // `expect`, the body is sent only after a 100 Continue.
    auto post = [&](const std::string& fn, std::size_t size, bool expect = false) {
        StreamClient c(port());
        std::string head = "POST /invoke/" + fn + "/echo HTTP/1.1\r\nHost: t\r\n" +
                           (expect ? "Expect: 100-continue\r\n" : "") +
                           "Content-Length: " + std::to_string(size) + "\r\n\r\n";
        std::string body(size, 'b');
        if (!expect) {
            EXPECT_TRUE(c.send(head + body));
            return c.read_head().substr(0, 12);
        }
        EXPECT_TRUE(c.send(head));
        std::string first = c.read_head();
        if (first.rfind("HTTP/1.1 100 ", 0) == 0) {
            EXPECT_TRUE(c.send(body));
            first = c.read_head();
        }
        return first.substr(0, 12);
    };
    EXPECT_EQ(post("small", 1000), "HTTP/1.1 200");
    EXPECT_EQ(post("small", 1001), "HTTP/1.1 413");
    EXPECT_EQ(post("small", 2000, true), "HTTP/1.1 413");
    EXPECT_EQ(post("plain", 4096), "HTTP/1.1 200");
    EXPECT_EQ(post("plain", 5000), "HTTP/1.1 413");
    EXPECT_EQ(post("large", 5 * kMiB, true), "HTTP/1.1 200");
    // Chunked: the limit applies to the decoded size.
    StreamClient c(port());
    std::string chunk(1500, 'c');
    ASSERT_TRUE(
        c.send("POST /invoke/small/echo HTTP/1.1\r\nHost: t\r\n"
               "Transfer-Encoding: chunked\r\n\r\n5dc\r\n" +
               chunk + "\r\n0\r\n\r\n"));
    std::string head = c.read_head();
    EXPECT_EQ(head.rfind("HTTP/1.1 413 ", 0), 0u) << head;
    auto text = c.read_to_close();
    ASSERT_TRUE(text);
    EXPECT_NE(text->find("function small: request body exceeds the limit of 1000 bytes"),
              std::string::npos)
        << *text;
}

// ---- WebSocket (and any Upgrade) -----------------------------------------------------------

// A client frame (masked, as RFC 6455 requires of clients), payload < 126 bytes.
std::string ws_frame(int opcode, std::string_view payload) {
    const unsigned char mask[4] = {0x12, 0x34, 0x56, 0x78};
    std::string f;
    f += static_cast<char>(0x80 | opcode);
    f += static_cast<char>(0x80 | payload.size());
    f.append(reinterpret_cast<const char*>(mask), 4);
    for (std::size_t i = 0; i < payload.size(); ++i) {
        f += static_cast<char>(payload[i] ^ mask[i % 4]);
    }
    return f;
}

// The frame a server sends (unmasked), payload < 126 bytes.
std::string ws_server_frame(int opcode, std::string_view payload) {
    std::string f;
    f += static_cast<char>(0x80 | opcode);
    f += static_cast<char>(payload.size());
    f += payload;
    return f;
}

std::string ws_handshake(const std::string& target) {
    return "GET " + target +
           " HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
           "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
}

// A real client (python3-websockets, from Debian: /usr/bin/python3, tests/lib/install-deps.sh)
// through /invoke/<fn>/ws: text messages, a 1 MiB binary one, a ping; the slot is held while the
// socket is open and given back when it closes; the function's plain routes still work.
TEST_F(Streaming, WebSocketEchoThroughTheDaemonHoldsTheSlotUntilClosed) {
    add_hello("ws");
    add_hello("ws1", "single-use = true");
    start_daemon();
    for (const std::string fn : {"ws", "ws1"}) {
        SCOPED_TRACE(fn);
        std::string out = fmt::format("{}/ws-client-{}.out", ::testing::TempDir(), fn);
        std::string cmd = fmt::format(
            "timeout 90 /usr/bin/python3 {}/tests/integration/ws_echo_client.py "
            "ws://127.0.0.1:{}/invoke/{}/ws >{} 2>&1",
            UNIFAAS_SOURCE_DIR, port(), fn, out);
        FILE* client = popen(cmd.c_str(), "w");
        ASSERT_NE(client, nullptr);
        auto output = [&] {
            std::ifstream in(out);
            return std::string(std::istreambuf_iterator<char>(in), {});
        };
        // The client holds its socket open after the echoes until told to close it.
        bool held = status_becomes(
            [&](const nlohmann::json& s) {
                return output().find("echo ok") != std::string::npos && in_use(s, fn) == 1;
            },
            60s);
        EXPECT_TRUE(held) << output() << status().dump(2);
        std::fputs("close\n", client);
        std::fflush(client);
        int rc = pclose(client);
        EXPECT_EQ(rc, 0) << output();
        EXPECT_NE(output().find("closed 1000"), std::string::npos) << output();
        EXPECT_TRUE(status_becomes(
            [&](const nlohmann::json& s) { return in_use(s, fn) == (fn == "ws1" ? -1 : 0); }, 5s))
            << status().dump(2);
    }
    EXPECT_EQ(invoke("/invoke/ws/hello"), "hello from unifaas\n");  // a plain GET still works
    EXPECT_NE(metrics().find("unifaas_tunnels_total{function=\"ws\"} 1"), std::string::npos)
        << metrics();
}

// Frames sent right behind the handshake are not lost; a client that drops its connection
// mid-tunnel (reset, or a plain close) gives the slot back at once; single-use is retired. An
// upgrade the function does not switch for is an ordinary exchange; a stopping daemon ends an
// open tunnel.
TEST_F(Streaming, WebSocketClientDroppingTheConnectionReleasesTheSlot) {
    add_hello("ws");
    add_hello("ws1", "single-use = true");
    start_daemon();
    for (const std::string fn : {"ws", "ws1"}) {
        for (bool reset : {true, false}) {
            SCOPED_TRACE(fn + (reset ? " reset" : " close"));
            auto c = std::make_unique<StreamClient>(port());
            // The handshake and a first frame in one write: the frame is pipelined.
            ASSERT_TRUE(c->send(ws_handshake("/invoke/" + fn + "/ws") + ws_frame(1, "early")));
            std::string head = c->read_head();
            ASSERT_EQ(head.rfind("HTTP/1.1 101 ", 0), 0u) << head;
            EXPECT_TRUE(has_field(head, "Connection: Upgrade")) << head;
            EXPECT_TRUE(has_field(head, "Upgrade: websocket")) << head;
            EXPECT_TRUE(has_field(head, "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo="))
                << head;
            EXPECT_EQ(c->read_exact(7, 10s), ws_server_frame(1, "early"));
            ASSERT_TRUE(c->send(ws_frame(9, "ping?")));
            EXPECT_EQ(c->read_exact(7, 10s), ws_server_frame(10, "ping?"));
            EXPECT_EQ(in_use(status(), fn), 1);
            if (reset) {
                c->reset();
            } else {
                c.reset();  // close(): a FIN, passed on to the function, which ends
            }
            EXPECT_TRUE(status_becomes(
                [&](const nlohmann::json& s) { return in_use(s, fn) == (fn == "ws1" ? -1 : 0); },
                5s))
                << status().dump(2);
        }
    }
    // An upgrade request the function does not switch for is an ordinary exchange.
    StreamClient c(port());
    ASSERT_TRUE(c.send(ws_handshake("/invoke/ws/hello") + get("/invoke/ws/hello")));
    for (int i = 0; i < 2; ++i) {
        std::string head = c.read_head();
        EXPECT_EQ(head.rfind("HTTP/1.1 200 ", 0), 0u) << head;
        EXPECT_EQ(c.read_exact(19, 10s), "hello from unifaas\n");
    }
    // A daemon that stops ends a tunnel still open (after shutdown-grace, 5 s here) and exits
    // cleanly.
    StreamClient open_ws(port());
    ASSERT_TRUE(open_ws.send(ws_handshake("/invoke/ws/ws")));
    std::string head = open_ws.read_head();
    ASSERT_EQ(head.rfind("HTTP/1.1 101 ", 0), 0u) << head;
    EXPECT_EQ(daemon_->terminate(30s), 0) << daemon_->log();
    EXPECT_TRUE(open_ws.read_to_close(10s)) << "the tunnel outlived the daemon";
}

// stream-idle-timeout applies to a tunnel: nothing moving either way for that long closes it and
// gives the slot back; traffic keeps it open.
TEST_F(Streaming, WebSocketIdleForTheStreamIdleTimeoutIsClosed) {
    add_hello("quiet", "stream-idle-timeout = 1");
    start_daemon();
    StreamClient c(port());
    ASSERT_TRUE(c.send(ws_handshake("/invoke/quiet/ws")));
    std::string head = c.read_head();
    ASSERT_EQ(head.rfind("HTTP/1.1 101 ", 0), 0u) << head;
    for (int i = 0; i < 3; ++i) {  // 1.5 s of traffic in all: longer than the idle limit
        ASSERT_TRUE(c.send(ws_frame(1, "still here")));
        ASSERT_EQ(c.read_exact(12, 10s), ws_server_frame(1, "still here")) << "round " << i;
        std::this_thread::sleep_for(500ms);  // the pause under test, not a synchronisation
    }
    auto opened = Clock::now();
    EXPECT_TRUE(c.read_to_close(10s)) << "the idle tunnel was not closed";
    EXPECT_GE(Clock::now() - opened, 200ms);  // about 0.5 s of the limit was left
    EXPECT_TRUE(
        status_becomes([&](const nlohmann::json& s) { return in_use(s, "quiet") == 0; }, 5s))
        << status().dump(2);
}

}  // namespace
}  // namespace unifaas::test
