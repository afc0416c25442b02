// StreamRelay: the rest of a response body, from the instance to the client as it arrives. The
// head (and any body bytes that came with it) goes out at once; every read from the instance is
// forwarded at once (an SSE event reaches the client when the instance sends it). Framing towards
// the client: Content-Length passed through; chunked to an HTTP/1.1 client when the instance sent
// chunked or no length; close-delimited to an HTTP/1.0 client.
//
// Back-pressure: while the client connection has more than the watermark pending, nothing is read
// from the instance (its TCP window closes); below half of it reading resumes. Memory per stream
// is bounded by the watermark plus one read, whatever the body's size.
//
// The lease is held until the instance's body is whole (then it is given back, before the last
// bytes reach the client). An error after the head (instance closed early, invalid chunking, idle
// or duration limit) cannot become a 502 any more: the client connection is closed without the
// body's end, so the client sees a truncated response. A client that leaves ends the relay and
// gives the slot back at once.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "gateway/http_server.h"
#include "gateway/upstream_call.h"
#include "pool/pool.h"

namespace unifaas {

struct StreamLimits {
    std::chrono::milliseconds idle{60'000};  // no byte from the instance for this long: truncate
    std::optional<std::chrono::milliseconds> max_duration;  // the whole body; none: no cap
};

struct StreamOutcome {
    enum class Kind { Complete, Truncated, ClientGone };
    Kind kind = Kind::Complete;
    std::string why;  // Truncated: what went wrong
};

// Sends reply.head and relays reply.body (set) to `exchange`, on the exchange's loop (call it
// there). `hold` is kept until the response has been written or the connection is gone; `ended`
// runs once, on the loop, when the instance's side is over (complete, truncated, client gone).
void relay_stream(const std::shared_ptr<HttpExchange>& exchange, std::shared_ptr<Lease> lease,
                  UpstreamReply reply, StreamLimits limits, std::shared_ptr<void> hold,
                  std::function<void(StreamOutcome)> ended);

}  // namespace unifaas
