#include "gateway/invoke_target.h"

#include "http/message.h"

namespace unifaas {

namespace {

constexpr std::string_view kPrefix = "/invoke/";

}  // namespace

std::string percent_decode(std::string_view text) {
    std::string out;
    out.reserve(text.size());
    for (std::size_t i = 0; i < text.size(); ++i) {
        if (text[i] == '%' && i + 2 < text.size()) {
            int hi = http::hex_value(text[i + 1]);
            int lo = http::hex_value(text[i + 2]);
            if (hi >= 0 && lo >= 0) {
                out.push_back(static_cast<char>(hi * 16 + lo));
                i += 2;
                continue;
            }
        }
        out.push_back(text[i]);
    }
    return out;
}

std::optional<InvokeTarget> parse_invoke_target(std::string_view raw_target) {
    std::string_view path = raw_target;
    std::string_view query;
    if (auto q = raw_target.find('?'); q != std::string_view::npos) {
        path = raw_target.substr(0, q);
        query = raw_target.substr(q);  // keeps the '?'
    }
    if (path.substr(0, kPrefix.size()) != kPrefix) {
        return std::nullopt;
    }
    path.remove_prefix(kPrefix.size());
    auto slash = path.find('/');
    std::string_view name = path.substr(0, slash);
    if (name.empty()) {
        return std::nullopt;
    }
    InvokeTarget out;
    out.function = percent_decode(name);
    if (slash == std::string_view::npos) {
        out.upstream_target = "/";
    } else {
        out.upstream_target = path.substr(slash);
    }
    out.upstream_target += query;
    return out;
}

}  // namespace unifaas
