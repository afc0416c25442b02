// DrainSwitch: whether this node takes new work. A load balancer in front of the fleet reads it
// (/healthz answers 503 "draining", the agent-check port answers "drain" or "down") and stops
// sending new requests while the node still serves what it already has.
//
//   Serving ──drain()──▶ Draining ──undrain()──▶ Serving
//   any ──begin_shutdown()──▶ Draining (undrain() refused) ──stopping()──▶ Stopping
//
// Drain()/Undrain() over D-Bus toggle Serving/Draining; SIGTERM begins the shutdown: Draining for
// drain-delay (new requests are still served, so nothing is refused while the balancer notices),
// then Stopping (the listener closes, in-flight requests finish within shutdown-grace).
#pragma once

#include <atomic>
#include <functional>
#include <mutex>
#include <optional>
#include <string_view>

namespace unifaas {

enum class NodeState { Serving, Draining, Stopping };

std::string_view to_string(NodeState state);

class DrainSwitch {
  public:
    // Told about every change, on the thread that made it, without the switch's lock held.
    using Listener = std::function<void(NodeState)>;

    // Serving -> Draining. False when the node was not serving (already draining or stopping).
    bool drain();
    // Draining -> Serving. False when not draining, or when the shutdown has begun.
    bool undrain();
    // Draining for good (SIGTERM).
    void begin_shutdown();
    // Stopping: the invocation listener is closed.
    void stopping();

    NodeState state() const { return state_.load(std::memory_order_relaxed); }  // lock-free
    bool draining() const { return state() != NodeState::Serving; }
    bool shutting_down() const;

    void set_listener(Listener listener);

  private:
    // `from`: the state the change needs (none: any); `shutdown`: part of the shutdown.
    bool change(std::optional<NodeState> from, NodeState to, bool shutdown);

    mutable std::mutex mu_;                             // orders the changes
    std::atomic<NodeState> state_{NodeState::Serving};  // read on every response
    bool shutting_down_ = false;
    Listener listener_;
};

}  // namespace unifaas
