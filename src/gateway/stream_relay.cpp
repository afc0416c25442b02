#include "gateway/stream_relay.h"

#include <fmt/format.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstring>

namespace unifaas {

namespace {

using Clock = std::chrono::steady_clock;

constexpr std::size_t kReadChunk = 64 * 1024;
constexpr std::string_view kLastChunk = "0\r\n\r\n";

class StreamRelay : public BodyProducer,
                    public EventLoop::Handler,
                    public std::enable_shared_from_this<StreamRelay> {
  public:
    StreamRelay(std::shared_ptr<HttpExchange> exchange, std::shared_ptr<Lease> lease,
                std::unique_ptr<UpstreamBody> body, StreamLimits limits,
                std::function<void(StreamOutcome)> ended)
        : ex_(std::move(exchange)),
          loop_(ex_->loop()),
          lease_(std::move(lease)),
          body_(std::move(body)),
          limits_(limits),
          ended_(std::move(ended)),
          timer_(loop_.no_timer()) {}

    void start(std::string head, std::shared_ptr<void> hold, bool close_after) {
        auto self = shared_from_this();
        if (!ex_->respond_streaming(std::move(head), self, std::move(hold), close_after)) {
            end_upstream(false);
            report({StreamOutcome::Kind::ClientGone, {}});
            return;
        }
        started_ = Clock::now();
        last_activity_ = started_;
        arm_timer();
        std::string first = std::move(body_->first);
        if (!forward(first, true)) {
            return;
        }
        if (body_->framing == http::BodyFraming::Length && body_->remaining == 0) {
            complete();  // (never: the call returns whole bodies itself)
            return;
        }
        read_upstream();
    }

    // BodyProducer
    void resume() override {
        if (finished_) {
            return;
        }
        auto self = shared_from_this();
        paused_ = false;
        last_activity_ = Clock::now();
        read_upstream();
    }
    void cancel() override {
        if (finished_) {
            return;
        }
        auto self = shared_from_this();
        end_upstream(false);
        report({StreamOutcome::Kind::ClientGone, {}});
    }

    // EventLoop::Handler: the instance's connection is readable.
    void on_events(std::uint32_t) override {
        armed_ = false;  // EPOLLONESHOT
        if (finished_) {
            return;
        }
        auto self = shared_from_this();
        read_upstream();
    }

  private:
    int fd() const { return body_->connection->fd(); }

    void read_upstream() {
        char chunk[kReadChunk];
        while (!paused_ && !finished_) {
            ssize_t n = recv(fd(), chunk, sizeof(chunk), 0);
            if (n > 0) {
                last_activity_ = Clock::now();
                consume(std::string_view(chunk, static_cast<std::size_t>(n)));
                continue;
            }
            if (n == 0) {
                if (body_->framing == http::BodyFraming::UntilClose) {
                    body_->reusable = false;
                    complete();
                } else {
                    fail("closed the connection in the middle of the response body");
                }
                return;
            }
            if (errno == EINTR) {
                continue;
            }
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                arm();
                return;
            }
            fail(std::strerror(errno));
            return;
        }
    }

    void arm() {
        try {
            loop_.arm(fd(), EPOLLIN | EPOLLRDHUP | EPOLLONESHOT, this);
            armed_ = true;
        } catch (const std::system_error& e) {
            fail(e.what());
        }
    }

    // Body bytes from the instance, still in its framing.
    void consume(std::string_view data) {
        switch (body_->framing) {
            case http::BodyFraming::Length: {
                std::size_t take = static_cast<std::size_t>(
                    std::min<std::uint64_t>(data.size(), body_->remaining));
                body_->remaining -= take;
                if (take < data.size()) {
                    body_->reusable = false;  // more than it announced
                }
                if (body_->remaining == 0) {
                    complete(data.substr(0, take));
                    return;
                }
                forward(data.substr(0, take), false);
                return;
            }
            case http::BodyFraming::Chunked: {
                decoded_.clear();
                std::size_t used = body_->decoder.feed(data, decoded_);
                if (body_->decoder.failed()) {
                    fail("invalid chunked response: " + body_->decoder.error());
                    return;
                }
                if (body_->decoder.done()) {
                    if (used < data.size()) {
                        body_->reusable = false;
                    }
                    complete(decoded_);
                    return;
                }
                forward(decoded_, false);
                return;
            }
            default:
                forward(data, false);
                return;
        }
    }

    // Hands decoded body bytes to the client in its framing. False when the relay ended.
    // `always`: write even nothing (the head goes out with the first call).
    bool forward(std::string_view data, bool always) {
        if (data.empty() && !always) {
            return true;
        }
        bool room = write(data, false);
        if (finished_) {
            return false;  // the write found the client gone (cancel() ran)
        }
        paused_ = !room;
        return true;
    }

    // Writes body bytes in the client's framing, with the body's end when `last`: one write.
    bool write(std::string_view data, bool last) {
        bool chunked = body_->downstream == http::DownstreamFraming::Chunked;
        char size_line[24];
        std::string_view pieces[4];
        std::size_t n = 0;
        if (chunked && !data.empty()) {
            auto end = fmt::format_to(size_line, "{:x}\r\n", data.size());
            pieces[n++] = std::string_view(size_line, static_cast<std::size_t>(end - size_line));
            pieces[n++] = data;
            pieces[n++] = "\r\n";
        } else if (!chunked || !last) {
            pieces[n++] = data;
        }
        if (chunked && last) {
            pieces[n++] = kLastChunk;
        }
        return ex_->write_body(std::span<const std::string_view>(pieces, n));
    }

    // The body is whole: the slot is given back first, then its last bytes (`tail`) and end go
    // to the client in one write.
    void complete(std::string_view tail = {}) {
        end_upstream(body_->reusable);
        write(tail, true);
        ex_->end_body();
        report({StreamOutcome::Kind::Complete, {}});
    }

    void fail(std::string why) {
        std::string retired = lease_ ? lease_->retired_reason() : std::string();
        if (!retired.empty()) {
            why = fmt::format("instance {} stopped while streaming ({})", lease_->instance_id(),
                              retired);
        }
        end_upstream(false);
        ex_->abort_body();
        report({StreamOutcome::Kind::Truncated, std::move(why)});
    }

    // The instance's side is over: its connection kept for the next request or dropped, the slot
    // given back.
    void end_upstream(bool reusable) {
        auto self = shared_from_this();
        finished_ = true;
        loop_.cancel_timer(timer_);
        if (armed_) {
            loop_.remove(fd());
            armed_ = false;
        }
        if (reusable) {
            body_->connection->used = true;
        } else {
            lease_->drop_cache();  // in the middle of a body: never reusable
        }
        body_->connection = nullptr;
        lease_.reset();
        loop_.release_later(self);
    }

    void report(StreamOutcome outcome) {
        auto ended = std::move(ended_);
        if (ended) {
            ended(std::move(outcome));
        }
    }

    // One timer for both limits; it re-arms itself when it fires before the current deadline.
    Clock::time_point deadline() const {
        auto idle = last_activity_ + limits_.idle;
        if (limits_.max_duration) {
            return std::min(idle, started_ + *limits_.max_duration);
        }
        return idle;
    }
    void arm_timer() {
        timer_ = loop_.add_timer(deadline(), [this, self = shared_from_this()] { on_timer(); });
    }
    void on_timer() {
        timer_ = loop_.no_timer();
        if (finished_) {
            return;
        }
        auto now = Clock::now();
        if (limits_.max_duration && now >= started_ + *limits_.max_duration) {
            fail(fmt::format("response not complete within stream-max-duration ({:g} s)",
                             std::chrono::duration<double>(*limits_.max_duration).count()));
            return;
        }
        if (paused_) {
            last_activity_ = now;  // waiting for the client, whose connection has its own limit
        } else if (now >= last_activity_ + limits_.idle) {
            fail(fmt::format("no data for stream-idle-timeout ({:g} s)",
                             std::chrono::duration<double>(limits_.idle).count()));
            return;
        }
        arm_timer();
    }

    std::shared_ptr<HttpExchange> ex_;
    EventLoop& loop_;
    std::shared_ptr<Lease> lease_;
    std::unique_ptr<UpstreamBody> body_;
    StreamLimits limits_;
    std::function<void(StreamOutcome)> ended_;
    EventLoop::TimerId timer_;
    Clock::time_point started_{};
    Clock::time_point last_activity_{};
    std::string decoded_;
    bool paused_ = false;
    bool armed_ = false;
    bool finished_ = false;
};

}  // namespace

void relay_stream(const std::shared_ptr<HttpExchange>& exchange, std::shared_ptr<Lease> lease,
                  UpstreamReply reply, StreamLimits limits, std::shared_ptr<void> hold,
                  std::function<void(StreamOutcome)> ended) {
    auto relay = std::make_shared<StreamRelay>(exchange, std::move(lease), std::move(reply.body),
                                               limits, std::move(ended));
    relay->start(std::move(reply.head), std::move(hold), reply.close_after);
}

}  // namespace unifaas
