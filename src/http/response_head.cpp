#include "http/response_head.h"

#include "http/head_parsing.h"

namespace unifaas::http {

namespace {

using namespace detail;

ParseState fail(ParseError& error, std::string_view message) {
    error.status = 502;
    error.message.assign(message);
    return ParseState::Failed;
}

bool is_digit(char c) {
    return c >= '0' && c <= '9';
}

// Status line: HTTP-version SP 3DIGIT [SP reason-phrase].
ParseState parse_status_line(std::string_view line, ResponseHead& out, ParseError& error) {
    if (line.size() < 12 || line[8] != ' ' || !is_digit(line[9]) || !is_digit(line[10]) ||
        !is_digit(line[11]) || (line.size() > 12 && line[12] != ' ')) {
        return fail(error, "malformed status line");
    }
    int minor = parse_version(line.substr(0, 8));
    if (minor == kMalformedVersion) {
        return fail(error, "malformed status line");
    }
    if (minor == kUnsupportedVersion) {
        return fail(error, "unsupported HTTP version in response");
    }
    out.minor_version = minor;
    out.status = (line[9] - '0') * 100 + (line[10] - '0') * 10 + (line[11] - '0');
    if (out.status < 100 || out.status > 599) {
        return fail(error, "invalid status code");
    }
    out.reason = line.size() > 12 ? line.substr(13) : std::string_view();
    for (char c : out.reason) {
        auto u = static_cast<unsigned char>(c);
        if ((u < 0x20 && u != '\t') || u == 0x7f) {
            return fail(error, "invalid character in reason phrase");
        }
    }
    return ParseState::Complete;
}

}  // namespace

std::optional<std::string_view> ResponseHead::header(std::string_view name) const {
    return find_header(headers, name);
}

void ResponseHead::clear() {
    status = 0;
    reason = {};
    minor_version = 1;
    headers.clear();
    size = 0;
    framing = BodyFraming::None;
    content_length = 0;
    keep_alive = true;
}

ParseState parse_response_head(std::string_view buffer, std::size_t max_head_bytes,
                               std::string_view request_method, ResponseHead& out,
                               ParseError& error) {
    out.clear();
    std::string_view window = buffer.substr(0, max_head_bytes);
    std::size_t end = find_head_end(window, 0);
    if (end == 0) {
        if (buffer.size() > max_head_bytes) {
            return fail(error, "response head too large");
        }
        return ParseState::Incomplete;
    }
    out.size = end;

    LineReader lines(buffer.substr(0, end));
    std::string_view line;
    lines.next(line);
    if (parse_status_line(line, out, error) == ParseState::Failed) {
        return ParseState::Failed;
    }
    std::string_view message;
    switch (parse_fields(lines, out.headers, message)) {
        case FieldsResult::Ok:
            break;
        case FieldsResult::TooMany:
            return fail(error, "too many header fields in response");
        case FieldsResult::Malformed:
            return fail(error, message);
    }

    FieldSummary fields = summarize(out.headers);
    out.keep_alive = out.minor_version == 1
                         ? !fields.connection_close
                         : fields.connection_keep_alive && !fields.connection_close;
    if (out.status < 200) {
        return ParseState::Complete;  // interim: no body, the final response follows
    }
    if (fields.content_length_seen && !fields.content_length_valid) {
        return fail(error, "invalid Content-Length in response");
    }
    if (request_method == "HEAD" || out.status == 204 || out.status == 304) {
        return ParseState::Complete;
    }
    if (fields.transfer_encoding_seen) {
        if (out.minor_version == 0) {
            return fail(error, "Transfer-Encoding in an HTTP/1.0 response");
        }
        if (fields.content_length_seen) {
            return fail(error, "both Content-Length and Transfer-Encoding in response");
        }
        if (fields.te_codings != 1 || !fields.te_last_chunked) {
            return fail(error, "unsupported transfer coding in response");
        }
        out.framing = BodyFraming::Chunked;
    } else if (fields.content_length_seen) {
        out.framing = BodyFraming::Length;
        out.content_length = fields.content_length;
    } else {
        out.framing = BodyFraming::UntilClose;
        out.keep_alive = false;
    }
    return ParseState::Complete;
}

}  // namespace unifaas::http
