#include "http/head_parsing.h"

#include <array>
#include <limits>

namespace unifaas::http::detail {

namespace {

constexpr std::array<bool, 256> make_tchar_table() {
    std::array<bool, 256> table{};
    for (int c = '0'; c <= '9'; ++c) {
        table[c] = true;
    }
    for (int c = 'a'; c <= 'z'; ++c) {
        table[c] = true;
        table[c - 'a' + 'A'] = true;
    }
    for (char c : std::string_view("!#$%&'*+-.^_`|~")) {
        table[static_cast<unsigned char>(c)] = true;
    }
    return table;
}

constexpr std::array<bool, 256> kTchar = make_tchar_table();

// field-vchar, SP, HTAB and obs-text: everything but the other controls and DEL.
bool is_value_char(unsigned char c) {
    return (c >= 0x20 && c != 0x7f) || c == '\t';
}

bool is_ows(char c) {
    return c == ' ' || c == '\t';
}

// 1*DIGIT without sign or spaces; false on overflow.
bool parse_decimal(std::string_view s, std::uint64_t& value) {
    if (s.empty()) {
        return false;
    }
    std::uint64_t v = 0;
    for (char c : s) {
        if (c < '0' || c > '9') {
            return false;
        }
        auto digit = static_cast<std::uint64_t>(c - '0');
        if (v > (std::numeric_limits<std::uint64_t>::max() - digit) / 10) {
            return false;
        }
        v = v * 10 + digit;
    }
    value = v;
    return true;
}

void add_content_length(std::string_view value, FieldSummary& summary) {
    // "42" or the same value repeated as a list ("42, 42", RFC 9110 8.6).
    bool first = !summary.content_length_seen;
    summary.content_length_seen = true;
    for (;;) {
        std::size_t comma = value.find(',');
        std::uint64_t n = 0;
        if (!parse_decimal(trim_ows(value.substr(0, comma)), n)) {
            summary.content_length_valid = false;
            return;
        }
        if (!first && n != summary.content_length) {
            summary.content_length_valid = false;
            return;
        }
        first = false;
        summary.content_length = n;
        if (comma == std::string_view::npos) {
            return;
        }
        value.remove_prefix(comma + 1);
    }
}

void add_transfer_encoding(std::string_view value, FieldSummary& summary) {
    for (;;) {
        std::size_t comma = value.find(',');
        std::string_view coding = trim_ows(value.substr(0, comma));
        if (!coding.empty()) {
            bool chunked = iequals(coding, "chunked");
            ++summary.te_codings;
            summary.te_chunked += chunked ? 1 : 0;
            summary.te_last_chunked = chunked;
        }
        if (comma == std::string_view::npos) {
            return;
        }
        value.remove_prefix(comma + 1);
    }
}

void add_connection(std::string_view value, FieldSummary& summary) {
    for (;;) {
        std::size_t comma = value.find(',');
        std::string_view option = trim_ows(value.substr(0, comma));
        if (iequals(option, "close")) {
            summary.connection_close = true;
        } else if (iequals(option, "keep-alive")) {
            summary.connection_keep_alive = true;
        }
        if (comma == std::string_view::npos) {
            return;
        }
        value.remove_prefix(comma + 1);
    }
}

}  // namespace

bool is_tchar(unsigned char c) {
    return kTchar[c];
}

bool is_token(std::string_view s) {
    if (s.empty()) {
        return false;
    }
    for (char c : s) {
        if (!kTchar[static_cast<unsigned char>(c)]) {
            return false;
        }
    }
    return true;
}

std::string_view trim_ows(std::string_view s) {
    while (!s.empty() && is_ows(s.front())) {
        s.remove_prefix(1);
    }
    while (!s.empty() && is_ows(s.back())) {
        s.remove_suffix(1);
    }
    return s;
}

std::size_t find_head_end(std::string_view window, std::size_t from) {
    std::size_t line_begin = from;
    for (;;) {
        std::size_t lf = window.find('\n', line_begin);
        if (lf == std::string_view::npos) {
            return 0;
        }
        std::size_t line_end = lf;
        if (line_end > line_begin && window[line_end - 1] == '\r') {
            --line_end;
        }
        if (line_end == line_begin) {
            return lf + 1;
        }
        line_begin = lf + 1;
    }
}

bool LineReader::next(std::string_view& line) {
    std::size_t lf = rest_.find('\n');
    if (lf == std::string_view::npos) {
        return false;
    }
    line = rest_.substr(0, lf);
    if (!line.empty() && line.back() == '\r') {
        line.remove_suffix(1);
    }
    rest_.remove_prefix(lf + 1);
    return true;
}

FieldsResult parse_fields(LineReader& lines, std::vector<HeaderField>& out,
                          std::string_view& message) {
    std::string_view line;
    while (lines.next(line)) {
        if (line.empty()) {
            return FieldsResult::Ok;
        }
        if (is_ows(line.front())) {
            message = "header line starting with whitespace (obsolete line folding)";
            return FieldsResult::Malformed;
        }
        std::size_t colon = line.find(':');
        if (colon == std::string_view::npos) {
            message = "header line without a colon";
            return FieldsResult::Malformed;
        }
        std::string_view name = line.substr(0, colon);
        if (name.empty()) {
            message = "empty header name";
            return FieldsResult::Malformed;
        }
        if (is_ows(name.back())) {
            message = "whitespace between header name and colon";
            return FieldsResult::Malformed;
        }
        if (!is_token(name)) {
            message = "invalid character in header name";
            return FieldsResult::Malformed;
        }
        std::string_view value = trim_ows(line.substr(colon + 1));
        for (char c : value) {
            if (!is_value_char(static_cast<unsigned char>(c))) {
                message = "invalid character in header value";
                return FieldsResult::Malformed;
            }
        }
        if (out.size() >= kMaxHeaderFields) {
            return FieldsResult::TooMany;
        }
        out.push_back(HeaderField{name, value});
    }
    // Callers pass complete heads, which end with a blank line.
    message = "head without a blank line";
    return FieldsResult::Malformed;
}

int parse_version(std::string_view version) {
    auto digit = [](char c) { return c >= '0' && c <= '9'; };
    if (version.size() != 8 || version.substr(0, 5) != "HTTP/" || !digit(version[5]) ||
        version[6] != '.' || !digit(version[7])) {
        return kMalformedVersion;
    }
    if (version[5] != '1' || (version[7] != '0' && version[7] != '1')) {
        return kUnsupportedVersion;
    }
    return version[7] - '0';
}

FieldSummary summarize(std::span<const HeaderField> fields) {
    FieldSummary summary;
    for (const HeaderField& field : fields) {
        switch (field.name.size()) {
            case 4:
                if (iequals(field.name, "Host")) {
                    ++summary.host_count;
                }
                break;
            case 6:
                if (iequals(field.name, "Expect") && iequals(field.value, "100-continue")) {
                    summary.expect_continue = true;
                }
                break;
            case 10:
                if (iequals(field.name, "Connection")) {
                    add_connection(field.value, summary);
                }
                break;
            case 14:
                if (iequals(field.name, "Content-Length")) {
                    add_content_length(field.value, summary);
                }
                break;
            case 17:
                if (iequals(field.name, "Transfer-Encoding")) {
                    summary.transfer_encoding_seen = true;
                    add_transfer_encoding(field.value, summary);
                }
                break;
            default:
                break;
        }
    }
    return summary;
}

}  // namespace unifaas::http::detail
