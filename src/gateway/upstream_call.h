// UpstreamCall: one request to an instance, on an event loop, over the keep-alive connection kept
// in the lease's slot (made on first use, dropped after any error). A connection the instance
// closed while it sat idle is detected by the retry: a request that got no byte back on a reused
// connection is sent once more on a fresh one.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "config/function_spec.h"
#include "pool/pool.h"
#include "util/event_loop.h"

namespace unifaas {

struct UpstreamReply {
    int error_status = 0;  // 502 or 504 when the instance gave no (valid) answer
    std::string error;     // then: why
    int status = 0;        // the instance's status code
    std::string head;      // the response head for the client (hop-by-hop headers dropped)
    std::string storage;   // holds the body at [body_offset, body_offset + body_length)
    std::size_t body_offset = 0;
    std::size_t body_length = 0;
};

struct UpstreamRequest {
    std::string head;       // the complete request head (http::append_upstream_request_head)
    std::string_view body;  // must stay valid until `done` has run
    std::string method;
    bool client_keep_alive = true;  // written into the response head
    Seconds timeout{30};            // request-timeout: 504 after it
};

// Largest response the daemon buffers for a client (502 beyond).
inline constexpr std::size_t kMaxUpstreamResponseBytes = 256 * 1024 * 1024;

// Runs the request on `loop` (call it there); `done` runs there too, exactly once.
void call_upstream(EventLoop& loop, std::shared_ptr<Lease> lease, UpstreamRequest request,
                   std::function<void(UpstreamReply)> done);

}  // namespace unifaas
