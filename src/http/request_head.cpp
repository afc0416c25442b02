#include "http/request_head.h"

#include "http/head_parsing.h"

namespace unifaas::http {

namespace {

using namespace detail;

ParseState fail(ParseError& error, int status, std::string_view message) {
    error.status = status;
    error.message.assign(message);
    return ParseState::Failed;
}

// Request line: method SP request-target SP HTTP-version.
ParseState parse_request_line(std::string_view line, RequestHead& out, ParseError& error) {
    std::size_t sp1 = line.find(' ');
    if (sp1 == std::string_view::npos) {
        return fail(error, 400, "malformed request line");
    }
    out.method = line.substr(0, sp1);
    if (!is_token(out.method)) {
        return fail(error, 400, "invalid method");
    }
    std::string_view rest = line.substr(sp1 + 1);
    std::size_t sp2 = rest.find(' ');
    if (sp2 == std::string_view::npos) {
        return fail(error, 400, "malformed request line");
    }
    out.target = rest.substr(0, sp2);
    if (out.target.empty()) {
        return fail(error, 400, "empty request target");
    }
    for (char c : out.target) {
        auto u = static_cast<unsigned char>(c);
        if (u <= 0x20 || u == 0x7f) {
            return fail(error, 400, "invalid character in request target");
        }
    }
    int minor = parse_version(rest.substr(sp2 + 1));
    if (minor == kMalformedVersion) {
        return fail(error, 400, "malformed HTTP version");
    }
    if (minor == kUnsupportedVersion) {
        return fail(error, 505, "unsupported HTTP version");
    }
    out.minor_version = minor;
    return ParseState::Complete;
}

// Empty lines (CRLF or LF) a client may send before a request line (RFC 9112 2.2).
std::size_t skip_empty_lines(std::string_view buffer) {
    std::size_t pos = 0;
    for (;;) {
        if (pos < buffer.size() && buffer[pos] == '\n') {
            pos += 1;
        } else if (pos + 1 < buffer.size() && buffer[pos] == '\r' && buffer[pos + 1] == '\n') {
            pos += 2;
        } else {
            return pos;
        }
    }
}

// While the head is incomplete: fail at once if what has arrived cannot start a valid request.
ParseState check_partial(std::string_view buffer, std::size_t start, RequestHead& out,
                         ParseError& error) {
    std::string_view rest = buffer.substr(start);
    std::size_t lf = rest.find('\n');
    if (lf != std::string_view::npos) {
        std::string_view line = rest.substr(0, lf);
        if (!line.empty() && line.back() == '\r') {
            line.remove_suffix(1);
        }
        if (parse_request_line(line, out, error) == ParseState::Failed) {
            return ParseState::Failed;
        }
        out.clear();
        return ParseState::Incomplete;
    }
    // No whole line yet: the method so far must be a token (a lone CR may start an empty line).
    if (rest == "\r") {
        return ParseState::Incomplete;
    }
    for (char c : rest) {
        if (c == ' ') {
            break;
        }
        if (!is_tchar(static_cast<unsigned char>(c))) {
            return fail(error, 400, "invalid method");
        }
    }
    return ParseState::Incomplete;
}

}  // namespace

std::optional<std::string_view> RequestHead::header(std::string_view name) const {
    return find_header(headers, name);
}

void RequestHead::clear() {
    method = {};
    target = {};
    minor_version = 1;
    headers.clear();
    size = 0;
    framing = BodyFraming::None;
    content_length = 0;
    keep_alive = true;
    expect_continue = false;
}

ParseState parse_request_head(std::string_view buffer, std::size_t max_head_bytes, RequestHead& out,
                              ParseError& error) {
    out.clear();
    std::string_view window = buffer.substr(0, max_head_bytes);
    std::size_t start = skip_empty_lines(window);
    std::size_t end = find_head_end(window, start);
    if (end == 0) {
        if (buffer.size() > max_head_bytes) {
            return fail(error, 431, "request head too large");
        }
        return check_partial(buffer, start, out, error);
    }
    out.size = end;

    LineReader lines(buffer.substr(start, end - start));
    std::string_view line;
    lines.next(line);
    if (parse_request_line(line, out, error) == ParseState::Failed) {
        return ParseState::Failed;
    }
    std::string_view message;
    switch (parse_fields(lines, out.headers, message)) {
        case FieldsResult::Ok:
            break;
        case FieldsResult::TooMany:
            return fail(error, 431, "too many header fields");
        case FieldsResult::Malformed:
            return fail(error, 400, message);
    }

    FieldSummary fields = summarize(out.headers);
    if (fields.host_count > 1) {
        return fail(error, 400, "more than one Host header");
    }
    if (fields.transfer_encoding_seen) {
        if (out.minor_version == 0) {
            return fail(error, 400, "Transfer-Encoding in an HTTP/1.0 request");
        }
        if (fields.content_length_seen) {
            return fail(error, 400, "both Content-Length and Transfer-Encoding");
        }
        if (fields.te_codings == 0) {
            return fail(error, 400, "empty Transfer-Encoding");
        }
        if (!fields.te_last_chunked) {
            return fail(error, 501, "final transfer coding is not chunked");
        }
        if (fields.te_chunked > 1) {
            return fail(error, 400, "chunked applied more than once");
        }
        if (fields.te_codings > 1) {
            return fail(error, 501, "unsupported transfer coding");
        }
        out.framing = BodyFraming::Chunked;
    } else if (fields.content_length_seen) {
        if (!fields.content_length_valid) {
            return fail(error, 400, "invalid Content-Length");
        }
        out.framing = BodyFraming::Length;
        out.content_length = fields.content_length;
    }
    out.keep_alive = out.minor_version == 1
                         ? !fields.connection_close
                         : fields.connection_keep_alive && !fields.connection_close;
    out.expect_continue = out.minor_version == 1 && fields.expect_continue;
    return ParseState::Complete;
}

}  // namespace unifaas::http
