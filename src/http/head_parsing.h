// Internals shared by parse_request_head and parse_response_head; not part of the API.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

#include "http/message.h"

namespace unifaas::http::detail {

// RFC 9110 5.6.2 tchar.
bool is_tchar(unsigned char c);
bool is_token(std::string_view s);
std::string_view trim_ows(std::string_view s);

// Where the head that starts at `from` ends: just past the first empty line (CRLF or LF) at or
// after `from`, looking only inside `window`; 0 while there is none. An empty line right at `from`
// ends an empty head, which then fails as a missing start line.
std::size_t find_head_end(std::string_view window, std::size_t from);

// Reads the lines of a complete head: each without its LF and one CR before it.
class LineReader {
  public:
    explicit LineReader(std::string_view head) : rest_(head) {}
    // False when no LF-terminated line is left.
    bool next(std::string_view& line);

  private:
    std::string_view rest_;
};

enum class FieldsResult { Ok, TooMany, Malformed };

// Parses the header lines after the start line up to the blank line into `out` (appending).
// On Malformed, `message` says why.
FieldsResult parse_fields(LineReader& lines, std::vector<HeaderField>& out,
                          std::string_view& message);

// "HTTP/1.0" -> 0, "HTTP/1.1" -> 1, other "HTTP/<digit>.<digit>" -> kUnsupportedVersion,
// anything else -> kMalformedVersion.
inline constexpr int kUnsupportedVersion = -1;
inline constexpr int kMalformedVersion = -2;
int parse_version(std::string_view version);

// The fields that decide framing and connection handling, gathered in one pass.
struct FieldSummary {
    bool content_length_seen = false;
    bool content_length_valid = true;  // all numeric, no overflow, all equal
    std::uint64_t content_length = 0;
    bool transfer_encoding_seen = false;
    unsigned te_codings = 0;  // non-empty list elements over all Transfer-Encoding fields
    unsigned te_chunked = 0;  // how many of them are "chunked"
    bool te_last_chunked = false;
    bool connection_close = false;
    bool connection_keep_alive = false;
    bool expect_continue = false;
    unsigned host_count = 0;
};
FieldSummary summarize(std::span<const HeaderField> fields);

}  // namespace unifaas::http::detail
