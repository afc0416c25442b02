// The tunnel (gateway/tunnel) between two real TCP connections on 127.0.0.1: the test holds the
// client's and the instance's far ends (blocking, with receive timeouts so nothing hangs), the
// tunnel the near ends on an EventLoop. Both directions with the first bytes, back-pressure
// against a peer that does not read, half-close each way, a reset, the idle limit.
#include "gateway/tunnel.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <functional>
#include <future>
#include <string>
#include <thread>

#include "util/event_loop.h"
#include "util/unique_fd.h"

namespace unifaas {
namespace {

using namespace std::chrono_literals;

// A connected TCP pair on 127.0.0.1: {far end (blocking, 10 s receive timeout), near end
// (non-blocking)}.
std::pair<UniqueFd, UniqueFd> tcp_pair() {
    UniqueFd listener(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(addr);
    EXPECT_EQ(bind(listener.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
    EXPECT_EQ(listen(listener.get(), 1), 0);
    EXPECT_EQ(getsockname(listener.get(), reinterpret_cast<sockaddr*>(&addr), &len), 0);
    UniqueFd far(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    EXPECT_EQ(connect(far.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
    UniqueFd near(accept4(listener.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC));
    timeval tv{10, 0};
    setsockopt(far.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(far.get(), SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    int one = 1;
    setsockopt(far.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    setsockopt(near.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    return {std::move(far), std::move(near)};
}

void write_all(int fd, std::string_view data) {
    while (!data.empty()) {
        ssize_t n = send(fd, data.data(), data.size(), MSG_NOSIGNAL);
        ASSERT_GT(n, 0) << std::strerror(errno);
        data.remove_prefix(static_cast<std::size_t>(n));
    }
}

// Reads exactly n bytes (fewer when the stream ends or the receive timeout passes).
std::string read_n(int fd, std::size_t n) {
    std::string out;
    char buf[65536];
    while (out.size() < n) {
        ssize_t got = recv(fd, buf, std::min(sizeof(buf), n - out.size()), 0);
        if (got <= 0) {
            break;
        }
        out.append(buf, static_cast<std::size_t>(got));
    }
    return out;
}

// Reads until the end of the stream; the bool says whether it ended with EOF (not an error).
std::pair<std::string, bool> read_to_end(int fd) {
    std::string out;
    char buf[65536];
    while (true) {
        ssize_t got = recv(fd, buf, sizeof(buf), 0);
        if (got == 0) {
            return {out, true};
        }
        if (got < 0) {
            return {out, false};
        }
        out.append(buf, static_cast<std::size_t>(got));
    }
}

std::string pattern(std::size_t n, unsigned seed) {
    std::string s(n, '\0');
    for (std::size_t i = 0; i < n; ++i) {
        s[i] = static_cast<char>((i * 131 + seed) % 251);
    }
    return s;
}

class TunnelTest : public ::testing::Test {
  protected:
    void SetUp() override {
        loop_.start("tunnel-test");
        auto [cf, cn] = tcp_pair();
        auto [uf, un] = tcp_pair();
        client_ = std::move(cf);
        client_near_ = std::move(cn);
        upstream_ = std::move(uf);
        upstream_near_ = std::move(un);
    }
    void TearDown() override {
        loop_.stop();
        loop_.join();
    }

    void open(std::string to_client, std::string to_upstream, TunnelLimits limits = {}) {
        run([&] {
            tunnel_ = open_tunnel(loop_, std::move(client_near_), std::move(to_client),
                                  upstream_near_.get(), std::move(to_upstream), limits,
                                  [this](TunnelOutcome outcome) {
                                      ended_count_++;
                                      ended_.set_value(std::move(outcome));
                                  });
        });
    }
    void run(const std::function<void()>& fn) {
        std::promise<void> done;
        loop_.post([&] {
            fn();
            done.set_value();
        });
        done.get_future().wait();
    }
    TunnelOutcome wait_ended() {
        auto f = ended_.get_future();
        EXPECT_EQ(f.wait_for(10s), std::future_status::ready) << "the tunnel did not end";
        return f.get();
    }

    EventLoop loop_;
    UniqueFd client_, client_near_, upstream_, upstream_near_;
    std::shared_ptr<Tunnel> tunnel_;
    std::promise<TunnelOutcome> ended_;
    std::atomic<int> ended_count_{0};
};

TEST_F(TunnelTest, RelaysBothWaysStartingWithTheBytesAlreadyRead) {
    open("HTTP/1.1 101 Switching Protocols\r\n\r\nfirst", "pipelined");
    EXPECT_EQ(read_n(client_.get(), 41), "HTTP/1.1 101 Switching Protocols\r\n\r\nfirst");
    EXPECT_EQ(read_n(upstream_.get(), 9), "pipelined");
    write_all(client_.get(), "ping");
    EXPECT_EQ(read_n(upstream_.get(), 4), "ping");
    write_all(upstream_.get(), "pong");
    EXPECT_EQ(read_n(client_.get(), 4), "pong");

    // 4 MiB each way at the same time.
    std::string up = pattern(4 << 20, 1), down = pattern(4 << 20, 2);
    std::thread writer_up([&] { write_all(client_.get(), up); });
    std::thread writer_down([&] { write_all(upstream_.get(), down); });
    std::string got_down;
    std::thread reader_down([&] { got_down = read_n(client_.get(), down.size()); });
    std::string got_up = read_n(upstream_.get(), up.size());
    writer_up.join();
    writer_down.join();
    reader_down.join();
    EXPECT_TRUE(got_up == up) << got_up.size();
    EXPECT_TRUE(got_down == down) << got_down.size();

    shutdown(client_.get(), SHUT_WR);
    shutdown(upstream_.get(), SHUT_WR);
    auto outcome = wait_ended();
    EXPECT_EQ(outcome.kind, TunnelOutcome::Kind::Closed) << outcome.why;
    EXPECT_EQ(outcome.to_upstream, 9 + 4 + up.size());
    EXPECT_EQ(outcome.to_client, 41 + 4 + down.size());
    EXPECT_TRUE(read_to_end(client_.get()).second);  // the client's socket was closed
}

TEST_F(TunnelTest, StopsReadingWhileThePeerDoesNotRead) {
    TunnelLimits limits;
    limits.watermark = 64 * 1024;
    open("", "", limits);
    // The instance does not read: the client's writes must stall, with the tunnel holding at most
    // the watermark plus one read.
    int flags = fcntl(client_.get(), F_GETFL);
    fcntl(client_.get(), F_SETFL, flags | O_NONBLOCK);
    std::string block = pattern(64 * 1024, 3);
    std::size_t sent = 0;
    while (true) {
        std::size_t at = sent % block.size();
        ssize_t n = send(client_.get(), block.data() + at, block.size() - at, MSG_NOSIGNAL);
        if (n > 0) {
            sent += static_cast<std::size_t>(n);
            ASSERT_LT(sent, 64u << 20) << "the tunnel kept reading from the client";
            continue;
        }
        ASSERT_TRUE(errno == EAGAIN || errno == EWOULDBLOCK) << std::strerror(errno);
        pollfd p{client_.get(), POLLOUT, 0};
        if (poll(&p, 1, 300) == 0) {
            break;  // no room for 300 ms: stalled
        }
    }
    std::size_t buffered = 0;
    run([&] { buffered = tunnel_->buffered(); });
    EXPECT_LE(buffered, limits.watermark + 64 * 1024);
    EXPECT_GT(sent, limits.watermark);
    // Once the instance reads, everything arrives, in order.
    fcntl(client_.get(), F_SETFL, flags);
    shutdown(client_.get(), SHUT_WR);
    auto [got, eof] = read_to_end(upstream_.get());
    EXPECT_TRUE(eof);
    ASSERT_EQ(got.size(), sent);
    std::size_t wrong = got.size();
    for (std::size_t i = 0; i < got.size() && wrong == got.size(); ++i) {
        if (got[i] != block[i % block.size()]) {
            wrong = i;
        }
    }
    EXPECT_EQ(wrong, got.size()) << "the bytes differ from offset " << wrong;
}

TEST_F(TunnelTest, ClientHalfCloseReachesTheInstanceWhichCanStillAnswer) {
    open("", "");
    write_all(client_.get(), "last words");
    shutdown(client_.get(), SHUT_WR);
    auto [got, eof] = read_to_end(upstream_.get());
    EXPECT_EQ(got, "last words");
    EXPECT_TRUE(eof) << "the client's FIN was not passed on";
    EXPECT_EQ(ended_count_, 0);
    write_all(upstream_.get(), "answer after the FIN");
    EXPECT_EQ(read_n(client_.get(), 20), "answer after the FIN");
    shutdown(upstream_.get(), SHUT_WR);
    EXPECT_TRUE(read_to_end(client_.get()).second);
    auto outcome = wait_ended();
    EXPECT_EQ(outcome.kind, TunnelOutcome::Kind::Closed) << outcome.why;
}

TEST_F(TunnelTest, InstanceHalfCloseReachesTheClientWhichCanStillSend) {
    open("", "");
    write_all(upstream_.get(), "bye");
    shutdown(upstream_.get(), SHUT_WR);
    auto [got, eof] = read_to_end(client_.get());
    EXPECT_EQ(got, "bye");
    EXPECT_TRUE(eof) << "the instance's FIN was not passed on";
    write_all(client_.get(), "still here");
    EXPECT_EQ(read_n(upstream_.get(), 10), "still here");
    EXPECT_EQ(ended_count_, 0);
    shutdown(client_.get(), SHUT_WR);
    EXPECT_TRUE(read_to_end(upstream_.get()).second);
    auto outcome = wait_ended();
    EXPECT_EQ(outcome.kind, TunnelOutcome::Kind::Closed) << outcome.why;
}

TEST_F(TunnelTest, AClientResetEndsTheTunnelAtOnce) {
    open("", "");
    write_all(client_.get(), "x");
    EXPECT_EQ(read_n(upstream_.get(), 1), "x");
    linger abortive{1, 0};
    setsockopt(client_.get(), SOL_SOCKET, SO_LINGER, &abortive, sizeof(abortive));
    client_.reset();  // RST
    auto outcome = wait_ended();
    EXPECT_EQ(outcome.kind, TunnelOutcome::Kind::Failed);
    EXPECT_NE(outcome.why.find("client"), std::string::npos) << outcome.why;
}

TEST_F(TunnelTest, AnInstanceResetEndsTheTunnelAndClosesTheClient) {
    open("", "");
    linger abortive{1, 0};
    setsockopt(upstream_.get(), SOL_SOCKET, SO_LINGER, &abortive, sizeof(abortive));
    upstream_.reset();  // RST
    auto outcome = wait_ended();
    EXPECT_EQ(outcome.kind, TunnelOutcome::Kind::Failed);
    EXPECT_NE(outcome.why.find("instance"), std::string::npos) << outcome.why;
    char c;
    EXPECT_LE(recv(client_.get(), &c, 1, 0), 0);  // closed, not left hanging
}

TEST_F(TunnelTest, NothingMovingForTheIdleLimitEndsIt) {
    TunnelLimits limits;
    limits.idle = 300ms;
    auto start = std::chrono::steady_clock::now();
    open("", "", limits);
    write_all(client_.get(), "a");
    EXPECT_EQ(read_n(upstream_.get(), 1), "a");
    auto outcome = wait_ended();
    EXPECT_EQ(outcome.kind, TunnelOutcome::Kind::Failed);
    EXPECT_NE(outcome.why.find("stream-idle-timeout"), std::string::npos) << outcome.why;
    EXPECT_GE(std::chrono::steady_clock::now() - start, 300ms);
}

}  // namespace
}  // namespace unifaas
