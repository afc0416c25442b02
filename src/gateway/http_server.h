// HttpServer: HTTP/1.1 on one listening socket, served by a few event loops (one per core by
// default) instead of a thread per connection. A connection reads one request at a time (head,
// then the body by Content-Length or chunked), hands it to the RequestHandler as an HttpExchange
// and reads the next (pipelined) one only after the response has been written. The handler may
// answer at once or later from any thread by posting to exchange->loop().
//
// Limits: head size (431), body size (413), connections (over the limit a new connection is
// closed at once), time to receive a request or send a response (408 / close), idle keep-alive
// time. Like ListeningServer it serves a socket it was given and stops accepting without closing
// it (an activated socket keeps listening for the next start).
#pragma once

#include <sys/socket.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "http/message.h"
#include "http/request_head.h"
#include "util/event_loop.h"
#include "util/unique_fd.h"

namespace unifaas {

// The source of a streamed response body (gateway/stream_relay): the connection asks it for more
// once its output drained, and tells it when the client is gone. Both on the connection's loop.
class BodyProducer {
  public:
    virtual ~BodyProducer() = default;
    // The connection's pending output fell below half the watermark: produce again.
    virtual void resume() = 0;
    // The connection closed (client reset or left, timeout, shutdown): stop, release everything.
    virtual void cancel() = 0;
};

// The consumer of a request body that is still arriving (gateway/upstream_call): the connection
// hands it the body's bytes (decoded when chunked) as they arrive, on the connection's loop.
class BodySink {
  public:
    virtual ~BodySink() = default;
    // The next body bytes. False: enough is pending, stop until HttpExchange::resume_body() - a
    // resume_body() made from inside on_body() (the bytes went out at once) counts too.
    virtual bool on_body(std::string_view data) = 0;
    // The body is complete.
    virtual void on_body_end() = 0;
    // The body cannot be completed: invalid chunking (400) or over the body limit (413).
    virtual void on_body_error(int status, std::string_view problem) = 0;
};

// A client connection taken out of the server (HttpExchange::take_connection).
struct TakenConnection {
    UniqueFd fd;         // non-blocking
    std::string unread;  // what the client sent after the request's head (and body)
};

// One request and its response.
class HttpExchange {
  public:
    virtual ~HttpExchange() = default;

    virtual const http::RequestHead& request() const = 0;
    // The whole body, when it arrived with the head; empty when body_streaming().
    virtual std::string_view body() const = 0;
    // True when the request was handed over with its body still to come (a large or chunked
    // body that had not arrived whole): it is read through read_body().
    virtual bool body_streaming() const = 0;
    // Starts handing the body to `sink` (a 100 Continue went out when it was handed over);
    // nullptr detaches the sink (the body is no longer wanted). A client that leaves mid-body
    // reaches on_client_gone's function, not the sink. On loop().
    virtual void read_body(BodySink* sink) = 0;
    // The sink that said stop can take more.
    virtual void resume_body() = 0;
    virtual const std::string& client_address() const = 0;
    // The loop the connection lives on: respond() must be called there.
    virtual EventLoop& loop() = 0;
    // Whether the connection stays open after this response (the head must say so).
    virtual bool keep_alive() const = 0;

    // Writes `head` (a complete response head) and body[body_offset, body_offset + body_length).
    // Exactly once per exchange, on loop(). `hold` is released once the response is written or
    // the connection is gone (e.g. the lease of an instance slot).
    virtual void respond(std::string head, std::string body, std::size_t body_offset,
                         std::size_t body_length, std::shared_ptr<void> hold) = 0;

    // A streamed response: writes `head` with the first write_body() and then body bytes as the
    // producer hands them over (already framed: chunk sizes are the producer's). False when the
    // connection is gone (then nothing is written and the producer is not called). After the
    // body the connection closes when `close_after` or the head said so.
    virtual bool respond_streaming(std::string head, std::shared_ptr<BodyProducer> producer,
                                   std::shared_ptr<void> hold, bool close_after) = 0;
    // Queues bytes for the client, writing at once what the socket takes. False when the pending
    // output is above the watermark (stop producing until resume()) or the connection is gone.
    virtual bool write_body(std::span<const std::string_view> pieces) = 0;
    // The body is complete: the exchange ends once the pending bytes are written.
    virtual void end_body() = 0;
    // The body cannot be completed: the connection closes now, the client sees it truncated.
    virtual void abort_body() = 0;
    // Called (once, on loop()) when the connection closes before the response was given, e.g.
    // the client reset it while the instance was still working.
    virtual void on_client_gone(std::function<void()> fn) = 0;

    // Instead of a response: the server lets go of the connection without closing it (e.g. for
    // a tunnel after a 101): it is no longer read, timed or answered, and on_client_gone's
    // function is not called (it counts in connections() while the exchange is held). Only for a
    // request whose body arrived whole, on loop(); nullopt when the connection is gone or already
    // answered.
    virtual std::optional<TakenConnection> take_connection() = 0;

    // A response made by the daemon itself.
    void respond_simple(int status, std::string_view content_type, std::string_view body,
                        std::span<const http::HeaderField> extra = {},
                        std::shared_ptr<void> hold = {});
};

class HttpServer {
  public:
    using RequestHandler = std::function<void(std::shared_ptr<HttpExchange>)>;
    // The body of an error the server answers by itself (400, 408, 413, 431, 501, 505): gets the
    // request-target when the head was readable ("" otherwise), the status and what was wrong.
    using ErrorText =
        std::function<std::string(std::string_view target, int status, std::string_view problem)>;

    struct Options {
        unsigned threads = 0;  // 0: one per CPU
        std::size_t max_connections = 4096;
        std::size_t max_head_bytes = 64 * 1024;
        std::size_t max_body_bytes = 6 * 1024 * 1024;
        std::chrono::milliseconds io_timeout{30'000};    // receiving a request, sending a response
        std::chrono::milliseconds idle_timeout{60'000};  // keep-alive without a request
        std::chrono::milliseconds linger{2'000};    // reading what a closing client still sends
        std::size_t stream_watermark = 256 * 1024;  // pending output of a streamed response
        // Hand a request over with its body still to come (HttpExchange::read_body) when it is
        // chunked or longer than 64 KiB and did not arrive with its head; false: bodies whole.
        bool stream_request_bodies = false;
        // The body limit of one request (e.g. its function's), asked once its head is read and
        // only when it has a body; empty: max_body_bytes for every request.
        std::function<std::size_t(const http::RequestHead&)> body_limit;
        // Asked for every response: false answers "Connection: close" and ends the connection
        // after it (a draining node sends its keep-alive clients elsewhere); empty: always true.
        std::function<bool()> keep_alive_allowed;
        // A descriptor every loop serves before the other events of a batch
        // (EventLoop::add_first), and what to do when it is readable: the registry's change
        // watch, so a request read in a batch sees every edit finished before the batch began.
        int first_watch_fd = -1;
        std::function<void()> on_first_watch;
        // The loops run SCHED_BATCH (prefer_batch_scheduling): woken by a peer's write, a loop
        // waits until the writer blocks instead of preempting it, and reads what it wrote whole.
        bool batch_scheduling = false;
    };

    HttpServer(Options options, RequestHandler handler, ErrorText error_text);
    ~HttpServer();  // stop_accepting() + join()
    HttpServer(const HttpServer&) = delete;
    HttpServer& operator=(const HttpServer&) = delete;

    // Takes ownership of a listening socket (made non-blocking) and starts the loops.
    void serve(int listen_fd);
    // Stops accepting; connections in progress go on. Idempotent; any thread but a loop's.
    void stop_accepting();
    // Closes every connection (requests in progress are abandoned) and stops the loops.
    void join();

    std::size_t connections() const;

    struct Shared;  // what every connection needs (options, handler, counters)
  private:
    class Loop;
    std::shared_ptr<Shared> shared_;
    std::vector<std::unique_ptr<Loop>> loops_;
    int listen_fd_ = -1;
    bool started_ = false;
    bool accepting_ = false;
    bool joined_ = false;
};

// "1.2.3.4" or "::1" (IPv4-mapped IPv6 addresses in their IPv4 form).
std::string peer_address(const sockaddr_storage& addr);

}  // namespace unifaas
