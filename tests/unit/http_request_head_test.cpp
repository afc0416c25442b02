#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

#include "http/request_head.h"

namespace unifaas::http {
namespace {

constexpr std::size_t kMax = 8192;

// Owns a copy of the parsed text (on the heap, so moving Parsed keeps the views valid).
struct Parsed {
    std::shared_ptr<const std::string> buffer;
    ParseState state;
    RequestHead head;
    ParseError error;
};

Parsed parse(std::string_view buffer, std::size_t max = kMax) {
    Parsed p;
    p.buffer = std::make_shared<const std::string>(buffer);
    p.state = parse_request_head(*p.buffer, max, p.head, p.error);
    return p;
}

// Parses `text` (one request head) and expects Failed with `status`.
void expect_failure(const std::string& text, int status) {
    SCOPED_TRACE(testing::PrintToString(text));
    Parsed p = parse(text);
    EXPECT_EQ(p.state, ParseState::Failed);
    EXPECT_EQ(p.error.status, status);
    EXPECT_FALSE(p.error.message.empty());
}

void expect_failure_in_header(const std::string& field_line, int status) {
    expect_failure("POST /f HTTP/1.1\r\nHost: a\r\n" + field_line + "\r\n\r\n", status);
}

const std::string kGet =
    "GET /function/echo?x=1 HTTP/1.1\r\n"
    "Host: localhost:8080\r\n"
    "User-Agent: curl/8.0\r\n"
    "Accept: */*\r\n"
    "\r\n";

TEST(HttpRequestHead, ParsesRequestLineAndHeaders) {
    Parsed p = parse(kGet);
    ASSERT_EQ(p.state, ParseState::Complete);
    EXPECT_EQ(p.head.method, "GET");
    EXPECT_EQ(p.head.target, "/function/echo?x=1");
    EXPECT_EQ(p.head.minor_version, 1);
    EXPECT_EQ(p.head.size, kGet.size());
    EXPECT_EQ(p.head.framing, BodyFraming::None);
    EXPECT_EQ(p.head.content_length, 0u);
    EXPECT_TRUE(p.head.keep_alive);
    EXPECT_FALSE(p.head.expect_continue);
    std::vector<HeaderField> expected = {
        {"Host", "localhost:8080"}, {"User-Agent", "curl/8.0"}, {"Accept", "*/*"}};
    EXPECT_EQ(p.head.headers, expected);
}

TEST(HttpRequestHead, ViewsPointIntoTheBuffer) {
    Parsed p = parse(kGet);
    ASSERT_EQ(p.state, ParseState::Complete);
    std::string_view buffer = *p.buffer;
    auto inside = [&](std::string_view v) {
        return v.data() >= buffer.data() && v.data() + v.size() <= buffer.data() + buffer.size();
    };
    EXPECT_TRUE(inside(p.head.method));
    EXPECT_TRUE(inside(p.head.target));
    for (const HeaderField& field : p.head.headers) {
        EXPECT_TRUE(inside(field.name));
        EXPECT_TRUE(inside(field.value));
    }
}

TEST(HttpRequestHead, EveryPrefixIsIncomplete) {
    const std::string heads[] = {
        kGet,
        "POST /f HTTP/1.1\nHost: a\nContent-Length: 3\n\n",  // bare LF
        "GET / HTTP/1.0\r\n\r\n",
        "PUT /x HTTP/1.1\r\nA: 1\nB:2\r\n\n",  // mixed line ends
        "\r\n\nGET / HTTP/1.1\r\n\r\n",        // empty lines before the request line
    };
    for (const std::string& head : heads) {
        SCOPED_TRACE(testing::PrintToString(head));
        for (std::size_t n = 0; n < head.size(); ++n) {
            Parsed p = parse(std::string_view(head).substr(0, n));
            ASSERT_EQ(p.state, ParseState::Incomplete) << "prefix of " << n << " bytes";
        }
        Parsed p = parse(head);
        ASSERT_EQ(p.state, ParseState::Complete);
        EXPECT_EQ(p.head.size, head.size());
        // What follows the head (a body, the next request) does not change the result.
        Parsed q = parse(head + "abcGET / HTTP/1.1\r\n\r\n");
        ASSERT_EQ(q.state, ParseState::Complete);
        EXPECT_EQ(q.head.size, head.size());
    }
}

TEST(HttpRequestHead, BareLineFeeds) {
    std::string head = "POST /f HTTP/1.1\nHost: a\nContent-Length: 3\n\n";
    std::string buffer = head + "abc";
    Parsed p = parse(buffer);
    ASSERT_EQ(p.state, ParseState::Complete);
    EXPECT_EQ(p.head.size, head.size());
    EXPECT_EQ(p.head.headers.size(), 2u);
    EXPECT_EQ(p.head.header("host"), "a");
    EXPECT_EQ(p.head.framing, BodyFraming::Length);
    EXPECT_EQ(p.head.content_length, 3u);
}

TEST(HttpRequestHead, EmptyLinesBeforeTheRequestLineAreSkippedAndCounted) {
    std::string text = "\r\n\r\nGET /a HTTP/1.1\r\nHost: x\r\n\r\n";
    Parsed p = parse(text);
    ASSERT_EQ(p.state, ParseState::Complete);
    EXPECT_EQ(p.head.method, "GET");
    EXPECT_EQ(p.head.target, "/a");
    EXPECT_EQ(p.head.size, text.size());
}

TEST(HttpRequestHead, PipelinedRequestFollowsTheFirstHead) {
    std::string first = "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n";
    std::string second = "GET /b HTTP/1.1\r\nHost: y\r\n\r\n";
    std::string buffer = first + "hello" + second + "GET /c";

    Parsed p = parse(buffer);
    ASSERT_EQ(p.state, ParseState::Complete);
    EXPECT_EQ(p.head.target, "/a");
    EXPECT_EQ(p.head.size, first.size());
    ASSERT_EQ(p.head.framing, BodyFraming::Length);
    ASSERT_EQ(p.head.content_length, 5u);

    std::string_view rest = std::string_view(buffer).substr(p.head.size + p.head.content_length);
    Parsed q = parse(rest);
    ASSERT_EQ(q.state, ParseState::Complete);
    EXPECT_EQ(q.head.method, "GET");
    EXPECT_EQ(q.head.target, "/b");
    EXPECT_EQ(q.head.header("Host"), "y");
    EXPECT_EQ(q.head.size, second.size());

    EXPECT_EQ(parse(rest.substr(q.head.size)).state, ParseState::Incomplete);
}

TEST(HttpRequestHead, HeaderLookupIsCaseInsensitiveAndReturnsTheFirst) {
    Parsed p = parse(
        "GET / HTTP/1.1\r\nHost: h\r\nX-Thing: one\r\nx-thing: two\r\nEmpty:\r\n"
        "Spaces: \t a  b \t\r\n\r\n");
    ASSERT_EQ(p.state, ParseState::Complete);
    EXPECT_EQ(p.head.header("x-thing"), "one");
    EXPECT_EQ(p.head.header("X-THING"), "one");
    EXPECT_EQ(p.head.header("HOST"), "h");
    EXPECT_EQ(p.head.header("empty"), "");
    EXPECT_TRUE(p.head.header("empty").has_value());
    EXPECT_EQ(p.head.header("spaces"), "a  b");  // OWS trimmed, inner spaces kept
    EXPECT_EQ(p.head.header("missing"), std::nullopt);
    EXPECT_EQ(p.head.header("X-Thin"), std::nullopt);
    EXPECT_EQ(p.head.headers.size(), 5u);
}

TEST(HttpRequestHead, ObsTextAndTabsInValuesAreAccepted) {
    Parsed p = parse("GET /\xc3\xa4 HTTP/1.1\r\nX: caf\xc3\xa9\tok\r\n\r\n");
    ASSERT_EQ(p.state, ParseState::Complete);
    EXPECT_EQ(p.head.target, "/\xc3\xa4");
    EXPECT_EQ(p.head.header("x"), "caf\xc3\xa9\tok");
}

TEST(HttpRequestHead, ReusedHeadKeepsItsCapacity) {
    RequestHead head;
    ParseError error;
    std::string big = "GET / HTTP/1.1\r\n";
    for (int i = 0; i < 50; ++i) {
        big += "X-" + std::to_string(i) + ": v\r\n";
    }
    big += "Content-Length: 4\r\nConnection: close\r\nExpect: 100-continue\r\n\r\n";
    ASSERT_EQ(parse_request_head(big, kMax, head, error), ParseState::Complete);
    ASSERT_EQ(head.headers.size(), 53u);
    ASSERT_TRUE(head.expect_continue);
    const HeaderField* storage = head.headers.data();
    std::size_t capacity = head.headers.capacity();

    ASSERT_EQ(parse_request_head("HEAD /small HTTP/1.1\r\nA: b\r\n\r\n", kMax, head, error),
              ParseState::Complete);
    EXPECT_EQ(head.method, "HEAD");
    EXPECT_EQ(head.headers.size(), 1u);
    EXPECT_EQ(head.headers.data(), storage);
    EXPECT_EQ(head.headers.capacity(), capacity);
    // Everything else was reset too.
    EXPECT_EQ(head.framing, BodyFraming::None);
    EXPECT_EQ(head.content_length, 0u);
    EXPECT_TRUE(head.keep_alive);
    EXPECT_FALSE(head.expect_continue);
}

TEST(HttpRequestHead, MalformedRequestLineIs400) {
    expect_failure("G(ET / HTTP/1.1\r\n\r\n", 400);      // method not a token
    expect_failure("GE\"T / HTTP/1.1\r\n\r\n", 400);     // method not a token
    expect_failure(" / HTTP/1.1\r\n\r\n", 400);          // empty method
    expect_failure("GET  / HTTP/1.1\r\n\r\n", 400);      // empty target (double space)
    expect_failure("GET /a b HTTP/1.1\r\n\r\n", 400);    // space in target
    expect_failure("GET /a\x01 HTTP/1.1\r\n\r\n", 400);  // control character in target
    expect_failure("GET /a\x7f HTTP/1.1\r\n\r\n", 400);  // DEL in target
    expect_failure(std::string("GET /a\0b HTTP/1.1\r\n\r\n", 21), 400);
    expect_failure("GET /a\tb HTTP/1.1\r\n\r\n", 400);
    expect_failure("GET /a\rb HTTP/1.1\r\n\r\n", 400);
    expect_failure("GET /\r\n\r\n", 400);  // HTTP/0.9 style
    expect_failure("GET\r\n\r\n", 400);
    expect_failure("GET / HTTP/1.1 \r\n\r\n", 400);  // trailing space
    expect_failure("GET / HTTP/1\r\n\r\n", 400);
    expect_failure("GET / http/1.1\r\n\r\n", 400);
    expect_failure("GET / HTTP/1.10\r\n\r\n", 400);
    expect_failure("GET / HTTP/x.1\r\n\r\n", 400);
    expect_failure("GET / HTTP/1.1\r\r\n\r\n", 400);  // bare CR at the end of the line
}

TEST(HttpRequestHead, UnsupportedVersionIs505) {
    expect_failure("GET / HTTP/2.0\r\n\r\n", 505);
    expect_failure("GET / HTTP/1.2\r\n\r\n", 505);
    expect_failure("GET / HTTP/0.9\r\n\r\n", 505);
    expect_failure("GET / HTTP/3.0\r\nHost: a\r\n\r\n", 505);
}

TEST(HttpRequestHead, MalformedHeaderLinesAre400) {
    expect_failure_in_header("Ho(st: x", 400);       // name not a token
    expect_failure_in_header("Na me: x", 400);       // name not a token
    expect_failure_in_header("X-A : x", 400);        // whitespace before the colon
    expect_failure_in_header("X-A\t: x", 400);       // whitespace before the colon
    expect_failure_in_header("No colon here", 400);  // no colon
    expect_failure_in_header(": empty name", 400);
    expect_failure_in_header("X-A: a\r\n b", 400);   // obs-fold (SP)
    expect_failure_in_header("X-A: a\r\n\tb", 400);  // obs-fold (HTAB)
    expect_failure_in_header("X-A: a\x01z", 400);    // control character in value
    expect_failure_in_header("X-A: a\x7fz", 400);
    expect_failure_in_header("X-A: a\rz", 400);  // bare CR in value
    expect_failure_in_header(std::string("X-A: a\0z", 8), 400);
    expect_failure("GET / HTTP/1.1\r\n Host: x\r\n\r\n", 400);  // whitespace before first field
}

TEST(HttpRequestHead, ErrorMessagesSayWhatWasWrong) {
    auto message = [](std::string_view text) { return parse(text).error.message; };
    EXPECT_EQ(message("GET / HTTP/1.1\r\nHost x\r\n\r\n"), "header line without a colon");
    EXPECT_EQ(message("GET / HTTP/1.1\r\nHost : x\r\n\r\n"),
              "whitespace between header name and colon");
    EXPECT_EQ(message("GET / HTTP/1.1\r\nA: b\r\n c\r\n\r\n"),
              "header line starting with whitespace (obsolete line folding)");
    EXPECT_EQ(message("GET / HTTP/1.1\r\nA(: b\r\n\r\n"), "invalid character in header name");
    EXPECT_EQ(message("GET / HTTP/1.1\r\nA: \x01\r\n\r\n"), "invalid character in header value");
    EXPECT_EQ(message("G@T / HTTP/1.1\r\n\r\n"), "invalid method");
    EXPECT_EQ(message("GET / HTTP/2.0\r\n\r\n"), "unsupported HTTP version");
    EXPECT_EQ(message("POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"),
              "both Content-Length and Transfer-Encoding");
}

TEST(HttpRequestHead, MoreThanOneHostIs400) {
    expect_failure("GET / HTTP/1.1\r\nHost: a\r\nhost: a\r\n\r\n", 400);
}

TEST(HttpRequestHead, ContentLength) {
    struct Case {
        std::string value;
        std::uint64_t expected;
    };
    for (const Case& c : std::vector<Case>{{"0", 0},
                                           {"42", 42},
                                           {"007", 7},
                                           {"  12  ", 12},
                                           {"5, 5", 5},
                                           {"5,5 ,5", 5},
                                           {"18446744073709551615", 18446744073709551615u}}) {
        SCOPED_TRACE(c.value);
        Parsed p = parse("POST / HTTP/1.1\r\nContent-Length: " + c.value + "\r\n\r\n");
        ASSERT_EQ(p.state, ParseState::Complete);
        EXPECT_EQ(p.head.framing, BodyFraming::Length);
        EXPECT_EQ(p.head.content_length, c.expected);
    }
    Parsed p = parse("POST / HTTP/1.1\r\nContent-Length: 9\r\ncontent-length: 9\r\n\r\n");
    ASSERT_EQ(p.state, ParseState::Complete);
    EXPECT_EQ(p.head.content_length, 9u);
}

TEST(HttpRequestHead, InvalidContentLengthIs400) {
    for (std::string value : {"", "abc", "-1", "+5", "5 5", "0x10", "1.0", "5,", ",5", "5, 6",
                              "18446744073709551616", "99999999999999999999999"}) {
        expect_failure_in_header("Content-Length: " + value, 400);
    }
    expect_failure_in_header("Content-Length: 5\r\nContent-Length: 6", 400);
    expect_failure_in_header("Content-Length: x\r\nContent-Length: 0", 400);
    expect_failure_in_header("Content-Length: 0\r\nContent-Length: x", 400);
}

TEST(HttpRequestHead, ChunkedFraming) {
    for (std::string value : {"chunked", "Chunked", "CHUNKED", " chunked ", ", chunked"}) {
        SCOPED_TRACE(value);
        Parsed p = parse("POST / HTTP/1.1\r\nTransfer-Encoding: " + value + "\r\n\r\n");
        ASSERT_EQ(p.state, ParseState::Complete);
        EXPECT_EQ(p.head.framing, BodyFraming::Chunked);
        EXPECT_EQ(p.head.content_length, 0u);
    }
}

TEST(HttpRequestHead, TransferEncodingErrors) {
    // Both framings: 400 (request smuggling), whatever the order.
    expect_failure_in_header("Content-Length: 5\r\nTransfer-Encoding: chunked", 400);
    expect_failure_in_header("Transfer-Encoding: chunked\r\nContent-Length: 5", 400);
    // Final coding not chunked: 501.
    expect_failure_in_header("Transfer-Encoding: gzip", 501);
    expect_failure_in_header("Transfer-Encoding: chunked, gzip", 501);
    expect_failure_in_header("Transfer-Encoding: chunked\r\nTransfer-Encoding: gzip", 501);
    expect_failure_in_header("Transfer-Encoding: identity", 501);
    // A coding before chunked the daemon cannot undo: 501 too.
    expect_failure_in_header("Transfer-Encoding: gzip, chunked", 501);
    // chunked twice, an empty list, HTTP/1.0: 400.
    expect_failure_in_header("Transfer-Encoding: chunked, chunked", 400);
    expect_failure_in_header("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked", 400);
    expect_failure_in_header("Transfer-Encoding: ", 400);
    expect_failure("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400);
}

TEST(HttpRequestHead, HeadTooLargeIs431) {
    std::string head = "GET / HTTP/1.1\r\nX: " + std::string(100, 'a') + "\r\n\r\n";
    // The head fits exactly.
    Parsed p = parse(head, head.size());
    ASSERT_EQ(p.state, ParseState::Complete);
    EXPECT_EQ(p.head.size, head.size());
    // One byte more than allowed, complete or not.
    p = parse(head, head.size() - 1);
    EXPECT_EQ(p.state, ParseState::Failed);
    EXPECT_EQ(p.error.status, 431);
    std::string partial = head.substr(0, head.size() - 2);
    EXPECT_EQ(parse(partial, partial.size()).state, ParseState::Incomplete);
    p = parse(partial, partial.size() - 1);
    EXPECT_EQ(p.state, ParseState::Failed);
    EXPECT_EQ(p.error.status, 431);
    // A complete head within the limit followed by more bytes than the limit.
    EXPECT_EQ(parse(head + std::string(1000, 'b'), head.size()).state, ParseState::Complete);
}

TEST(HttpRequestHead, TooManyHeaderFieldsIs431) {
    auto with_fields = [](std::size_t n) {
        std::string text = "GET / HTTP/1.1\r\n";
        for (std::size_t i = 0; i < n; ++i) {
            text += "X-" + std::to_string(i) + ": v\r\n";
        }
        return text + "\r\n";
    };
    Parsed p = parse(with_fields(kMaxHeaderFields));
    ASSERT_EQ(p.state, ParseState::Complete);
    EXPECT_EQ(p.head.headers.size(), kMaxHeaderFields);
    p = parse(with_fields(kMaxHeaderFields + 1));
    EXPECT_EQ(p.state, ParseState::Failed);
    EXPECT_EQ(p.error.status, 431);
}

TEST(HttpRequestHead, ObviousGarbageFailsBeforeTheHeadIsComplete) {
    Parsed p = parse("\x16\x03\x01\x02\x00");  // a TLS ClientHello
    EXPECT_EQ(p.state, ParseState::Failed);
    EXPECT_EQ(p.error.status, 400);
    p = parse("GET / HTTP/2.0\r\nHost: a\r\n");
    EXPECT_EQ(p.state, ParseState::Failed);
    EXPECT_EQ(p.error.status, 505);
    p = parse("GET /a b HTTP/1.1\n");
    EXPECT_EQ(p.state, ParseState::Failed);
    EXPECT_EQ(p.error.status, 400);
    // A valid request line waits for the rest.
    EXPECT_EQ(parse("GET / HTTP/1.1\r\nHost: a\r\n").state, ParseState::Incomplete);
    EXPECT_EQ(parse("\r").state, ParseState::Incomplete);
    EXPECT_EQ(parse("\r\n\r").state, ParseState::Incomplete);
    EXPECT_EQ(parse("\r\n\r\n").state, ParseState::Incomplete);  // only empty lines so far
}

TEST(HttpRequestHead, KeepAliveMatrix) {
    struct Case {
        std::string version;
        std::string fields;
        bool keep_alive;
    };
    const Case cases[] = {
        {"HTTP/1.1", "", true},
        {"HTTP/1.1", "Connection: close\r\n", false},
        {"HTTP/1.1", "Connection: Close\r\n", false},
        {"HTTP/1.1", "Connection: keep-alive\r\n", true},
        {"HTTP/1.1", "Connection: X-Foo, close\r\n", false},
        {"HTTP/1.1", "Connection: X-Foo\r\nConnection: close\r\n", false},
        {"HTTP/1.1", "Connection: closed\r\n", true},
        {"HTTP/1.1", "Connection: Upgrade\r\n", true},
        {"HTTP/1.0", "", false},
        {"HTTP/1.0", "Connection: keep-alive\r\n", true},
        {"HTTP/1.0", "Connection: Keep-Alive\r\n", true},
        {"HTTP/1.0", "Connection: foo, keep-alive\r\n", true},
        {"HTTP/1.0", "Connection: close\r\n", false},
        {"HTTP/1.0", "Connection: keep-alive, close\r\n", false},
        {"HTTP/1.0", "Keep-Alive: timeout=5\r\n", false},
    };
    for (const Case& c : cases) {
        std::string text = "GET / " + c.version + "\r\nHost: a\r\n" + c.fields + "\r\n";
        SCOPED_TRACE(text);
        Parsed p = parse(text);
        ASSERT_EQ(p.state, ParseState::Complete);
        EXPECT_EQ(p.head.minor_version, c.version == "HTTP/1.1" ? 1 : 0);
        EXPECT_EQ(p.head.keep_alive, c.keep_alive);
    }
}

TEST(HttpRequestHead, ExpectContinue) {
    EXPECT_TRUE(parse("POST / HTTP/1.1\r\nExpect: 100-continue\r\n\r\n").head.expect_continue);
    EXPECT_TRUE(parse("POST / HTTP/1.1\r\nexpect:  100-Continue \r\n\r\n").head.expect_continue);
    EXPECT_FALSE(parse("POST / HTTP/1.1\r\nExpect: something\r\n\r\n").head.expect_continue);
    EXPECT_FALSE(parse("POST / HTTP/1.1\r\n\r\n").head.expect_continue);
    // HTTP/1.0 clients cannot wait for 100 Continue (RFC 9110 10.1.1).
    EXPECT_FALSE(parse("POST / HTTP/1.0\r\nExpect: 100-continue\r\n\r\n").head.expect_continue);
}

}  // namespace
}  // namespace unifaas::http
