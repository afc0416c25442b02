// Tunnel: after a 101 Switching Protocols (WebSocket or any Upgrade) the exchange is no longer
// HTTP: bytes are relayed both ways between the client's socket and the instance's, on one event
// loop, as they arrive.
//
// Back-pressure per direction: while more than the watermark waits to be written to one side,
// nothing is read from the other (its TCP window closes), so memory stays bounded. Half-close: an
// end of stream (FIN) from one side is passed on to the other with shutdown(SHUT_WR) once what
// came before it is written; the tunnel ends when both directions have ended, on an error or
// reset of either side, when nothing moved for the idle limit, or at the duration cap. Then the
// client's socket is closed and `ended` runs: the caller gives the instance's connection up.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "util/event_loop.h"
#include "util/unique_fd.h"

namespace unifaas {

struct TunnelLimits {
    std::chrono::milliseconds idle{60'000};  // no byte moved either way for this long: end
    std::optional<std::chrono::milliseconds> max_duration;  // the whole tunnel; none: no cap
    std::size_t watermark = 256 * 1024;  // pending bytes towards one side before reading pauses
};

struct TunnelOutcome {
    enum class Kind { Closed, Failed };  // Closed: both sides ended their stream
    Kind kind = Kind::Closed;
    std::string why;  // Failed: what happened (reset, idle, duration)
    std::uint64_t to_upstream = 0;
    std::uint64_t to_client = 0;
};

class Tunnel {
  public:
    virtual ~Tunnel() = default;
    // Bytes read from one side and not yet written to the other (both directions). Loop thread.
    virtual std::size_t buffered() const = 0;
    // Ends the tunnel now (Failed, "cancelled"). Loop thread.
    virtual void cancel() = 0;
};

// Starts relaying on `loop` (call it there). `client` (owned, closed at the end) gets
// `to_client` first (e.g. the 101 head and bytes the instance sent after it), the instance's
// socket `upstream` (not owned: it must stay open until `ended` has run) gets `to_upstream` first
// (bytes the client sent after its request head). Both sockets non-blocking. `ended` runs once, on
// the loop, after both sockets left the loop. The tunnel keeps itself alive until then.
std::shared_ptr<Tunnel> open_tunnel(EventLoop& loop, UniqueFd client, std::string to_client,
                                    int upstream, std::string to_upstream, TunnelLimits limits,
                                    std::function<void(TunnelOutcome)> ended);

}  // namespace unifaas
