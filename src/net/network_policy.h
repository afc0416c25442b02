// NetworkPolicy: what one function's instances may reach beyond answering the gateway
// (function.toml `[network]`). The default reaches only the readiness callback.
#pragma once

#include <string>

namespace unifaas {

struct NetworkPolicy {
    bool egress = false;        // may open connections to the outside, NATed through the
                                // daemon's egress-interface
    bool allow_invoke = false;  // may call the gateway (other functions) on its host-side address

    bool operator==(const NetworkPolicy&) const = default;
    // "callback-only", "callback+invoke", "callback+egress", "callback+invoke+egress".
    std::string describe() const {
        std::string out = "callback";
        if (allow_invoke) {
            out += "+invoke";
        }
        if (egress) {
            out += "+egress";
        }
        return out == "callback" ? "callback-only" : out;
    }
};

}  // namespace unifaas
