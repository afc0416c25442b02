#include "gateway/proxy.h"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstring>
#include <string_view>

namespace unifaas {

namespace {

// RFC 9110 7.6.1 plus headers cpp-httplib adds to requests for its handlers.
constexpr std::array<std::string_view, 14> kDropped = {"Connection",
                                                       "Keep-Alive",
                                                       "Proxy-Connection",
                                                       "Proxy-Authenticate",
                                                       "Proxy-Authorization",
                                                       "TE",
                                                       "Trailer",
                                                       "Transfer-Encoding",
                                                       "Upgrade",
                                                       "Content-Length",
                                                       "REMOTE_ADDR",
                                                       "REMOTE_PORT",
                                                       "LOCAL_ADDR",
                                                       "LOCAL_PORT"};

bool iequals(std::string_view a, std::string_view b) {
    return a.size() == b.size() && strncasecmp(a.data(), b.data(), a.size()) == 0;
}

bool named_in_connection(const httplib::Headers& headers, std::string_view name) {
    auto range = headers.equal_range("Connection");
    for (auto it = range.first; it != range.second; ++it) {
        std::string_view value = it->second;
        while (!value.empty()) {
            auto comma = value.find(',');
            std::string_view token = value.substr(0, comma);
            while (!token.empty() && (token.front() == ' ' || token.front() == '\t')) {
                token.remove_prefix(1);
            }
            while (!token.empty() && (token.back() == ' ' || token.back() == '\t')) {
                token.remove_suffix(1);
            }
            if (iequals(token, name)) {
                return true;
            }
            if (comma == std::string_view::npos) {
                break;
            }
            value.remove_prefix(comma + 1);
        }
    }
    return false;
}

httplib::Headers without_hop_by_hop(const httplib::Headers& in) {
    httplib::Headers out;
    for (const auto& [name, value] : in) {
        bool drop = std::any_of(kDropped.begin(), kDropped.end(),
                                [&](std::string_view d) { return iequals(d, name); });
        if (!drop && !named_in_connection(in, name)) {
            out.emplace(name, value);
        }
    }
    return out;
}

struct UpstreamConnection : SlotCache {
    UpstreamConnection(const std::string& host, int port) : client(host, port) {
        client.set_keep_alive(true);
        client.set_tcp_nodelay(true);
        client.set_url_encode(false);
        client.set_connection_timeout(std::chrono::seconds(5));
    }
    // httplib's stop() shuts the socket down under its own lock, also mid-request.
    void abort() override { client.stop(); }
    httplib::Client client;
};

}  // namespace

httplib::Headers upstream_request_headers(const httplib::Request& in) {
    httplib::Headers out = without_hop_by_hop(in.headers);
    std::string forwarded = in.get_header_value("X-Forwarded-For");
    out.erase("X-Forwarded-For");
    out.emplace("X-Forwarded-For",
                forwarded.empty() ? in.remote_addr : forwarded + ", " + in.remote_addr);
    return out;
}

httplib::Headers downstream_response_headers(const httplib::Headers& in) {
    return without_hop_by_hop(in);
}

httplib::Response forward(Lease& lease, const httplib::Request& in,
                          const std::string& upstream_target, Seconds timeout) {
    auto& client = static_cast<UpstreamConnection&>(lease.cache([&] {
                       return std::make_unique<UpstreamConnection>(lease.address(), lease.port());
                   })).client;
    client.set_read_timeout(std::chrono::duration_cast<std::chrono::microseconds>(timeout));
    client.set_write_timeout(std::chrono::duration_cast<std::chrono::microseconds>(timeout));

    httplib::Request req;
    req.method = in.method;
    req.path = upstream_target;
    req.headers = upstream_request_headers(in);
    req.body = in.body;

    httplib::Response res;
    httplib::Error error = httplib::Error::Success;
    auto started = std::chrono::steady_clock::now();
    if (client.send(req, res, error)) {
        return res;
    }
    lease.drop_cache();  // never reuse a connection in an unknown state
    auto elapsed = std::chrono::steady_clock::now() - started;
    if (std::string reason = lease.retired_reason(); !reason.empty()) {
        throw ProxyError(502, fmt::format("instance {} stopped while serving the request ({})",
                                          lease.instance_id(), reason));
    }
    if (error == httplib::Error::Read && elapsed >= timeout) {
        throw ProxyError(
            504, fmt::format("no response within request-timeout ({:g} s)", timeout.count()));
    }
    if (error == httplib::Error::Connection || error == httplib::Error::ConnectionTimeout) {
        lease.mark_broken(fmt::format("connection to {}:{} failed: {}", lease.address(),
                                      lease.port(), httplib::to_string(error)));
    }
    throw ProxyError(502, fmt::format("instance {} at {}:{}: {}", lease.instance_id(),
                                      lease.address(), lease.port(), httplib::to_string(error)));
}

}  // namespace unifaas
