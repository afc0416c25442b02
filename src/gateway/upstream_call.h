// UpstreamCall: one request to an instance, on an event loop, over the keep-alive connection kept
// in the lease's slot (made on first use, dropped after any error). A connection the instance
// closed while it sat idle is detected by the retry: a request that got no byte back on a reused
// connection is sent once more on a fresh one. The call ends with the response head: a body that
// arrived with it is returned whole; the rest of a longer one is relayed by a StreamRelay
// (gateway/stream_relay) from the connection the reply hands over.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "config/function_spec.h"
#include "gateway/http_server.h"
#include "http/chunked.h"
#include "http/forwarding.h"
#include "pool/pool.h"
#include "util/event_loop.h"
#include "util/unique_fd.h"

namespace unifaas {

// The connection to one slot of an instance. Its fd never changes: a broken connection is
// replaced by a new object (Lease::drop_cache), so abort() from another thread cannot hit a
// reused descriptor (both run under the instance's cache lock).
class UpstreamConnection : public SlotCache {
  public:
    UpstreamConnection(const std::string& address, std::uint16_t port);
    // Makes a request in progress fail now: the loop sees the shutdown as an error or EOF.
    void abort() override;
    int fd() const { return fd_.get(); }

    bool connected = false;
    bool used = false;  // has answered a request before

  private:
    UniqueFd fd_;
};

// The part of a response body still to come when the head (and maybe some body bytes) arrived.
struct UpstreamBody {
    UpstreamConnection* connection = nullptr;               // in the lease's slot cache
    http::BodyFraming framing = http::BodyFraming::Length;  // from the instance: Length,
                                                            // Chunked or UntilClose
    http::DownstreamFraming downstream = http::DownstreamFraming::Length;  // to the client
    std::uint64_t remaining = 0;  // Length: body bytes still to come from the instance
    bool reusable = false;        // the connection may serve the next request after the body
    std::string first;            // decoded body bytes that came with the head
    http::ChunkedDecoder decoder{UINT64_MAX};  // Chunked: its state after `first`
};

// A 101 to an upgrade request: the connection becomes a tunnel (gateway/tunnel) and is never
// reused after it.
struct UpstreamTunnel {
    UpstreamConnection* connection = nullptr;  // in the lease's slot cache
    std::string first;                         // bytes the instance sent after the 101 head
};

struct UpstreamReply {
    int error_status = 0;  // 502 or 504 when the instance gave no (valid) answer
    std::string error;     // then: why
    int status = 0;        // the instance's status code
    std::string head;      // the response head for the client (hop-by-hop headers dropped)
    std::string storage;   // holds the body at [body_offset, body_offset + body_length)
    std::size_t body_offset = 0;
    std::size_t body_length = 0;
    bool close_after = false;  // the client connection ends after this response
    // Set when the body goes on after the head: the head (above) is ready to send, the rest is
    // to be relayed from body->connection.
    std::unique_ptr<UpstreamBody> body;
    // Set when the instance switched protocols (status 101, head ready to send).
    std::unique_ptr<UpstreamTunnel> tunnel;
};

struct UpstreamRequest {
    std::string head;       // the complete request head (http::append_upstream_request_head)
    std::string_view body;  // must stay valid until `done` has run
    // A body still arriving (HttpExchange::body_streaming()): read from it after `head` and
    // `body` went out, sent as it arrives (chunked when chunk_body) with at most about
    // body_watermark bytes pending towards the instance. The head must announce it so.
    std::shared_ptr<HttpExchange> body_source;
    bool chunk_body = false;
    std::size_t body_watermark = 256 * 1024;
    std::string method;
    // The head asks to switch protocols (http::upgrade_protocol): a 101 ends the call with a
    // tunnel instead of being skipped as an interim response.
    bool upgrade = false;
    bool client_keep_alive = true;  // written into the response head
    bool client_http11 = true;      // may get a chunked body
    // request-timeout: 504 when no response head came in time after the body was sent (while a
    // streamed body goes out: when the instance takes none of it for this long)
    Seconds timeout{30};
};

// Runs the request on `loop` (call it there); `done` runs there too, exactly once - unless the
// returned function is called first (on `loop`): it abandons the call (the client left), drops the
// connection and lets go of the lease.
std::function<void()> call_upstream(EventLoop& loop, std::shared_ptr<Lease> lease,
                                    UpstreamRequest request,
                                    std::function<void(UpstreamReply)> done);

}  // namespace unifaas
