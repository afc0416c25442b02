#include "fleet/drain_switch.h"

namespace unifaas {

std::string_view to_string(NodeState state) {
    switch (state) {
        case NodeState::Serving:
            return "serving";
        case NodeState::Draining:
            return "draining";
        case NodeState::Stopping:
            return "stopping";
    }
    return "?";
}

bool DrainSwitch::drain() {
    return change(NodeState::Serving, NodeState::Draining, false);
}

bool DrainSwitch::undrain() {
    return change(NodeState::Draining, NodeState::Serving, false);
}

void DrainSwitch::begin_shutdown() {
    change(std::nullopt, NodeState::Draining, true);
}

void DrainSwitch::stopping() {
    change(std::nullopt, NodeState::Stopping, true);
}

bool DrainSwitch::shutting_down() const {
    std::lock_guard lk(mu_);
    return shutting_down_;
}

void DrainSwitch::set_listener(Listener listener) {
    std::lock_guard lk(mu_);
    listener_ = std::move(listener);
}

bool DrainSwitch::change(std::optional<NodeState> from, NodeState to, bool shutdown) {
    Listener listener;
    {
        std::lock_guard lk(mu_);
        if (!shutdown && shutting_down_) {
            return false;  // a D-Bus call racing SIGTERM changes nothing any more
        }
        shutting_down_ = shutting_down_ || shutdown;
        if ((from && state_ != *from) || state_ == to || state_ == NodeState::Stopping) {
            return false;
        }
        state_.store(to, std::memory_order_relaxed);
        listener = listener_;
    }
    if (listener) {
        listener(to);
    }
    return true;
}

}  // namespace unifaas
