#include "gateway/upstream_call.h"

#include <arpa/inet.h>
#include <fmt/format.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include <cerrno>
#include <cstring>
#include <system_error>

#include "http/chunked.h"
#include "http/forwarding.h"
#include "http/response_head.h"
#include "util/unique_fd.h"

namespace unifaas {

UpstreamConnection::UpstreamConnection(const std::string& address, std::uint16_t port) {
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(port);
    if (inet_pton(AF_INET, address.c_str(), &addr.sin_addr) != 1) {
        throw std::system_error(EINVAL, std::generic_category(), "address " + address);
    }
    fd_.reset(socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    if (!fd_) {
        throw std::system_error(errno, std::generic_category(), "socket");
    }
    int one = 1;
    setsockopt(fd_.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    // Closed with a reset: the instance is often gone by then (single-use, stopped), and a FIN to
    // a guest that never acknowledges it would be retransmitted to its address while the next
    // guest boots there.
    linger abortive{1, 0};
    setsockopt(fd_.get(), SOL_SOCKET, SO_LINGER, &abortive, sizeof(abortive));
    if (connect(fd_.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0) {
        connected = true;
    } else if (errno != EINPROGRESS) {
        throw std::system_error(errno, std::generic_category(), "connect");
    }
}

void UpstreamConnection::abort() {
    shutdown(fd_.get(), SHUT_RDWR);
}

namespace {

using Clock = std::chrono::steady_clock;

constexpr std::size_t kMaxResponseHead = 64 * 1024;
constexpr std::size_t kReadChunk = 64 * 1024;
// Content-Length bodies up to this size are buffered whole rather than streamed.
constexpr std::size_t kCoalesceBody = 16 * 1024;
// An instance that does not accept within this is broken (its address is local: a live guest
// answers in well under a millisecond).
constexpr auto kConnectTimeout = std::chrono::seconds(5);

class UpstreamCall : public EventLoop::Handler,
                     public BodySink,
                     public std::enable_shared_from_this<UpstreamCall> {
  public:
    UpstreamCall(EventLoop& loop, std::shared_ptr<Lease> lease, UpstreamRequest request,
                 std::function<void(UpstreamReply)> done)
        : loop_(loop),
          lease_(std::move(lease)),
          req_(std::move(request)),
          done_(std::move(done)),
          timer_(loop.no_timer()),
          connect_timer_(loop.no_timer()),
          decoder_(UINT64_MAX),
          streamed_body_(req_.body_source != nullptr) {}

    void start() {
        extend_deadline();
        arm_timer();
        open();
    }

    // BodySink: the client's body, as it arrives.
    bool on_body(std::string_view data) override {
        if (state_ == State::Done) {
            return false;
        }
        if (req_.chunk_body) {
            char size_line[24];
            auto end = fmt::format_to(size_line, "{:x}\r\n", data.size());
            pending_.append(size_line, end);
            pending_.append(data);
            pending_.append("\r\n");
        } else {
            pending_.append(data);
        }
        extend_deadline();  // the client sends its body: the exchange is alive
        client_paused_ = pending_.size() - pending_sent_ >= req_.body_watermark;
        if (!in_send_) {
            pump();  // may send it all and resume the client at once
        }
        // What is true now: a pump that drained pending_ has cleared client_paused_, and its
        // resume_body() came while the source was still delivering, so it must not pause.
        return !client_paused_;
    }
    void on_body_end() override {
        if (state_ == State::Done) {
            return;
        }
        body_ended_ = true;
        if (req_.chunk_body) {
            pending_.append("0\r\n\r\n");
        }
        if (!in_send_) {
            pump();
        }
    }
    void on_body_error(int status, std::string_view problem) override {
        body_source_failed_ = true;
        fail(status, std::string(problem));
    }

    // The client left: nothing more is done for it.
    void cancel() {
        if (state_ == State::Done) {
            return;
        }
        auto self = shared_from_this();
        done_ = nullptr;
        finish({}, Fate::Drop);
    }

    void on_events(std::uint32_t events) override {
        armed_ = false;  // EPOLLONESHOT: one event, then the registration stays, disarmed
        if (state_ == State::Done) {
            return;
        }
        if (state_ == State::Connecting && (events & (EPOLLOUT | EPOLLERR | EPOLLHUP))) {
            int err = 0;
            socklen_t len = sizeof(err);
            getsockopt(conn_->fd(), SOL_SOCKET, SO_ERROR, &err, &len);
            if (err != 0) {
                connect_failed(err);
                return;
            }
            conn_->connected = true;
            loop_.cancel_timer(connect_timer_);
            state_ = State::Sending;
        }
        if (state_ == State::Sending && waiting_for_client_body() &&
            (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))) {
            // The instance answers (or closes) before the body is whole: the rest is not sent.
            stop_body();
            state_ = State::Receiving;
        }
        pump();
    }

  private:
    // Sends and receives as far as the sockets allow, then waits for what the state needs.
    void pump() {
        auto self = shared_from_this();
        if (state_ == State::Sending) {
            send_request();
        }
        if (state_ == State::Receiving) {
            receive();
        }
        arm();
    }

    // A streamed body: everything handed over so far is sent, more is to come from the client.
    bool waiting_for_client_body() const {
        return req_.body_source != nullptr && body_started_ && !body_ended_ &&
               pending_sent_ == pending_.size() && sent_ == req_.head.size() + req_.body.size();
    }

    // The client's body is not wanted any more.
    void stop_body() {
        if (auto source = std::move(req_.body_source)) {
            if (!body_ended_) {
                source->read_body(nullptr);
            }
        }
    }

    // The request body went to the instance whole (one given at once always does).
    bool body_whole() const { return !streamed_body_ || body_ended_; }

    void extend_deadline() {
        deadline_ = Clock::now() + std::chrono::duration_cast<Clock::duration>(req_.timeout);
    }
    // One timer: moving the deadline later is an assignment; it re-arms when it fires early.
    void arm_timer() {
        timer_ = loop_.add_timer(deadline_, [this, self = shared_from_this()] {
            timer_ = loop_.no_timer();
            if (Clock::now() < deadline_) {
                arm_timer();
                return;
            }
            fail(504, body_started_ && !body_ended_
                          ? fmt::format("request body stalled for request-timeout ({:g} s)",
                                        req_.timeout.count())
                          : fmt::format("no response within request-timeout ({:g} s)",
                                        req_.timeout.count()));
        });
    }
    enum class State { Connecting, Sending, Receiving, Done };

    void open() {
        if (req_.body_source && !retried_) {
            // A streamed body cannot be sent twice: no retry on a kept connection the instance may
            // have closed meanwhile, so a new one.
            lease_->drop_cache();
        }
        try {
            conn_ = &static_cast<UpstreamConnection&>(lease_->cache([&] {
                return std::make_unique<UpstreamConnection>(lease_->address(), lease_->port());
            }));
        } catch (const std::system_error& e) {
            int err = e.code().value();
            if (err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM) {
                // The daemon's shortage, not the instance's fault: it stays in service.
                fail(503, std::string("no socket for the instance: ") + std::strerror(err));
                return;
            }
            connect_failed(err);
            return;
        }
        reused_ = conn_->used;
        state_ = conn_->connected ? State::Sending : State::Connecting;
        if (state_ == State::Connecting) {
            connect_timer_ =
                loop_.add_timer(Clock::now() + kConnectTimeout, [this, self = shared_from_this()] {
                    connect_timer_ = loop_.no_timer();
                    connect_failed(ETIMEDOUT);
                });
        }
        if (state_ == State::Sending) {
            send_request();
            if (state_ == State::Receiving) {
                receive();
            }
        }
        arm();
    }

    // Waits for what the state needs. The connection's registration stays in the loop between
    // calls, disarmed (EPOLLONESHOT): one epoll_ctl per wait instead of an add/remove pair per
    // request. A disarmed registration reports nothing, so its stale handler pointer is never
    // used; closing the socket removes it.
    void arm() {
        if (state_ == State::Done || conn_ == nullptr) {
            return;
        }
        std::uint32_t events = state_ == State::Receiving || waiting_for_client_body()
                                   ? EPOLLIN | EPOLLRDHUP
                                   : EPOLLOUT;
        try {
            loop_.arm(conn_->fd(), events | EPOLLONESHOT, this);
            armed_ = true;
        } catch (const std::system_error& e) {
            fail(502, e.what());
        }
    }

    void send_request() {
        while (true) {
            std::size_t total = req_.head.size() + req_.body.size();
            if (sent_ == total) {
                if (req_.body_source && !send_streamed_body()) {
                    return;
                }
                state_ = State::Receiving;
                return;
            }
            iovec iov[2];
            int n = 0;
            if (sent_ < req_.head.size()) {
                iov[n++] = {req_.head.data() + sent_, req_.head.size() - sent_};
            }
            std::size_t body_sent = sent_ > req_.head.size() ? sent_ - req_.head.size() : 0;
            if (body_sent < req_.body.size()) {
                iov[n++] = {const_cast<char*>(req_.body.data()) + body_sent,
                            req_.body.size() - body_sent};
            }
            msghdr msg{};
            msg.msg_iov = iov;
            msg.msg_iovlen = n;
            ssize_t w = sendmsg(conn_->fd(), &msg, MSG_NOSIGNAL);
            if (w >= 0) {
                sent_ += static_cast<std::size_t>(w);
                continue;
            }
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                return;
            }
            if (errno != EINTR) {
                io_failed(errno);
                return;
            }
        }
    }

    // After the head: the client's body as it arrives. True once it went out whole.
    bool send_streamed_body() {
        in_send_ = true;
        if (!body_started_) {
            body_started_ = true;
            req_.body_source->read_body(this);  // hands over what is buffered at once
        }
        while (state_ == State::Sending) {
            while (pending_sent_ < pending_.size()) {
                ssize_t w = send(conn_->fd(), pending_.data() + pending_sent_,
                                 pending_.size() - pending_sent_, MSG_NOSIGNAL);
                if (w >= 0) {
                    pending_sent_ += static_cast<std::size_t>(w);
                    extend_deadline();  // the instance takes the body: it is working
                    continue;
                }
                if (errno == EINTR) {
                    continue;
                }
                in_send_ = false;
                if (errno != EAGAIN && errno != EWOULDBLOCK) {
                    io_failed(errno);
                }
                return false;
            }
            pending_.clear();
            pending_sent_ = 0;
            if (body_ended_) {
                in_send_ = false;
                extend_deadline();  // request-timeout counts from the end of the body
                return true;
            }
            if (!client_paused_) {
                break;  // waiting for the client
            }
            client_paused_ = false;
            req_.body_source->resume_body();  // may hand over more (into pending_) or end it
            if (pending_.empty() && !body_ended_) {
                break;
            }
        }
        in_send_ = false;
        return false;
    }

    void receive() {
        char chunk[kReadChunk];
        while (state_ == State::Receiving) {
            ssize_t n = recv(conn_->fd(), chunk, sizeof(chunk), 0);
            if (n > 0) {
                buffer_.append(chunk, static_cast<std::size_t>(n));
                if (!parse()) {
                    return;
                }
                continue;
            }
            if (n == 0) {
                end_of_stream();
                return;
            }
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                return;
            }
            if (errno != EINTR) {
                io_failed(errno);
                return;
            }
        }
    }

    // Parses what has arrived; completes the call when the response is whole. False once done.
    bool parse() {
        while (!head_done_) {
            http::ParseError error;
            auto state = http::parse_response_head(std::string_view(buffer_).substr(head_start_),
                                                   kMaxResponseHead, req_.method, head_, error);
            if (state == http::ParseState::Incomplete) {
                return true;
            }
            if (state == http::ParseState::Failed) {
                fail(502, "invalid response: " + error.message);
                return false;
            }
            if (head_.status == 101) {
                if (!req_.upgrade) {
                    fail(502, "invalid response: unexpected 101 Switching Protocols");
                    return false;
                }
                head_done_ = true;
                body_start_ = head_start_ + head_.size;
                hand_over_tunnel();
                return false;
            }
            if (head_.status >= 100 && head_.status < 200) {
                head_start_ += head_.size;  // interim (100 Continue): the real one follows
                continue;
            }
            head_done_ = true;
            body_start_ = head_start_ + head_.size;
        }
        std::size_t have = buffer_.size() - body_start_;
        switch (head_.framing) {
            case http::BodyFraming::None:
                complete(body_start_, 0, have != 0);
                return false;
            case http::BodyFraming::Length:
                if (have < head_.content_length && head_.content_length <= kCoalesceBody) {
                    // A small body that did not arrive with its head (a function that writes
                    // head and body separately) follows within microseconds: waiting for it
                    // answers in one buffered write instead of setting up a stream relay and
                    // writing the client twice.
                    return true;
                }
                if (have < head_.content_length) {
                    stream_body();
                    return false;
                }
                complete(body_start_, head_.content_length, have != head_.content_length);
                return false;
            case http::BodyFraming::Chunked: {
                chunked_consumed_ += decoder_.feed(
                    std::string_view(buffer_).substr(body_start_ + chunked_consumed_), body_);
                if (decoder_.failed()) {
                    fail(502, "invalid chunked response: " + decoder_.error());
                    return false;
                }
                if (!decoder_.done()) {
                    stream_body();
                    return false;
                }
                complete_chunked(body_start_ + chunked_consumed_ != buffer_.size());
                return false;
            }
            case http::BodyFraming::UntilClose:
                stream_body();
                return false;
        }
        return true;
    }

    void end_of_stream() {
        if (buffer_.empty() && retry()) {
            return;
        }
        fail(502, buffer_.empty() ? "closed the connection without a response"
                                  : "closed the connection in the middle of the response");
    }

    void io_failed(int err) {
        if (buffer_.empty() && retry()) {
            return;
        }
        fail(502, std::strerror(err));
    }

    void connect_failed(int err) {
        std::string reason = fmt::format("connection to {}:{} failed: {}", lease_->address(),
                                         lease_->port(), std::strerror(err));
        lease_->mark_broken(reason);
        fail(502, reason);
    }

    // A reused connection the instance had closed: send the request again on a new one.
    bool retry() {
        if (!reused_ || retried_ || body_started_ || !lease_->retired_reason().empty()) {
            return false;  // (a retired instance's connections were shut down on purpose)
        }
        retried_ = true;
        unregister();
        lease_->drop_cache();
        conn_ = nullptr;
        sent_ = 0;
        open();
        return true;
    }

    // head_'s views point into buffer_, which may have grown (moved) since the head was parsed.
    void reparse_head() {
        http::ParseError error;
        http::parse_response_head(std::string_view(buffer_).substr(head_start_), kMaxResponseHead,
                                  req_.method, head_, error);
    }

    void complete(std::size_t offset, std::size_t length, bool trailing_garbage) {
        reparse_head();
        UpstreamReply reply;
        reply.status = head_.status;
        bool keep_alive = req_.client_keep_alive && body_whole();
        http::append_downstream_response_head(reply.head, head_, length, keep_alive);
        bool reusable = head_.keep_alive && !trailing_garbage && body_whole();
        reply.close_after = !keep_alive;
        reply.storage = std::move(buffer_);  // after the head: its views point into buffer_
        reply.body_offset = offset;
        reply.body_length = length;
        finish(std::move(reply), reusable ? Fate::Reuse : Fate::Drop);
    }

    // The head is here, the body goes on: the reply hands the connection to a relay.
    void stream_body() {
        reparse_head();
        auto body = std::make_unique<UpstreamBody>();
        body->connection = conn_;
        body->framing = head_.framing;
        bool keep_alive = req_.client_keep_alive && body_whole();
        if (head_.framing == http::BodyFraming::Length) {
            body->downstream = http::DownstreamFraming::Length;
        } else if (req_.client_http11) {
            body->downstream = http::DownstreamFraming::Chunked;
        } else {
            body->downstream = http::DownstreamFraming::UntilClose;
            keep_alive = false;
        }
        body->reusable =
            head_.keep_alive && head_.framing != http::BodyFraming::UntilClose && body_whole();
        if (head_.framing == http::BodyFraming::Chunked) {
            body->first = std::move(body_);
            body->decoder = decoder_;
        } else {
            body->first = buffer_.substr(body_start_);
            if (head_.framing == http::BodyFraming::Length) {
                body->remaining = head_.content_length - body->first.size();
            }
        }
        UpstreamReply reply;
        reply.status = head_.status;
        http::append_streamed_response_head(reply.head, head_, body->downstream,
                                            head_.content_length, keep_alive);
        reply.close_after = !keep_alive;
        reply.body = std::move(body);
        finish(std::move(reply), Fate::HandOver);
    }

    // The instance switched protocols: the reply hands the connection to a tunnel.
    void hand_over_tunnel() {
        reparse_head();
        UpstreamReply reply;
        reply.status = head_.status;
        http::append_upgrade_response_head(reply.head, head_);
        reply.tunnel = std::make_unique<UpstreamTunnel>();
        reply.tunnel->connection = conn_;
        reply.tunnel->first = buffer_.substr(body_start_);
        finish(std::move(reply), Fate::HandOver);
    }

    void complete_chunked(bool trailing_garbage) {
        reparse_head();
        UpstreamReply reply;
        reply.status = head_.status;
        bool keep_alive = req_.client_keep_alive && body_whole();
        http::append_downstream_response_head(reply.head, head_, body_.size(), keep_alive);
        bool reusable = head_.keep_alive && !trailing_garbage && body_whole();
        reply.close_after = !keep_alive;
        reply.body_length = body_.size();
        reply.storage = std::move(body_);
        finish(std::move(reply), reusable ? Fate::Reuse : Fate::Drop);
    }

    void fail(int status, std::string message) {
        if (state_ == State::Done) {
            return;
        }
        UpstreamReply reply;
        reply.error_status = status;
        std::string retired = lease_->retired_reason();
        if (!retired.empty()) {
            reply.error_status = 502;
            reply.error = fmt::format("instance {} stopped while serving the request ({})",
                                      lease_->instance_id(), retired);
        } else if (status == 504 || body_source_failed_) {
            reply.error = std::move(message);  // (the client's body was at fault: 400, 413)
        } else {
            reply.error = fmt::format("instance {} at {}:{}: {}", lease_->instance_id(),
                                      lease_->address(), lease_->port(), message);
        }
        finish(std::move(reply), Fate::Drop);
    }

    // What becomes of the connection when the call ends.
    enum class Fate { Reuse, Drop, HandOver };

    void finish(UpstreamReply reply, Fate fate) {
        auto self = shared_from_this();  // the timer may hold the last other reference
        state_ = State::Done;
        stop_body();
        loop_.cancel_timer(timer_);
        loop_.cancel_timer(connect_timer_);
        unregister();
        if (conn_ && fate == Fate::Reuse) {
            conn_->used = true;
        } else if (conn_ && fate == Fate::Drop) {
            lease_->drop_cache();  // never reuse a connection in an unknown state
        }
        conn_ = nullptr;
        // The caller holds its own reference: the slot is free the moment it lets go, not when
        // the loop gets round to releasing this call.
        lease_.reset();
        loop_.release_later(self);
        auto done = std::move(done_);
        if (done) {
            done(std::move(reply));
        }
    }

    // Finishing while armed (timeout, abort, error): the registration must not report to this
    // call any more.
    void unregister() {
        if (armed_ && conn_) {
            loop_.remove(conn_->fd());
        }
        armed_ = false;
    }

    EventLoop& loop_;
    std::shared_ptr<Lease> lease_;
    UpstreamRequest req_;
    std::function<void(UpstreamReply)> done_;
    EventLoop::TimerId timer_;
    EventLoop::TimerId connect_timer_;

    State state_ = State::Connecting;
    UpstreamConnection* conn_ = nullptr;
    bool armed_ = false;
    bool reused_ = false;
    bool retried_ = false;
    std::size_t sent_ = 0;
    Clock::time_point deadline_{};

    // A streamed request body: bytes handed over by the client, framed for the instance, not yet
    // sent are pending_[pending_sent_, size).
    std::string pending_;
    std::size_t pending_sent_ = 0;
    bool body_started_ = false;
    bool body_ended_ = false;
    bool client_paused_ = false;  // on_body said stop: resume_body() once pending_ is sent
    bool in_send_ = false;        // inside send_streamed_body: on_body only queues
    bool body_source_failed_ = false;

    std::string buffer_;
    http::ResponseHead head_;
    bool head_done_ = false;
    std::size_t head_start_ = 0;
    std::size_t body_start_ = 0;
    http::ChunkedDecoder decoder_;
    std::size_t chunked_consumed_ = 0;
    std::string body_;
    const bool streamed_body_;
};

}  // namespace

std::function<void()> call_upstream(EventLoop& loop, std::shared_ptr<Lease> lease,
                                    UpstreamRequest request,
                                    std::function<void(UpstreamReply)> done) {
    auto call =
        std::make_shared<UpstreamCall>(loop, std::move(lease), std::move(request), std::move(done));
    call->start();
    return [weak = std::weak_ptr<UpstreamCall>(call)] {
        if (auto c = weak.lock()) {
            c->cancel();
        }
    };
}

}  // namespace unifaas
