// Parsing the head (status line and header fields) of an HTTP/1.x response from an instance.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>
#include <vector>

#include "http/message.h"

namespace unifaas::http {

struct ResponseHead {
    int status = 0;
    std::string_view reason;
    int minor_version = 1;
    std::vector<HeaderField> headers;  // in received order
    std::size_t size = 0;              // bytes of the head including the blank line
    // None for 1xx/204/304 and responses to HEAD; Length; Chunked; UntilClose (no length given).
    BodyFraming framing = BodyFraming::None;
    std::uint64_t content_length = 0;  // with framing Length
    // False for Connection: close, for 1.0 without keep-alive, and for UntilClose.
    bool keep_alive = true;

    // The first field named `name` (case-insensitive).
    std::optional<std::string_view> header(std::string_view name) const;
    // Back to the default state; keeps the capacity of `headers`.
    void clear();
};

// Parses the head at the start of `buffer` into `out` (cleared first; views point into `buffer`),
// the response to a request with `request_method`. Incomplete while no blank line has arrived and
// buffer.size() <= max_head_bytes. Every failure has status 502 (what the daemon answers its own
// client): head too large, more than kMaxHeaderFields fields, malformed status line or fields,
// unsupported version, invalid or differing Content-Length, both Content-Length and
// Transfer-Encoding, a transfer coding other than a single chunked, Transfer-Encoding in 1.0.
// A 1xx response parses as Complete with framing None: an interim one (e.g. 100 Continue) the
// caller skips (out.size bytes) and parses again after it; a 101 Switching Protocols is the end
// of HTTP on the connection (the caller accepts it only for an upgrade request it sent). Accepts
// CRLF and bare LF line ends and a status line without reason phrase ("HTTP/1.1 200").
ParseState parse_response_head(std::string_view buffer, std::size_t max_head_bytes,
                               std::string_view request_method, ResponseHead& out,
                               ParseError& error);

}  // namespace unifaas::http
