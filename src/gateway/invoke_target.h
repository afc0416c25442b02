// Parsing of invocation targets: /invoke/<function>/<path…>?<query> -> function + upstream target.
#pragma once

#include <optional>
#include <string>
#include <string_view>

namespace unifaas {

struct InvokeTarget {
    std::string function;         // percent-decoded; not yet validated
    std::string upstream_target;  // "/<path…>?<query>", raw (still percent-encoded)
};

// nullopt when `raw_target` (the request-target as received) is not under /invoke/<name>.
// /invoke/<f> and /invoke/<f>/ both map to "/".
std::optional<InvokeTarget> parse_invoke_target(std::string_view raw_target);

std::string percent_decode(std::string_view text);

}  // namespace unifaas
