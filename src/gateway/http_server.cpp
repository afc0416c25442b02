#include "gateway/http_server.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <future>
#include <unordered_map>

#include "http/chunked.h"
#include "http/forwarding.h"
#include "util/thread_scheduling.h"

namespace unifaas {

namespace {

using Clock = std::chrono::steady_clock;

constexpr std::size_t kReadChunk = 16 * 1024;
constexpr int kAcceptBatch = 32;
constexpr std::chrono::milliseconds kAcceptPause{100};
// Pipelined bytes read ahead of the request being served.
constexpr std::size_t kReadAhead = 64 * 1024;
// A Content-Length body larger than this that did not arrive with its head is streamed to the
// handler (a chunked one that did not arrive whole always is); a smaller one is read first.
constexpr std::size_t kStreamBodyAbove = 64 * 1024;

// A growable byte buffer that, unlike std::string, does not zero what recv() will overwrite.
class ByteBuffer {
  public:
    std::string_view view() const { return {data_.get(), size_}; }
    std::size_t size() const { return size_; }
    // Room for at least n more bytes at tail().
    void reserve_tail(std::size_t n) {
        if (capacity_ - size_ >= n) {
            return;
        }
        std::size_t cap = std::max(capacity_ * 2, size_ + n);
        auto bigger = std::make_unique_for_overwrite<char[]>(cap);  // not zeroed: not committed
        if (size_ > 0) {
            std::memcpy(bigger.get(), data_.get(), size_);
        }
        data_ = std::move(bigger);
        capacity_ = cap;
    }
    char* tail() { return data_.get() + size_; }
    std::size_t tail_room() const { return capacity_ - size_; }
    void grow(std::size_t n) { size_ += n; }
    // Drops n bytes at `at` (at + n <= size()), keeping what is before them in place.
    void erase(std::size_t at, std::size_t n) {
        std::memmove(data_.get() + at, data_.get() + at + n, size_ - at - n);
        size_ -= n;
    }
    // Drops the first n bytes.
    void consume(std::size_t n) {
        if (n >= size_) {
            size_ = 0;
            return;
        }
        std::memmove(data_.get(), data_.get() + n, size_ - n);
        size_ -= n;
    }

  private:
    std::unique_ptr<char[]> data_;
    std::size_t size_ = 0;
    std::size_t capacity_ = 0;
};

bool would_block(int err) {
    return err == EAGAIN || err == EWOULDBLOCK;
}

}  // namespace

std::string peer_address(const sockaddr_storage& addr) {
    char text[INET6_ADDRSTRLEN] = {};
    if (addr.ss_family == AF_INET6) {
        const auto& in6 = reinterpret_cast<const sockaddr_in6&>(addr);
        if (IN6_IS_ADDR_V4MAPPED(&in6.sin6_addr)) {
            inet_ntop(AF_INET, &in6.sin6_addr.s6_addr[12], text, sizeof(text));
        } else {
            inet_ntop(AF_INET6, &in6.sin6_addr, text, sizeof(text));
        }
    } else if (addr.ss_family == AF_INET) {
        inet_ntop(AF_INET, &reinterpret_cast<const sockaddr_in&>(addr).sin_addr, text,
                  sizeof(text));
    }
    return text;
}

void HttpExchange::respond_simple(int status, std::string_view content_type, std::string_view body,
                                  std::span<const http::HeaderField> extra,
                                  std::shared_ptr<void> hold) {
    std::string head;
    http::append_simple_response(head, status, content_type, body, keep_alive(), extra);
    if (request().method == "HEAD" && std::string_view(head).ends_with(body)) {
        head.resize(head.size() - body.size());  // the GET's Content-Length, no body
    }
    respond(std::move(head), {}, 0, 0, std::move(hold));
}

struct HttpServer::Shared {
    Options options;
    RequestHandler handler;
    ErrorText error_text;
    std::atomic<std::size_t> connections{0};
    std::atomic<unsigned> next_loop{0};
    std::vector<Loop*> loops;
    std::atomic<bool> stopping{false};
    std::atomic<bool> scheduling_warned{false};
};

// ---- ClientConnection --------------------------------------------------------------------------

namespace {

class ClientConnection;

// What a loop keeps of its connections.
class ConnectionSet {
  public:
    virtual ~ConnectionSet() = default;
    virtual void forget(ClientConnection* c) = 0;
};

class ClientConnection : public HttpExchange,
                         public EventLoop::Handler,
                         public std::enable_shared_from_this<ClientConnection> {
  public:
    ClientConnection(HttpServer::Shared& shared, EventLoop& loop, ConnectionSet& set, int fd,
                     std::string address)
        : shared_(shared),
          loop_(loop),
          set_(set),
          fd_(fd),
          address_(std::move(address)),
          decoder_(shared.options.max_body_bytes),
          deadline_timer_(loop.no_timer()) {}

    ~ClientConnection() override { shared_.connections.fetch_sub(1); }

    void open() {
        loop_.add(fd_.get(), EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET, this);
        set_deadline(shared_.options.idle_timeout);
    }

    // HttpExchange
    const http::RequestHead& request() const override { return head_; }
    std::string_view body() const override {
        if (body_streaming_) {
            return {};
        }
        return head_.framing == http::BodyFraming::Chunked
                   ? std::string_view(chunked_body_)
                   : in_.view().substr(head_.size, head_.content_length);
    }
    const std::string& client_address() const override { return address_; }
    EventLoop& loop() override { return loop_; }
    bool keep_alive() const override {
        return head_.keep_alive && !peer_closed_ && !shared_.stopping.load() &&
               (!shared_.options.keep_alive_allowed || shared_.options.keep_alive_allowed()) &&
               (!body_streaming_ || body_done_);  // a body not read whole ends the connection
    }
    bool body_streaming() const override { return body_streaming_; }
    void read_body(BodySink* sink) override {
        if (!body_streaming_ || body_done_ || state_ != State::Handling) {
            return;
        }
        sink_ = sink;
        if (sink_ == nullptr) {
            clear_deadline();  // nobody reads it: the connection closes after the response
            return;
        }
        body_paused_ = false;
        if (!in_progress_) {
            progress();
        }
    }
    void resume_body() override {
        if (delivering_) {
            resumed_while_delivering_ = true;  // on_body() may still say stop: this overrides it
            return;
        }
        if (sink_ == nullptr || !body_paused_) {
            return;
        }
        body_paused_ = false;
        if (!in_progress_) {
            progress();
        }
    }
    void respond(std::string head, std::string body, std::size_t body_offset,
                 std::size_t body_length, std::shared_ptr<void> hold) override {
        if (state_ != State::Handling) {
            return;  // the connection is gone (hold is dropped here)
        }
        on_gone_ = nullptr;
        out_head_ = std::move(head);
        out_body_ = std::move(body);
        body_offset_ = body_offset;
        body_length_ = body_length;
        written_ = 0;
        hold_ = std::move(hold);
        close_after_ = !keep_alive();
        state_ = State::Writing;
        set_deadline(shared_.options.io_timeout);
        if (!in_progress_) {
            progress();
        }
    }

    bool respond_streaming(std::string head, std::shared_ptr<BodyProducer> producer,
                           std::shared_ptr<void> hold, bool close_after) override {
        if (state_ != State::Handling) {
            return false;
        }
        on_gone_ = nullptr;
        stream_out_ = std::move(head);  // goes out with the first body bytes
        stream_sent_ = 0;
        stream_ended_ = false;
        producer_paused_ = false;
        producer_ = std::move(producer);
        hold_ = std::move(hold);
        close_after_ = close_after || !keep_alive();
        state_ = State::Streaming;
        return true;
    }

    bool write_body(std::span<const std::string_view> pieces) override {
        if (state_ != State::Streaming) {
            return false;
        }
        std::size_t sent = 0;
        if (writable_) {
            sent = send_direct(pieces);
            if (state_ != State::Streaming) {
                return false;  // the write failed: closed
            }
        }
        for (std::string_view piece : pieces) {  // what the socket did not take
            std::size_t skip = std::min(sent, piece.size());
            sent -= skip;
            stream_out_.append(piece.substr(skip));
        }
        if (!in_progress_ && pending_stream_bytes() > 0 && writable_) {
            progress();
            if (state_ != State::Streaming) {
                return false;
            }
        }
        if (pending_stream_bytes() > 0) {
            set_deadline(shared_.options.io_timeout);  // the client must take it in time
        }
        if (pending_stream_bytes() >= shared_.options.stream_watermark) {
            producer_paused_ = true;
            return false;
        }
        return true;
    }

    void end_body() override {
        if (state_ != State::Streaming) {
            return;
        }
        stream_ended_ = true;
        producer_.reset();
        if (!in_progress_) {
            progress();
        }
    }

    void abort_body() override {
        if (state_ != State::Streaming) {
            return;
        }
        producer_.reset();  // it is the one aborting
        close();
    }

    std::optional<TakenConnection> take_connection() override {
        if (state_ != State::Handling || (body_streaming_ && !body_done_)) {
            return std::nullopt;
        }
        TakenConnection taken;
        taken.unread = std::string(in_.view().substr(std::min(request_bytes_, in_.size())));
        loop_.remove(fd_.get());
        taken.fd = std::move(fd_);
        on_gone_ = nullptr;
        close();  // forgets the connection; its fd is no longer its own
        return taken;
    }

    void on_client_gone(std::function<void()> fn) override {
        if (state_ == State::Closed) {
            fn();
            return;
        }
        on_gone_ = std::move(fn);
    }

    // EventLoop::Handler
    void on_events(std::uint32_t events) override {
        if (((events & (EPOLLHUP | EPOLLERR)) &&
             (state_ == State::Handling || state_ == State::Streaming)) ||
            ((events & EPOLLRDHUP) && state_ == State::Handling)) {
            // Reset (or closed both ways) while its answer is still being made, or closed (FIN)
            // before it has any answer: the client left (nginx's rule, 499), so the instance's
            // slot is given back now.
            auto self = shared_from_this();
            close();
            return;
        }
        if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) {
            readable_ = true;
        }
        if (events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR)) {
            rdhup_ = true;  // the end of the stream is queued: read until recv() says so
        }
        if (events & (EPOLLOUT | EPOLLHUP | EPOLLERR)) {
            writable_ = true;
        }
        progress();
    }

    void close() {
        if (state_ == State::Closed) {
            return;
        }
        state_ = State::Closed;  // a handler still holding us finds it in respond()
        loop_.cancel_timer(deadline_timer_);
        loop_.remove(fd_.get());
        fd_.reset();
        hold_.reset();
        auto self = shared_from_this();
        loop_.release_later(self);
        set_.forget(this);
        auto producer = std::move(producer_);
        auto gone = std::move(on_gone_);
        if (producer) {
            producer->cancel();
        }
        if (gone) {
            gone();
        }
    }

  private:
    enum class State { Reading, Handling, Writing, Streaming, Lingering, Closed };

    // Advances as far as the socket allows.
    void progress() {
        auto self = shared_from_this();  // a handler may drop the last other reference
        in_progress_ = true;
        bool more = true;
        while (more) {
            switch (state_) {
                case State::Reading:
                    more = advance_reading();
                    break;
                case State::Writing:
                    more = flush();
                    break;
                case State::Streaming:
                    more = flush_stream();
                    break;
                case State::Lingering:
                    more = linger();
                    break;
                case State::Handling:
                    more = sink_ != nullptr && !body_paused_ && advance_body();
                    break;
                case State::Closed:
                    more = false;
                    break;
            }
        }
        in_progress_ = false;
    }

    // Reads what the socket has, up to `limit` bytes buffered. False on a fatal error (closed).
    bool fill(std::size_t limit) {
        while (readable_ && in_.size() < limit) {
            in_.reserve_tail(kReadChunk);
            std::size_t room = std::min(in_.tail_room(), limit - in_.size());
            ssize_t n = recv(fd_.get(), in_.tail(), room, 0);
            if (n > 0) {
                in_.grow(static_cast<std::size_t>(n));
                // A short read took everything there was: data arriving later raises a new edge,
                // so the recv() that would only say EAGAIN is saved (one syscall per request).
                if (static_cast<std::size_t>(n) < room && !rdhup_) {
                    readable_ = false;
                }
                continue;
            }
            if (n == 0) {
                peer_closed_ = true;
                readable_ = false;
            } else if (would_block(errno)) {
                readable_ = false;
            } else if (errno != EINTR) {
                close();
                return false;
            }
        }
        return true;
    }

    // One step of receiving a request. True when the state changed and progress may continue.
    bool advance_reading() {
        const auto& o = shared_.options;
        std::size_t limit = head_complete_ ? request_bytes_wanted() : o.max_head_bytes + 1;
        if (!fill(std::max(limit, kReadAhead))) {
            return false;
        }
        if (in_.size() == 0) {
            if (peer_closed_) {
                close();
            }
            return false;  // idle: the deadline set when the last response ended applies
        }
        if (!request_started_) {
            request_started_ = true;  // the whole head must arrive within io_timeout
            set_deadline(o.io_timeout);
        }
        // The head is parsed once; again only if the buffer moved (its views point into it).
        if (!head_complete_ || head_buffer_ != in_.view().data()) {
            http::ParseError error;
            switch (http::parse_request_head(in_.view(), o.max_head_bytes, head_, error)) {
                case http::ParseState::Incomplete:
                    return wait_for_more();
                case http::ParseState::Failed:
                    refuse(error.status, error.message, {});
                    return true;
                case http::ParseState::Complete:
                    head_buffer_ = in_.view().data();
                    break;
            }
        }
        if (!head_complete_) {
            head_complete_ = true;  // and the body within io_timeout after it
            set_deadline(o.io_timeout);
            body_limit_ = request_body_limit();
            if (body_limit_ != o.max_body_bytes) {
                decoder_.reset(body_limit_);
            }
        }
        switch (head_.framing) {
            case http::BodyFraming::Length:
                if (head_.content_length > body_limit_) {
                    refuse(413, "request body too large", head_.target);
                    return true;
                }
                if (in_.size() < head_.size + head_.content_length) {
                    if (o.stream_request_bodies && head_.content_length > kStreamBodyAbove) {
                        start_body_stream();
                        return true;
                    }
                    // The buffer grows as the body arrives, not by what the head announces:
                    // a few hundred bytes must not commit megabytes.
                    return wait_for_more();
                }
                request_bytes_ = head_.size + head_.content_length;
                break;
            case http::BodyFraming::Chunked: {
                std::string_view rest = in_.view().substr(head_.size + chunked_consumed_);
                chunked_consumed_ += decoder_.feed(rest, chunked_body_);
                if (decoder_.failed()) {
                    if (decoder_.too_large()) {
                        refuse(413, "request body too large", head_.target);
                    } else {
                        refuse(400, decoder_.error(), head_.target);
                    }
                    return true;
                }
                if (!decoder_.done()) {
                    if (o.stream_request_bodies && !peer_closed_) {
                        start_body_stream();
                        return true;
                    }
                    return wait_for_more();
                }
                request_bytes_ = head_.size + chunked_consumed_;
                break;
            }
            default:
                request_bytes_ = head_.size;
        }
        dispatch();
        return true;
    }

    // The body is still coming: the request is handed over now, its body read by read_body().
    // Body bytes are dropped from in_ once the sink has them (the head stays at its start).
    void start_body_stream() {
        body_streaming_ = true;
        body_done_ = false;
        body_paused_ = false;
        request_bytes_ = head_.size;
        if (head_.framing == http::BodyFraming::Length) {
            body_left_ = head_.content_length;
        } else {
            in_.erase(head_.size, chunked_consumed_);  // decoded into chunked_body_
            chunked_consumed_ = 0;
        }
        send_continue();  // the head was accepted (a body over the limit is refused before)
        dispatch();
    }

    // Hands the buffered body bytes to the sink and reads more while it takes them. True when the
    // state changed (closed, or answered while the body was still coming).
    bool advance_body() {
        if (!chunked_body_.empty()) {  // decoded before the request was handed over
            std::string first = std::move(chunked_body_);
            chunked_body_.clear();
            if (!deliver(first)) {
                return state_ != State::Handling;
            }
        }
        while (sink_ != nullptr && !body_paused_ && !body_done_) {
            std::size_t buffered = in_.size() - head_.size;
            if (buffered == 0) {
                if (!fill(head_.size + kReadAhead)) {
                    return true;  // closed
                }
                if (in_.view().data() != head_buffer_) {
                    reparse_head();  // the buffer moved: head_'s views point into it
                }
                if (in_.size() - head_.size > 0) {
                    continue;
                }
                if (peer_closed_) {
                    close();  // the client left in the middle of its body
                    return true;
                }
                set_deadline(shared_.options.io_timeout);  // the client must send it in time
                return false;
            }
            std::string_view raw = in_.view().substr(head_.size);
            if (head_.framing == http::BodyFraming::Length) {
                auto take =
                    static_cast<std::size_t>(std::min<std::uint64_t>(raw.size(), body_left_));
                body_left_ -= take;
                body_done_ = body_left_ == 0;
                std::string piece(raw.substr(0, take));  // (the sink may read the socket)
                in_.erase(head_.size, take);
                if (!deliver(piece)) {
                    return state_ != State::Handling;
                }
            } else {
                std::string decoded;
                in_.erase(head_.size, decoder_.feed(raw, decoded));
                if (decoder_.failed()) {
                    head_.keep_alive = false;
                    auto sink = std::exchange(sink_, nullptr);
                    sink->on_body_error(
                        decoder_.too_large() ? 413 : 400,
                        decoder_.too_large() ? "request body too large" : decoder_.error());
                    return state_ != State::Handling;
                }
                body_done_ = decoder_.done();
                if (!deliver(decoded)) {
                    return state_ != State::Handling;
                }
            }
        }
        return state_ != State::Handling;
    }

    // Gives decoded body bytes (maybe none) to the sink, and the end once the body is whole.
    // False when the sink said stop, is gone, or the state changed.
    bool deliver(std::string_view data) {
        set_deadline(shared_.options.io_timeout);  // the body progressed
        delivering_ = true;
        resumed_while_delivering_ = false;
        bool room = data.empty() || sink_->on_body(data);
        delivering_ = false;
        room = room || resumed_while_delivering_;  // a resume during on_body() is not lost
        if (state_ != State::Handling || sink_ == nullptr) {
            return false;
        }
        if (body_done_) {
            clear_deadline();
            auto sink = std::exchange(sink_, nullptr);
            sink->on_body_end();
            return false;
        }
        if (!room) {
            body_paused_ = true;
            clear_deadline();  // waiting for the instance, whose call keeps its own time
            return false;
        }
        return true;
    }

    void reparse_head() {
        http::ParseError error;
        http::parse_request_head(in_.view(), shared_.options.max_head_bytes, head_, error);
        head_buffer_ = in_.view().data();
    }

    std::size_t request_body_limit() const {
        const auto& o = shared_.options;
        bool has_body = head_.framing == http::BodyFraming::Chunked ||
                        (head_.framing == http::BodyFraming::Length && head_.content_length > 0);
        return has_body && o.body_limit ? o.body_limit(head_) : o.max_body_bytes;
    }

    std::size_t request_bytes_wanted() const {
        if (head_.framing == http::BodyFraming::Length) {
            return head_.size + head_.content_length;
        }
        return in_.size() + kReadChunk;  // chunked: whatever comes
    }

    bool wait_for_more() {
        if (readable_) {
            return true;  // reading stopped at the read-ahead limit: the socket has more
        }
        if (peer_closed_) {
            close();  // half a request, and nothing more will come
            return false;
        }
        if (head_complete_) {
            send_continue();
        }
        return false;
    }

    void send_continue() {
        if (head_.expect_continue && !continue_sent_) {
            continue_sent_ = true;
            auto line = http::kContinueResponse;
            // Best effort: a socket that cannot take 25 bytes now gets the body without it.
            (void)!send(fd_.get(), line.data(), line.size(), MSG_NOSIGNAL);
        }
    }

    void dispatch() {
        state_ = State::Handling;
        clear_deadline();
        shared_.handler(shared_from_this());
        if (state_ == State::Handling && (peer_closed_ || rdhup_)) {
            // The client closed (FIN) after its request: what it is not answered at once (the
            // daemon's own endpoints are) it gives up, like a client that resets.
            close();
        }
    }

    // An error the server answers by itself; the connection closes after it.
    void refuse(int status, std::string_view problem, std::string_view target) {
        std::string text = shared_.error_text(target, status, problem);
        std::string head;
        http::append_simple_response(head, status, "text/plain; charset=utf-8", text, false);
        state_ = State::Handling;
        head_.keep_alive = false;
        respond(std::move(head), {}, 0, 0, {});
    }

    // Writes what is pending. True when the response is done and progress may continue.
    bool flush() {
        while (true) {
            std::size_t head_left = written_ < out_head_.size() ? out_head_.size() - written_ : 0;
            std::size_t body_done = written_ - (out_head_.size() - head_left);
            std::size_t body_left = body_length_ - body_done;
            if (head_left + body_left == 0) {
                break;
            }
            if (!writable_) {
                return false;
            }
            iovec iov[2];
            int n = 0;
            if (head_left > 0) {
                iov[n++] = {out_head_.data() + written_, head_left};
            }
            if (body_left > 0) {
                iov[n++] = {out_body_.data() + body_offset_ + body_done, body_left};
            }
            msghdr msg{};
            msg.msg_iov = iov;
            msg.msg_iovlen = n;
            ssize_t sent = sendmsg(fd_.get(), &msg, MSG_NOSIGNAL);
            if (sent < 0) {
                if (retry_after_send_error(errno)) {
                    continue;
                }
                return false;
            }
            written_ += static_cast<std::size_t>(sent);
        }
        finish_exchange();
        return true;
    }

    std::size_t pending_stream_bytes() const { return stream_out_.size() - stream_sent_; }

    // The pending bytes and then `pieces` in one sendmsg, when nothing is pending or the socket
    // takes everything. Returns how many of the pieces' bytes went out; closes on an error.
    std::size_t send_direct(std::span<const std::string_view> pieces) {
        constexpr std::size_t kMaxPieces = 8;
        iovec iov[kMaxPieces + 1];
        int n = 0;
        std::size_t pending = pending_stream_bytes();
        if (pending > 0) {
            iov[n++] = {stream_out_.data() + stream_sent_, pending};
        }
        for (std::string_view piece : pieces.first(std::min(pieces.size(), kMaxPieces))) {
            if (!piece.empty()) {
                iov[n++] = {const_cast<char*>(piece.data()), piece.size()};
            }
        }
        if (pieces.size() > kMaxPieces) {
            return 0;  // (never: the relay writes at most four pieces)
        }
        if (n == 0) {
            return 0;  // nothing to send (an empty end of a body that is not chunked)
        }
        msghdr msg{};
        msg.msg_iov = iov;
        msg.msg_iovlen = static_cast<std::size_t>(n);
        while (true) {
            ssize_t sent = sendmsg(fd_.get(), &msg, MSG_NOSIGNAL);
            if (sent >= 0) {
                auto done = static_cast<std::size_t>(sent);
                std::size_t from_pending = std::min(done, pending);
                stream_sent_ += from_pending;
                compact_stream();
                if (done > 0) {
                    set_deadline(shared_.options.io_timeout);  // progress
                }
                return done - from_pending;
            }
            if (would_block(errno)) {
                writable_ = false;
                return 0;
            }
            if (errno != EINTR) {
                close();
                return 0;
            }
        }
    }

    void compact_stream() {
        if (stream_sent_ == stream_out_.size()) {
            stream_out_.clear();
            stream_sent_ = 0;
        } else if (stream_sent_ >= kReadChunk && stream_sent_ * 2 >= stream_out_.size()) {
            stream_out_.erase(0, stream_sent_);
            stream_sent_ = 0;
        }
    }

    // A send on the client socket failed with `err`: true when it is worth trying again
    // (EINTR); otherwise the connection waits for EPOLLOUT (would block) or is closed (error).
    bool retry_after_send_error(int err) {
        if (err == EINTR) {
            return true;
        }
        if (would_block(err)) {
            writable_ = false;
        } else {
            close();
        }
        return false;
    }

    // Writes the pending bytes of a streamed response. True when the state changed (the
    // response ended) or the producer was resumed and may have written more.
    bool flush_stream() {
        while (pending_stream_bytes() > 0) {
            if (!writable_) {
                return false;
            }
            ssize_t sent = send(fd_.get(), stream_out_.data() + stream_sent_,
                                pending_stream_bytes(), MSG_NOSIGNAL);
            if (sent < 0) {
                if (retry_after_send_error(errno)) {
                    continue;
                }
                return false;
            }
            stream_sent_ += static_cast<std::size_t>(sent);
            set_deadline(shared_.options.io_timeout);  // writes that progress are activity
            compact_stream();
            if (producer_paused_ && pending_stream_bytes() < shared_.options.stream_watermark / 2) {
                producer_paused_ = false;
                auto producer = producer_;
                producer->resume();  // may write more, end or abort the body
                return state_ == State::Streaming;
            }
        }
        clear_deadline();  // waiting for the producer, which keeps its own idle time
        if (stream_ended_) {
            finish_exchange();
            return true;
        }
        if (producer_paused_) {
            producer_paused_ = false;
            auto producer = producer_;
            producer->resume();
            return state_ == State::Streaming;
        }
        return false;
    }

    void finish_exchange() {
        hold_.reset();  // e.g. gives the instance slot back
        producer_.reset();
        on_gone_ = nullptr;
        if (stream_out_.capacity() > kReadAhead) {
            std::string().swap(stream_out_);  // a finished stream keeps no buffer
        }
        stream_out_.clear();
        stream_sent_ = 0;
        out_head_.clear();
        out_body_.clear();
        in_.consume(request_bytes_);
        request_bytes_ = 0;
        head_complete_ = false;
        request_started_ = false;
        continue_sent_ = false;
        chunked_consumed_ = 0;
        chunked_body_.clear();
        body_streaming_ = false;
        sink_ = nullptr;
        decoder_.reset(shared_.options.max_body_bytes);
        if (close_after_) {
            // Whatever the client still sends is read and dropped until it closes: closing with
            // unread data would reset the connection and could destroy the response in flight.
            shutdown(fd_.get(), SHUT_WR);
            state_ = State::Lingering;
            set_deadline(shared_.options.linger);
            return;
        }
        state_ = State::Reading;
        set_deadline(shared_.options.idle_timeout);
    }

    bool linger() {
        char sink[4096];
        while (readable_) {
            ssize_t n = recv(fd_.get(), sink, sizeof(sink), 0);
            if (n > 0) {
                continue;
            }
            if (n < 0 && would_block(errno)) {
                readable_ = false;
                return false;
            }
            if (n < 0 && errno == EINTR) {
                continue;
            }
            break;  // EOF or error
        }
        if (!readable_) {
            return false;
        }
        close();
        return false;
    }

    // One timer per connection: moving the deadline later is an assignment, and the timer re-arms
    // itself when it fires early.
    void set_deadline(std::chrono::milliseconds after) {
        deadline_ = Clock::now() + after;
        if (deadline_timer_ == loop_.no_timer()) {
            deadline_timer_ = loop_.add_timer(deadline_, [this] { on_deadline(); });
        } else if (deadline_timer_->first > deadline_) {
            loop_.cancel_timer(deadline_timer_);
            deadline_timer_ = loop_.add_timer(deadline_, [this] { on_deadline(); });
        }
    }
    void clear_deadline() { deadline_ = Clock::time_point::max(); }

    void on_deadline() {
        deadline_timer_ = loop_.no_timer();
        if (deadline_ == Clock::time_point::max()) {
            return;
        }
        if (Clock::now() < deadline_) {
            deadline_timer_ = loop_.add_timer(deadline_, [this] { on_deadline(); });
            return;
        }
        auto self = shared_from_this();
        if (state_ == State::Reading && in_.size() > 0) {
            refuse(408, "request not received in time", head_complete_ ? head_.target : "");
            progress();
            return;
        }
        close();  // idle, a client not reading its response, or a lingering one
    }

    HttpServer::Shared& shared_;
    EventLoop& loop_;
    ConnectionSet& set_;
    UniqueFd fd_;
    std::string address_;

    State state_ = State::Reading;
    bool in_progress_ = false;
    bool readable_ = false;
    bool writable_ = true;
    bool peer_closed_ = false;
    bool rdhup_ = false;

    ByteBuffer in_;
    http::RequestHead head_;
    bool request_started_ = false;
    bool head_complete_ = false;
    const char* head_buffer_ = nullptr;  // where head_ was parsed
    bool continue_sent_ = false;
    std::size_t request_bytes_ = 0;
    http::ChunkedDecoder decoder_;
    std::size_t body_limit_ = 0;  // of the request being read
    std::size_t chunked_consumed_ = 0;
    std::string chunked_body_;
    // A body handed over while it arrives (start_body_stream).
    bool body_streaming_ = false;
    bool body_done_ = false;
    bool body_paused_ = false;
    bool delivering_ = false;                // inside sink_->on_body()
    bool resumed_while_delivering_ = false;  // resume_body() came from inside it
    std::uint64_t body_left_ = 0;            // Content-Length: still to come
    BodySink* sink_ = nullptr;

    std::string out_head_;
    std::string out_body_;
    std::size_t body_offset_ = 0;
    std::size_t body_length_ = 0;
    std::size_t written_ = 0;
    std::shared_ptr<void> hold_;
    bool close_after_ = false;

    // A streamed response: bytes not yet written are stream_out_[stream_sent_, size).
    std::string stream_out_;
    std::size_t stream_sent_ = 0;
    std::shared_ptr<BodyProducer> producer_;
    bool producer_paused_ = false;
    bool stream_ended_ = false;
    std::function<void()> on_gone_;

    Clock::time_point deadline_ = Clock::time_point::max();
    EventLoop::TimerId deadline_timer_;
};

}  // namespace

// ---- Loop --------------------------------------------------------------------------------------

class HttpServer::Loop : public EventLoop::Handler, public ConnectionSet {
  public:
    Loop(Shared& shared, unsigned index) : shared_(shared), index_(index) {}

    EventLoop& events() { return loop_; }

    void start() {
        std::function<void()> first;
        if (shared_.options.batch_scheduling) {
            first = [this] { use_batch_scheduling(); };
        }
        loop_.start("http-" + std::to_string(index_), std::move(first));
    }

    // Loop thread.
    void listen(int fd) {
        listen_fd_ = fd;
        loop_.add(fd, EPOLLIN | EPOLLEXCLUSIVE, this);
    }
    void watch_first(int fd, const std::function<void()>& on_readable) {
        first_watch_.on_readable = on_readable;
        loop_.add_first(fd, &first_watch_);
    }
    void unlisten() {
        if (listen_fd_ >= 0) {
            loop_.remove(listen_fd_);
            listen_fd_ = -1;
        }
    }
    // stop_accepting(): no pause may end in listening again.
    void stop_listening() {
        paused_for_good_ = true;
        unlisten();
    }
    void adopt(int fd, std::string address) {
        auto c = std::make_shared<ClientConnection>(shared_, loop_, *this, fd, std::move(address));
        try {
            c->open();
        } catch (const std::exception& e) {
            spdlog::warn("http: cannot serve a connection: {}", e.what());
            return;  // c closes the fd
        }
        connections_.emplace(c.get(), std::move(c));
    }
    void close_all() {
        while (!connections_.empty()) {
            auto c = connections_.begin()->second;
            c->close();
        }
    }
    void forget(ClientConnection* c) override { connections_.erase(c); }

    // The listening socket is readable.
    void on_events(std::uint32_t) override {
        for (int i = 0; i < kAcceptBatch && listen_fd_ >= 0; ++i) {
            sockaddr_storage addr{};
            socklen_t len = sizeof(addr);
            int fd = accept4(listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len,
                             SOCK_NONBLOCK | SOCK_CLOEXEC);
            if (fd < 0) {
                if (errno == EINTR || errno == ECONNABORTED) {
                    continue;
                }
                if (!would_block(errno)) {
                    out_of_resources(errno);
                }
                return;
            }
            if (shared_.connections.fetch_add(1) >= shared_.options.max_connections) {
                shared_.connections.fetch_sub(1);
                ::close(fd);
                warn_limit();
                continue;
            }
            // Round robin over the loops: one wake-up may accept many connections.
            Loop* target = shared_.loops[shared_.next_loop.fetch_add(1) % shared_.loops.size()];
            std::string address = peer_address(addr);
            if (target == this) {
                adopt(fd, std::move(address));
            } else {
                target->loop_.post([target, fd, address = std::move(address)]() mutable {
                    target->adopt(fd, std::move(address));
                });
            }
        }
    }

  private:
    struct FirstWatch : EventLoop::Handler {
        std::function<void()> on_readable;
        void on_events(std::uint32_t) override { on_readable(); }
    };
    FirstWatch first_watch_;

    // accept() failed for want of descriptors or memory: the connection stays in the backlog
    // and the socket stays readable, so accepting is paused instead of spinning on the error.
    void out_of_resources(int err) {
        auto now = Clock::now();
        if (now - last_accept_warning_ > std::chrono::seconds(10)) {
            last_accept_warning_ = now;
            spdlog::warn("http: accept: {}: pausing new connections for {} ms", std::strerror(err),
                         kAcceptPause.count());
        }
        int fd = listen_fd_;
        unlisten();
        loop_.add_timer(now + kAcceptPause, [this, fd] {
            if (listen_fd_ < 0 && !paused_for_good_) {
                listen(fd);
            }
        });
    }

    void use_batch_scheduling() {
        std::error_code error = prefer_batch_scheduling();
        if (error && !shared_.scheduling_warned.exchange(true)) {
            spdlog::warn("http: the invocation loops keep their scheduling policy: SCHED_BATCH: {}",
                         error.message());
        }
    }

    void warn_limit() {
        auto now = Clock::now();
        if (now - last_limit_warning_ > std::chrono::seconds(10)) {
            last_limit_warning_ = now;
            spdlog::warn("http: {} connections open (the limit): refusing new ones",
                         shared_.options.max_connections);
        }
    }

    Shared& shared_;
    unsigned index_;
    EventLoop loop_;
    int listen_fd_ = -1;
    std::unordered_map<ClientConnection*, std::shared_ptr<ClientConnection>> connections_;
    Clock::time_point last_limit_warning_{};
    Clock::time_point last_accept_warning_{};
    bool paused_for_good_ = false;
};

// ---- HttpServer --------------------------------------------------------------------------------

HttpServer::HttpServer(Options options, RequestHandler handler, ErrorText error_text)
    : shared_(std::make_shared<Shared>()) {
    if (options.threads == 0) {
        long cpus = sysconf(_SC_NPROCESSORS_ONLN);
        options.threads = cpus > 0 ? static_cast<unsigned>(cpus) : 1;
    }
    shared_->options = options;
    shared_->handler = std::move(handler);
    shared_->error_text = std::move(error_text);
    for (unsigned i = 0; i < options.threads; ++i) {
        loops_.push_back(std::make_unique<Loop>(*shared_, i));
        shared_->loops.push_back(loops_.back().get());
    }
}

std::size_t HttpServer::connections() const {
    return shared_->connections.load();
}

HttpServer::~HttpServer() {
    stop_accepting();
    join();
}

namespace {

// Runs fn on a loop and waits for it.
void run_on(EventLoop& loop, const std::function<void()>& fn) {
    std::promise<void> done;
    loop.post([&] {
        fn();
        done.set_value();
    });
    done.get_future().wait();
}

}  // namespace

void HttpServer::serve(int listen_fd) {
    // Accepted connections inherit TCP_NODELAY: a response written while an earlier one is
    // unacknowledged (pipelining, 100 Continue) must not wait for the client's delayed ACK.
    int one = 1;
    setsockopt(listen_fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    int flags = fcntl(listen_fd, F_GETFL);
    fcntl(listen_fd, F_SETFL, flags | O_NONBLOCK);
    listen_fd_ = listen_fd;
    for (auto& loop : loops_) {
        loop->start();
    }
    started_ = true;
    for (auto& loop : loops_) {
        Loop* l = loop.get();
        const Options& o = shared_->options;
        run_on(l->events(), [l, listen_fd, &o] {
            if (o.first_watch_fd >= 0) {
                l->watch_first(o.first_watch_fd, o.on_first_watch);
            }
            l->listen(listen_fd);
        });
    }
    accepting_ = true;
}

void HttpServer::stop_accepting() {
    if (!accepting_) {
        return;
    }
    accepting_ = false;
    for (auto& loop : loops_) {
        Loop* l = loop.get();
        run_on(l->events(), [l] { l->stop_listening(); });
    }
}

void HttpServer::join() {
    stop_accepting();
    shared_->stopping.store(true);
    if (!started_ || joined_) {
        return;
    }
    joined_ = true;
    for (auto& loop : loops_) {
        Loop* l = loop.get();
        run_on(l->events(), [l] { l->close_all(); });
        l->events().stop();
    }
    for (auto& loop : loops_) {
        loop->events().join();
    }
    if (listen_fd_ >= 0) {
        ::close(listen_fd_);
        listen_fd_ = -1;
    }
}

}  // namespace unifaas
