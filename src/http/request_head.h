// Parsing the head (request line and header fields) of an HTTP/1.x request.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>
#include <vector>

#include "http/message.h"

namespace unifaas::http {

struct RequestHead {
    std::string_view method, target;
    int minor_version = 1;                    // HTTP/1.0 or HTTP/1.1
    std::vector<HeaderField> headers;         // in received order
    std::size_t size = 0;                     // bytes of the head including the blank line
    BodyFraming framing = BodyFraming::None;  // None, Length (also for Content-Length: 0), Chunked
    std::uint64_t content_length = 0;         // with framing Length
    bool keep_alive = true;  // 1.1 unless Connection: close; 1.0 only with Connection: keep-alive
    bool expect_continue = false;  // Expect: 100-continue (HTTP/1.1 only, RFC 9110 10.1.1)

    // The first field named `name` (case-insensitive).
    std::optional<std::string_view> header(std::string_view name) const;
    // Back to the default state; keeps the capacity of `headers`.
    void clear();
};

// Parses the head at the start of `buffer` into `out` (cleared first; its views point into
// `buffer`). Incomplete while no blank line has arrived and buffer.size() <= max_head_bytes; Failed
// with status 431 beyond that or with more than kMaxHeaderFields fields. Failed 400 for malformed
// request line/headers (bad method token, target empty or with spaces/control characters, header
// name not a token, whitespace before the colon, obs-fold, both Content-Length and
// Transfer-Encoding, differing or non-numeric Content-Length, Transfer-Encoding in HTTP/1.0,
// chunked applied twice, more than one Host), 501 for a Transfer-Encoding with any coding but
// chunked, 505 for versions other than HTTP/1.0 and HTTP/1.1. Accepts CRLF and bare LF line ends
// and ignores empty lines before the request line (counted in `size`). A request line that is
// already malformed fails before the rest of the head arrives. On Failed, `out` is unspecified.
ParseState parse_request_head(std::string_view buffer, std::size_t max_head_bytes, RequestHead& out,
                              ParseError& error);

}  // namespace unifaas::http
