// HTTP/1.1 message layer shared by the request and response parsers, the chunked decoder and the
// forwarding helpers: pure functions over string_views, no I/O, no allocation per header.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace unifaas::http {

// How the body after a head is delimited (RFC 9112 6.3).
enum class BodyFraming { None, Length, Chunked, UntilClose };

enum class ParseState { Incomplete, Complete, Failed };

// Views into the parsed buffer; value without leading/trailing OWS.
struct HeaderField {
    std::string_view name;
    std::string_view value;
    friend bool operator==(const HeaderField&, const HeaderField&) = default;
};

// status: what to answer (request heads: 400, 431, 501, 505; response heads: always 502).
// message: short, human ("header line without a colon").
struct ParseError {
    int status = 400;
    std::string message;
};

// More header fields than this in one head: 431 (requests) or 502 (responses).
inline constexpr std::size_t kMaxHeaderFields = 100;

// The interim response to a request with Expect: 100-continue.
inline constexpr std::string_view kContinueResponse = "HTTP/1.1 100 Continue\r\n\r\n";

// The value of the first field named `name` (case-insensitive), as RequestHead::header and
// ResponseHead::header give it.
std::optional<std::string_view> find_header(const std::vector<HeaderField>& headers,
                                            std::string_view name);

// The value of a hex digit (0-9, a-f, A-F), or -1 (chunk sizes, percent-encoding).
int hex_value(char c);

// ASCII case-insensitive equality (header names, tokens); no locale.
bool iequals(std::string_view a, std::string_view b);

// Whether a comma-separated field value (Connection, Transfer-Encoding, ...) has `token` as one of
// its elements, compared case-insensitively after trimming OWS.
bool list_contains(std::string_view list, std::string_view token);

// "OK", "Not Found", ... for the status codes of RFC 9110 (plus 429, 431, 511); "" when unknown.
std::string_view reason_phrase(int status);

}  // namespace unifaas::http
