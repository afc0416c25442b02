#include "gateway/tunnel.h"

#include <fmt/format.h>
#include <sys/epoll.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstring>
#include <string_view>

namespace unifaas {

namespace {

using Clock = std::chrono::steady_clock;

constexpr std::size_t kReadChunk = 64 * 1024;

class TunnelImpl : public Tunnel, public std::enable_shared_from_this<TunnelImpl> {
  public:
    // One side of the tunnel: its socket and what waits to be written to it.
    struct Side : EventLoop::Handler {
        TunnelImpl* tunnel = nullptr;
        int fd = -1;
        bool readable = true;  // until recv() says EAGAIN (edge-triggered)
        bool writable = true;
        bool rdhup = false;  // the end of its stream is queued: read until recv() says so
        bool eof = false;    // its stream ended (FIN read)
        bool shut = false;   // the other side's end was passed on: shutdown(SHUT_WR) done
        std::string out;     // bytes for this side not yet written: out[sent, size)
        std::size_t sent = 0;
        std::uint64_t written = 0;

        std::size_t pending() const { return out.size() - sent; }
        void on_events(std::uint32_t events) override {
            if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) {
                readable = true;
            }
            if (events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR)) {
                rdhup = true;
            }
            if (events & (EPOLLOUT | EPOLLHUP | EPOLLERR)) {
                writable = true;
            }
            tunnel->pump();
        }
    };

    TunnelImpl(EventLoop& loop, UniqueFd client, int upstream, TunnelLimits limits,
               std::function<void(TunnelOutcome)> ended)
        : loop_(loop),
          client_fd_(std::move(client)),
          limits_(limits),
          ended_(std::move(ended)),
          timer_(loop.no_timer()) {
        client_.tunnel = this;
        client_.fd = client_fd_.get();
        upstream_.tunnel = this;
        upstream_.fd = upstream;
    }

    void start(std::string to_client, std::string to_upstream) {
        auto self = shared_from_this();
        client_.out = std::move(to_client);
        upstream_.out = std::move(to_upstream);
        started_ = Clock::now();
        last_activity_ = started_;
        try {
            loop_.arm(client_.fd, EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET, &client_);
            client_registered_ = true;
            loop_.arm(upstream_.fd, EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET, &upstream_);
            upstream_registered_ = true;
        } catch (const std::system_error& e) {
            fail(e.what());
            return;
        }
        arm_timer();
        pump();
    }

    std::size_t buffered() const override { return client_.pending() + upstream_.pending(); }

    void cancel() override {
        auto self = shared_from_this();
        fail("cancelled");
    }

    // Moves bytes both ways as far as the sockets allow.
    void pump() {
        if (finished_) {
            return;
        }
        auto self = shared_from_this();
        bool moved = true;
        while (moved && !finished_) {
            moved = relay(upstream_, client_);
            moved = relay(client_, upstream_) || moved;
        }
        if (!finished_ && client_.shut && upstream_.shut) {
            finish({TunnelOutcome::Kind::Closed, {}});
        }
    }

  private:
    // One step of the direction from -> to. True when something changed.
    bool relay(Side& from, Side& to) {
        bool changed = flush(to);
        if (finished_) {
            return false;
        }
        if (to.pending() >= limits_.watermark || from.eof || !from.readable) {
            if (from.eof && to.pending() == 0 && !to.shut) {
                to.shut = true;  // the end of from's stream, after all its bytes
                ::shutdown(to.fd, SHUT_WR);
                return true;
            }
            return changed;
        }
        char chunk[kReadChunk];
        ssize_t n = recv(from.fd, chunk, sizeof(chunk), 0);
        if (n > 0) {
            // A short read took everything there was: more data raises a new edge, so the
            // recv() that would only say EAGAIN is saved (one syscall per message each way).
            if (static_cast<std::size_t>(n) < sizeof(chunk) && !from.rdhup) {
                from.readable = false;
            }
            last_activity_ = Clock::now();
            std::string_view data(chunk, static_cast<std::size_t>(n));
            if (to.pending() == 0 && to.writable) {
                data.remove_prefix(send_some(to, data));  // the usual case: no copy
                if (finished_) {
                    return false;
                }
            }
            to.out.append(data);
            return true;
        }
        if (n == 0) {
            from.eof = true;
            from.readable = false;
            return true;
        }
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            from.readable = false;
            return changed;
        }
        if (errno == EINTR) {
            return true;
        }
        fail(
            fmt::format("{}: {}", &from == &client_ ? "client" : "instance", std::strerror(errno)));
        return false;
    }

    // Writes as much of `data` as `to` takes now; returns how much (0 and finished_ on an error).
    std::size_t send_some(Side& to, std::string_view data) {
        while (true) {
            ssize_t n = send(to.fd, data.data(), data.size(), MSG_NOSIGNAL);
            if (n >= 0) {
                to.written += static_cast<std::uint64_t>(n);
                return static_cast<std::size_t>(n);
            }
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                to.writable = false;
                return 0;
            }
            if (errno != EINTR) {
                fail(fmt::format("{}: {}", &to == &client_ ? "client" : "instance",
                                 std::strerror(errno)));
                return 0;
            }
        }
    }

    // Writes what is pending for `to`. True when bytes went out.
    bool flush(Side& to) {
        bool wrote = false;
        while (to.pending() > 0 && to.writable) {
            ssize_t n = send(to.fd, to.out.data() + to.sent, to.pending(), MSG_NOSIGNAL);
            if (n >= 0) {
                to.sent += static_cast<std::size_t>(n);
                to.written += static_cast<std::uint64_t>(n);
                last_activity_ = Clock::now();
                wrote = true;
                continue;
            }
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                to.writable = false;
            } else if (errno != EINTR) {
                fail(fmt::format("{}: {}", &to == &client_ ? "client" : "instance",
                                 std::strerror(errno)));
                return false;
            }
        }
        if (to.sent == to.out.size()) {
            to.out.clear();
            to.sent = 0;
        } else if (to.sent >= kReadChunk && to.sent * 2 >= to.out.size()) {
            to.out.erase(0, to.sent);
            to.sent = 0;
        }
        return wrote;
    }

    Clock::time_point deadline() const {
        auto idle = last_activity_ + limits_.idle;
        return limits_.max_duration ? std::min(idle, started_ + *limits_.max_duration) : idle;
    }

    // One timer; it re-arms itself while activity moved the deadline on. It holds the tunnel.
    void arm_timer() {
        timer_ = loop_.add_timer(deadline(), [this, self = shared_from_this()] {
            timer_ = loop_.no_timer();
            if (finished_) {
                return;
            }
            auto now = Clock::now();
            if (limits_.max_duration && now >= started_ + *limits_.max_duration) {
                fail(fmt::format("open for stream-max-duration ({:g} s)",
                                 std::chrono::duration<double>(*limits_.max_duration).count()));
            } else if (now >= last_activity_ + limits_.idle) {
                fail(fmt::format("no data either way for stream-idle-timeout ({:g} s)",
                                 std::chrono::duration<double>(limits_.idle).count()));
            } else {
                arm_timer();
            }
        });
    }

    void fail(std::string why) {
        if (!finished_) {
            finish({TunnelOutcome::Kind::Failed, std::move(why)});
        }
    }

    void finish(TunnelOutcome outcome) {
        auto self = shared_from_this();
        finished_ = true;
        loop_.cancel_timer(timer_);
        if (client_registered_) {
            loop_.remove(client_.fd);
        }
        if (upstream_registered_) {
            loop_.remove(upstream_.fd);
        }
        client_fd_.reset();
        outcome.to_client = client_.written;
        outcome.to_upstream = upstream_.written;
        std::string().swap(client_.out);
        std::string().swap(upstream_.out);
        loop_.release_later(self);  // a pending event of this batch may still name a side
        if (auto ended = std::move(ended_)) {
            ended(std::move(outcome));
        }
    }

    EventLoop& loop_;
    UniqueFd client_fd_;
    TunnelLimits limits_;
    std::function<void(TunnelOutcome)> ended_;
    EventLoop::TimerId timer_;
    Side client_;
    Side upstream_;
    bool client_registered_ = false;
    bool upstream_registered_ = false;
    bool finished_ = false;
    Clock::time_point started_{};
    Clock::time_point last_activity_{};
};

}  // namespace

std::shared_ptr<Tunnel> open_tunnel(EventLoop& loop, UniqueFd client, std::string to_client,
                                    int upstream, std::string to_upstream, TunnelLimits limits,
                                    std::function<void(TunnelOutcome)> ended) {
    auto tunnel =
        std::make_shared<TunnelImpl>(loop, std::move(client), upstream, limits, std::move(ended));
    tunnel->start(std::move(to_client), std::move(to_upstream));
    return tunnel;
}

}  // namespace unifaas
