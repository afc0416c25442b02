#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

#include "http/response_head.h"

namespace unifaas::http {
namespace {

constexpr std::size_t kMax = 8192;

// Owns a copy of the parsed text (on the heap, so moving Parsed keeps the views valid).
struct Parsed {
    std::shared_ptr<const std::string> buffer;
    ParseState state;
    ResponseHead head;
    ParseError error;
};

Parsed parse(std::string_view buffer, std::string_view method = "GET", std::size_t max = kMax) {
    Parsed p;
    p.buffer = std::make_shared<const std::string>(buffer);
    p.state = parse_response_head(*p.buffer, max, method, p.head, p.error);
    return p;
}

void expect_failure(const std::string& text, std::string_view method = "GET") {
    SCOPED_TRACE(testing::PrintToString(text));
    Parsed p = parse(text, method);
    EXPECT_EQ(p.state, ParseState::Failed);
    EXPECT_EQ(p.error.status, 502);
    EXPECT_FALSE(p.error.message.empty());
}

const std::string kOk =
    "HTTP/1.1 200 OK\r\n"
    "Content-Type: application/json\r\n"
    "Content-Length: 13\r\n"
    "\r\n";

TEST(HttpResponseHead, ParsesStatusLineAndHeaders) {
    Parsed p = parse(kOk + "{\"ok\": true}\n");
    ASSERT_EQ(p.state, ParseState::Complete);
    EXPECT_EQ(p.head.status, 200);
    EXPECT_EQ(p.head.reason, "OK");
    EXPECT_EQ(p.head.minor_version, 1);
    EXPECT_EQ(p.head.size, kOk.size());
    EXPECT_EQ(p.head.framing, BodyFraming::Length);
    EXPECT_EQ(p.head.content_length, 13u);
    EXPECT_TRUE(p.head.keep_alive);
    std::vector<HeaderField> expected = {{"Content-Type", "application/json"},
                                         {"Content-Length", "13"}};
    EXPECT_EQ(p.head.headers, expected);
    EXPECT_EQ(p.head.header("content-type"), "application/json");
    EXPECT_EQ(p.head.header("CONTENT-LENGTH"), "13");
    EXPECT_EQ(p.head.header("Server"), std::nullopt);
}

TEST(HttpResponseHead, EveryPrefixIsIncomplete) {
    const std::string heads[] = {
        kOk,
        "HTTP/1.0 404 Not Found\nContent-Length: 0\n\n",
        "HTTP/1.1 204\r\n\r\n",
        "HTTP/1.1 100 Continue\r\n\r\n",
    };
    for (const std::string& head : heads) {
        SCOPED_TRACE(testing::PrintToString(head));
        for (std::size_t n = 0; n < head.size(); ++n) {
            ASSERT_EQ(parse(std::string_view(head).substr(0, n)).state, ParseState::Incomplete)
                << "prefix of " << n << " bytes";
        }
        Parsed p = parse(head + "HTTP/1.1 200 OK\r\n\r\n");
        ASSERT_EQ(p.state, ParseState::Complete);
        EXPECT_EQ(p.head.size, head.size());
    }
}

TEST(HttpResponseHead, ReasonPhrase) {
    EXPECT_EQ(parse("HTTP/1.1 404 Not Found Here\r\n\r\n").head.reason, "Not Found Here");
    EXPECT_EQ(parse("HTTP/1.1 200 \xc3\x96K\r\n\r\n").head.reason, "\xc3\x96K");
    // Missing or empty reason phrase.
    Parsed p = parse("HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n");
    ASSERT_EQ(p.state, ParseState::Complete);
    EXPECT_EQ(p.head.status, 200);
    EXPECT_EQ(p.head.reason, "");
    p = parse("HTTP/1.1 201 \r\nContent-Length: 0\r\n\r\n");
    ASSERT_EQ(p.state, ParseState::Complete);
    EXPECT_EQ(p.head.status, 201);
    EXPECT_EQ(p.head.reason, "");
}

TEST(HttpResponseHead, InterimResponseThenFinal) {
    std::string interim = "HTTP/1.1 100 Continue\r\n\r\n";
    std::string early_hints = "HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n";
    std::string final = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n";
    std::string buffer = interim + early_hints + final + "ok";

    std::string_view rest = buffer;
    Parsed p = parse(rest);
    ASSERT_EQ(p.state, ParseState::Complete);
    EXPECT_EQ(p.head.status, 100);
    EXPECT_EQ(p.head.framing, BodyFraming::None);
    EXPECT_EQ(p.head.size, interim.size());
    rest.remove_prefix(p.head.size);

    p = parse(rest);
    ASSERT_EQ(p.state, ParseState::Complete);
    EXPECT_EQ(p.head.status, 103);
    EXPECT_EQ(p.head.framing, BodyFraming::None);
    EXPECT_EQ(p.head.header("link"), "</a.css>; rel=preload");
    rest.remove_prefix(p.head.size);

    p = parse(rest);
    ASSERT_EQ(p.state, ParseState::Complete);
    EXPECT_EQ(p.head.status, 200);
    EXPECT_EQ(p.head.framing, BodyFraming::Length);
    EXPECT_EQ(p.head.content_length, 2u);
    EXPECT_EQ(rest.substr(p.head.size), "ok");
}

TEST(HttpResponseHead, SwitchingProtocolsParsesWithoutBody) {
    std::string text = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\nframe";
    auto p = parse(text);
    ASSERT_EQ(p.state, ParseState::Complete);
    EXPECT_EQ(p.head.status, 101);
    EXPECT_EQ(p.head.framing, BodyFraming::None);
    EXPECT_EQ(text.substr(p.head.size), "frame");
}

TEST(HttpResponseHead, NoBodyByDefinition) {
    // 204 and 304, whatever the fields say; content_length stays 0.
    for (std::string text : {"HTTP/1.1 204 No Content\r\n\r\n",
                             "HTTP/1.1 204 No Content\r\nContent-Length: 10\r\n\r\n",
                             "HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n",
                             "HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n",
                             "HTTP/1.0 204 No Content\r\n\r\n"}) {
        SCOPED_TRACE(text);
        Parsed p = parse(text);
        ASSERT_EQ(p.state, ParseState::Complete);
        EXPECT_EQ(p.head.framing, BodyFraming::None);
        EXPECT_EQ(p.head.content_length, 0u);
    }
    // Responses to HEAD.
    for (std::string text :
         {"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n",
          "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", "HTTP/1.1 200 OK\r\n\r\n"}) {
        SCOPED_TRACE(text);
        Parsed p = parse(text, "HEAD");
        ASSERT_EQ(p.state, ParseState::Complete);
        EXPECT_EQ(p.head.framing, BodyFraming::None);
        EXPECT_TRUE(p.head.keep_alive);
        // The same head answering GET has a body.
        EXPECT_NE(parse(text, "GET").head.framing, BodyFraming::None);
    }
}

TEST(HttpResponseHead, Framing) {
    Parsed p = parse("HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n");
    ASSERT_EQ(p.state, ParseState::Complete);
    EXPECT_EQ(p.head.framing, BodyFraming::Chunked);
    EXPECT_TRUE(p.head.keep_alive);

    p = parse("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    ASSERT_EQ(p.state, ParseState::Complete);
    EXPECT_EQ(p.head.framing, BodyFraming::Length);
    EXPECT_EQ(p.head.content_length, 0u);

    p = parse("HTTP/1.1 200 OK\r\nContent-Length: 7, 7\r\nContent-Length: 7\r\n\r\n");
    ASSERT_EQ(p.state, ParseState::Complete);
    EXPECT_EQ(p.head.content_length, 7u);

    // Neither: the body ends when the instance closes, so the connection cannot be reused.
    p = parse("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n");
    ASSERT_EQ(p.state, ParseState::Complete);
    EXPECT_EQ(p.head.framing, BodyFraming::UntilClose);
    EXPECT_FALSE(p.head.keep_alive);
    p = parse("HTTP/1.0 500 Oops\r\nConnection: keep-alive\r\n\r\n", "POST");
    ASSERT_EQ(p.state, ParseState::Complete);
    EXPECT_EQ(p.head.framing, BodyFraming::UntilClose);
    EXPECT_FALSE(p.head.keep_alive);
}

TEST(HttpResponseHead, KeepAliveMatrix) {
    struct Case {
        std::string version;
        std::string fields;
        bool keep_alive;
    };
    const Case cases[] = {
        {"HTTP/1.1", "", true},
        {"HTTP/1.1", "Connection: close\r\n", false},
        {"HTTP/1.1", "Connection: keep-alive, CLOSE\r\n", false},
        {"HTTP/1.1", "Connection: keep-alive\r\n", true},
        {"HTTP/1.0", "", false},
        {"HTTP/1.0", "Connection: keep-alive\r\n", true},
        {"HTTP/1.0", "Connection: close\r\n", false},
    };
    for (const Case& c : cases) {
        std::string text = c.version + " 200 OK\r\nContent-Length: 0\r\n" + c.fields + "\r\n";
        SCOPED_TRACE(text);
        Parsed p = parse(text);
        ASSERT_EQ(p.state, ParseState::Complete);
        EXPECT_EQ(p.head.keep_alive, c.keep_alive);
    }
}

TEST(HttpResponseHead, MalformedStatusLineIs502) {
    expect_failure("HTTP/1.1 20 OK\r\n\r\n");
    expect_failure("HTTP/1.1 2000 OK\r\n\r\n");
    expect_failure("HTTP/1.1 2x0 OK\r\n\r\n");
    expect_failure("HTTP/1.1  200 OK\r\n\r\n");
    expect_failure("HTTP/1.1 099 Low\r\n\r\n");
    expect_failure("HTTP/1.1 600 High\r\n\r\n");
    expect_failure("HTTP/1.1\r\n\r\n");
    expect_failure("HTTP/2 200 OK\r\n\r\n");
    expect_failure("ICY 200 OK\r\n\r\n");
    expect_failure("http/1.1 200 OK\r\n\r\n");
    expect_failure("HTTP/1.1 200 O\x01K\r\n\r\n");
    expect_failure("\r\nHTTP/1.1 200 OK\r\n\r\n");
    expect_failure("HTTP/2.0 200 OK\r\n\r\n");  // unsupported version
    expect_failure("HTTP/1.2 200 OK\r\n\r\n");
    // Fails as soon as the status line is known to be missing.
    expect_failure("\r\nHTTP/1.1 200 OK\r\n");
}

TEST(HttpResponseHead, MalformedFieldsAre502) {
    expect_failure("HTTP/1.1 200 OK\r\nNo colon\r\n\r\n");
    expect_failure("HTTP/1.1 200 OK\r\nX : y\r\n\r\n");
    expect_failure("HTTP/1.1 200 OK\r\nX: y\r\n folded\r\n\r\n");
    expect_failure("HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\n");
    expect_failure("HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n");
    expect_failure("HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n");
    expect_failure("HTTP/1.1 304 Not Modified\r\nContent-Length: -1\r\n\r\n");
    expect_failure("HTTP/1.1 200 OK\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n");
    expect_failure("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n");
    expect_failure("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n");
    expect_failure("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n");
    expect_failure("HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
}

TEST(HttpResponseHead, TooLargeIs502) {
    std::string head = "HTTP/1.1 200 OK\r\nX: " + std::string(200, 'a') + "\r\n\r\n";
    EXPECT_EQ(parse(head, "GET", head.size()).state, ParseState::Complete);
    Parsed p = parse(head, "GET", head.size() - 1);
    EXPECT_EQ(p.state, ParseState::Failed);
    EXPECT_EQ(p.error.status, 502);
    EXPECT_EQ(parse(head.substr(0, 100), "GET", 100).state, ParseState::Incomplete);
    EXPECT_EQ(parse(head.substr(0, 101), "GET", 100).state, ParseState::Failed);

    std::string many = "HTTP/1.1 200 OK\r\n";
    for (std::size_t i = 0; i <= kMaxHeaderFields; ++i) {
        many += "X-" + std::to_string(i) + ": v\r\n";
    }
    expect_failure(many + "\r\n");
}

TEST(HttpResponseHead, ReusedHeadIsReset) {
    ResponseHead head;
    ParseError error;
    ASSERT_EQ(parse_response_head("HTTP/1.1 200 OK\r\nA: 1\r\nB: 2\r\nContent-Length: 3\r\n\r\n",
                                  kMax, "GET", head, error),
              ParseState::Complete);
    std::size_t capacity = head.headers.capacity();
    ASSERT_EQ(parse_response_head("HTTP/1.1 204\r\n\r\n", kMax, "GET", head, error),
              ParseState::Complete);
    EXPECT_EQ(head.status, 204);
    EXPECT_EQ(head.reason, "");
    EXPECT_TRUE(head.headers.empty());
    EXPECT_EQ(head.headers.capacity(), capacity);
    EXPECT_EQ(head.framing, BodyFraming::None);
    EXPECT_EQ(head.content_length, 0u);
}

}  // namespace
}  // namespace unifaas::http
