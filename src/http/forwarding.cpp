#include "http/forwarding.h"

#include <array>
#include <charconv>

namespace unifaas::http {

namespace {

constexpr std::array<std::string_view, 12> kDropped = {"Connection",
                                                       "Keep-Alive",
                                                       "Proxy-Connection",
                                                       "Proxy-Authenticate",
                                                       "Proxy-Authorization",
                                                       "TE",
                                                       "Trailer",
                                                       "Transfer-Encoding",
                                                       "Upgrade",
                                                       "Expect",
                                                       "Content-Length",
                                                       "X-Forwarded-For"};

void append_number(std::string& out, std::uint64_t n) {
    char digits[24];
    auto result = std::to_chars(digits, digits + sizeof digits, n);
    out.append(digits, result.ptr);
}

void append_field(std::string& out, std::string_view name, std::string_view value) {
    out.append(name);
    out.append(": ");
    out.append(value);
    out.append("\r\n");
}

// "HTTP/1.1 <status> <reason>\r\n"; the standard phrase when `reason` is empty.
void append_status_line(std::string& out, int status, std::string_view reason) {
    out.append("HTTP/1.1 ");
    append_number(out, static_cast<std::uint64_t>(status));
    out.append(" ");
    out.append(reason.empty() ? reason_phrase(status) : reason);
    out.append("\r\n");
}

// The Connection fields of a head, found once, so each field's check is cheap when there are none.
class ConnectionOptions {
  public:
    explicit ConnectionOptions(std::span<const HeaderField> fields) : fields_(fields) {
        while (!fields_.empty() && !iequals(fields_.front().name, "Connection")) {
            fields_ = fields_.subspan(1);
        }
    }

    // Whether a Connection field names `name`.
    bool names(std::string_view name) const {
        for (const HeaderField& field : fields_) {
            if (iequals(field.name, "Connection") && list_contains(field.value, name)) {
                return true;
            }
        }
        return false;
    }

  private:
    std::span<const HeaderField> fields_;  // from the first Connection field on
};

bool is_body_method(std::string_view method) {
    return method == "POST" || method == "PUT" || method == "PATCH";
}

}  // namespace

bool is_dropped_when_forwarding(std::string_view name) {
    for (std::string_view dropped : kDropped) {
        if (iequals(dropped, name)) {
            return true;
        }
    }
    return false;
}

void append_upstream_request_head(std::string& out, const RequestHead& in,
                                  std::string_view upstream_target, std::string_view upstream_host,
                                  std::string_view client_address, std::uint64_t body_length,
                                  bool chunked_body, std::string_view upgrade) {
    ConnectionOptions connection(in.headers);
    out.append(in.method);
    out.append(" ");
    out.append(upstream_target);
    out.append(" HTTP/1.1\r\n");
    bool host_forwarded = false;
    for (const HeaderField& field : in.headers) {
        if (is_dropped_when_forwarding(field.name) || connection.names(field.name)) {
            continue;
        }
        host_forwarded = host_forwarded || iequals(field.name, "Host");
        append_field(out, field.name, field.value);
    }
    if (!host_forwarded) {
        append_field(out, "Host", upstream_host);
    }
    out.append("X-Forwarded-For: ");
    if (!connection.names("X-Forwarded-For")) {
        for (const HeaderField& field : in.headers) {
            if (iequals(field.name, "X-Forwarded-For") && !field.value.empty()) {
                out.append(field.value);
                out.append(", ");
            }
        }
    }
    out.append(client_address);
    out.append("\r\n");
    if (!upgrade.empty()) {
        out.append("Connection: Upgrade\r\n");
        append_field(out, "Upgrade", upgrade);
    }
    if (chunked_body) {
        out.append("Transfer-Encoding: chunked\r\n");
    } else if (body_length > 0 || is_body_method(in.method)) {
        out.append("Content-Length: ");
        append_number(out, body_length);
        out.append("\r\n");
    }
    out.append("\r\n");
}

std::string_view upgrade_protocol(const RequestHead& in) {
    if (in.minor_version != 1 || in.framing == BodyFraming::Chunked ||
        (in.framing == BodyFraming::Length && in.content_length > 0)) {
        return {};
    }
    if (!ConnectionOptions(in.headers).names("upgrade")) {
        return {};
    }
    return in.header("Upgrade").value_or(std::string_view());
}

void append_upgrade_response_head(std::string& out, const ResponseHead& in) {
    ConnectionOptions connection(in.headers);
    append_status_line(out, in.status, in.reason);
    for (const HeaderField& field : in.headers) {
        if (is_dropped_when_forwarding(field.name) || connection.names(field.name)) {
            continue;
        }
        append_field(out, field.name, field.value);
    }
    out.append("Connection: Upgrade\r\n");
    if (auto upgrade = in.header("Upgrade")) {
        append_field(out, "Upgrade", *upgrade);
    }
    out.append("\r\n");
}

void append_downstream_response_head(std::string& out, const ResponseHead& in,
                                     std::uint64_t body_length, bool keep_alive) {
    append_streamed_response_head(out, in, DownstreamFraming::Length, body_length, keep_alive);
}

void append_streamed_response_head(std::string& out, const ResponseHead& in,
                                   DownstreamFraming framing, std::uint64_t body_length,
                                   bool keep_alive) {
    ConnectionOptions connection(in.headers);
    bool bodiless = in.framing == BodyFraming::None;
    append_status_line(out, in.status, in.reason);
    for (const HeaderField& field : in.headers) {
        bool keep = bodiless && iequals(field.name, "Content-Length");
        if ((!keep && is_dropped_when_forwarding(field.name)) || connection.names(field.name)) {
            continue;
        }
        append_field(out, field.name, field.value);
    }
    if (!bodiless) {
        switch (framing) {
            case DownstreamFraming::Length:
                out.append("Content-Length: ");
                append_number(out, body_length);
                out.append("\r\n");
                break;
            case DownstreamFraming::Chunked:
                out.append("Transfer-Encoding: chunked\r\n");
                break;
            case DownstreamFraming::UntilClose:
                keep_alive = false;
                break;
        }
    }
    if (!keep_alive) {
        out.append("Connection: close\r\n");
    }
    out.append("\r\n");
}

void append_simple_response(std::string& out, int status, std::string_view content_type,
                            std::string_view body, bool keep_alive,
                            std::span<const HeaderField> extra) {
    bool bodiless = (status >= 100 && status < 200) || status == 204;
    append_status_line(out, status, {});
    if (!content_type.empty()) {
        append_field(out, "Content-Type", content_type);
    }
    if (!bodiless) {
        out.append("Content-Length: ");
        append_number(out, body.size());
        out.append("\r\n");
    }
    for (const HeaderField& field : extra) {
        append_field(out, field.name, field.value);
    }
    if (!keep_alive) {
        out.append("Connection: close\r\n");
    }
    out.append("\r\n");
    if (!bodiless) {
        out.append(body);
    }
}

}  // namespace unifaas::http
