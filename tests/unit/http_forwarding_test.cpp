#include <gtest/gtest.h>

#include <string>

#include "http/forwarding.h"

namespace unifaas::http {
namespace {

RequestHead request(std::string_view text) {
    RequestHead head;
    ParseError error;
    EXPECT_EQ(parse_request_head(text, 65536, head, error), ParseState::Complete) << error.message;
    return head;
}

ResponseHead response(std::string_view text, std::string_view method = "GET") {
    ResponseHead head;
    ParseError error;
    EXPECT_EQ(parse_response_head(text, 65536, method, head, error), ParseState::Complete)
        << error.message;
    return head;
}

std::string upstream(std::string_view text, std::uint64_t body_length = 0,
                     std::string_view client = "192.0.2.7") {
    RequestHead head = request(text);
    std::string out;
    append_upstream_request_head(out, head, "/", "10.20.0.2:8080", client, body_length);
    return out;
}

std::string downstream(std::string_view text, std::uint64_t body_length, bool keep_alive,
                       std::string_view method = "GET") {
    ResponseHead head = response(text, method);
    std::string out;
    append_downstream_response_head(out, head, body_length, keep_alive);
    return out;
}

TEST(HttpForwarding, UpstreamRequestHead) {
    RequestHead head = request(
        "GET /function/echo/sub?x=1 HTTP/1.1\r\n"
        "Host: edge.example:8080\r\n"
        "User-Agent: curl/8.0\r\n"
        "Connection: keep-alive\r\n"
        "Accept: */*\r\n"
        "\r\n");
    std::string out = "already here|";
    append_upstream_request_head(out, head, "/sub?x=1", "10.20.0.2:8080", "192.0.2.7", 0);
    EXPECT_EQ(out,
              "already here|"
              "GET /sub?x=1 HTTP/1.1\r\n"
              "Host: edge.example:8080\r\n"
              "User-Agent: curl/8.0\r\n"
              "Accept: */*\r\n"
              "X-Forwarded-For: 192.0.2.7\r\n"
              "\r\n");
}

TEST(HttpForwarding, UpstreamDropsHopByHopFields) {
    EXPECT_EQ(upstream("POST /f HTTP/1.1\r\n"
                       "Host: h\r\n"
                       "Connection: keep-alive, Upgrade\r\n"
                       "Keep-Alive: timeout=5\r\n"
                       "Proxy-Connection: keep-alive\r\n"
                       "Proxy-Authenticate: Basic\r\n"
                       "Proxy-Authorization: Basic Zm9vOmJhcg==\r\n"
                       "TE: trailers\r\n"
                       "Trailer: X-Checksum\r\n"
                       "Upgrade: websocket\r\n"
                       "Expect: 100-continue\r\n"
                       "Content-Length: 11\r\n"
                       "X-Kept: yes\r\n"
                       "\r\n",
                       11),
              "POST / HTTP/1.1\r\n"
              "Host: h\r\n"
              "X-Kept: yes\r\n"
              "X-Forwarded-For: 192.0.2.7\r\n"
              "Content-Length: 11\r\n"
              "\r\n");
    // Chunked from the client: Transfer-Encoding goes, the decoded length is sent instead.
    EXPECT_EQ(upstream("PUT /f HTTP/1.1\r\nHost: h\r\ntransfer-encoding: chunked\r\n\r\n", 300),
              "PUT / HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 192.0.2.7\r\n"
              "Content-Length: 300\r\n\r\n");
}

TEST(HttpForwarding, UpstreamDropsFieldsTheConnectionHeaderNames) {
    EXPECT_EQ(upstream("GET / HTTP/1.1\r\n"
                       "Host: h\r\n"
                       "Connection: X-Secret, x-hop\r\n"
                       "X-Secret: 1\r\n"
                       "x-secret: 2\r\n"
                       "X-Hop: 3\r\n"
                       "X-Secretive: kept\r\n"
                       "connection: close,X-Other\r\n"
                       "X-OTHER: 4\r\n"
                       "X-End: kept\r\n"
                       "\r\n"),
              "GET / HTTP/1.1\r\n"
              "Host: h\r\n"
              "X-Secretive: kept\r\n"
              "X-End: kept\r\n"
              "X-Forwarded-For: 192.0.2.7\r\n"
              "\r\n");
}

TEST(HttpForwarding, UpstreamHostOnlyWhenTheClientSentNone) {
    EXPECT_EQ(upstream("GET / HTTP/1.0\r\nAccept: */*\r\n\r\n"),
              "GET / HTTP/1.1\r\n"
              "Accept: */*\r\n"
              "Host: 10.20.0.2:8080\r\n"
              "X-Forwarded-For: 192.0.2.7\r\n"
              "\r\n");
    EXPECT_EQ(upstream("GET / HTTP/1.1\r\nhost: mine\r\n\r\n"),
              "GET / HTTP/1.1\r\nhost: mine\r\nX-Forwarded-For: 192.0.2.7\r\n\r\n");
}

TEST(HttpForwarding, UpstreamChainsXForwardedFor) {
    EXPECT_EQ(upstream("GET / HTTP/1.1\r\n"
                       "Host: h\r\n"
                       "X-Forwarded-For: 203.0.113.1\r\n"
                       "Accept: */*\r\n"
                       "x-forwarded-for: 203.0.113.2, 2001:db8::1\r\n"
                       "\r\n",
                       0, "198.51.100.9"),
              "GET / HTTP/1.1\r\n"
              "Host: h\r\n"
              "Accept: */*\r\n"
              "X-Forwarded-For: 203.0.113.1, 203.0.113.2, 2001:db8::1, 198.51.100.9\r\n"
              "\r\n");
    // An empty value adds nothing.
    EXPECT_EQ(upstream("GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-For:\r\n\r\n", 0, "::1"),
              "GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: ::1\r\n\r\n");
}

TEST(HttpForwarding, UpstreamContentLength) {
    const std::string suffix = "Host: h\r\n\r\n";
    auto content_length = [&](std::string_view method, std::uint64_t body) {
        std::string out = upstream(std::string(method) + " / HTTP/1.1\r\n" + suffix, body);
        auto at = out.find("Content-Length: ");
        return at == std::string::npos ? std::string("none")
                                       : out.substr(at + 16, out.find('\r', at) - at - 16);
    };
    EXPECT_EQ(content_length("GET", 0), "none");
    EXPECT_EQ(content_length("HEAD", 0), "none");
    EXPECT_EQ(content_length("DELETE", 0), "none");
    EXPECT_EQ(content_length("GET", 5), "5");
    EXPECT_EQ(content_length("DELETE", 12), "12");
    EXPECT_EQ(content_length("POST", 0), "0");
    EXPECT_EQ(content_length("PUT", 0), "0");
    EXPECT_EQ(content_length("PATCH", 0), "0");
    EXPECT_EQ(content_length("POST", 18446744073709551615u), "18446744073709551615");
}

TEST(HttpForwarding, UpstreamHeadParsesBack) {
    std::string text =
        "POST /function/f/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
        "Expect: 100-continue\r\nConnection: close\r\n\r\n";
    std::string out = upstream(text, 42);
    RequestHead back = request(out);
    EXPECT_EQ(back.method, "POST");
    EXPECT_EQ(back.target, "/");
    EXPECT_EQ(back.size, out.size());
    EXPECT_EQ(back.framing, BodyFraming::Length);
    EXPECT_EQ(back.content_length, 42u);
    EXPECT_TRUE(back.keep_alive);
    EXPECT_FALSE(back.expect_continue);
}

TEST(HttpForwarding, DownstreamResponseHead) {
    std::string out = "x";
    append_downstream_response_head(out,
                                    response("HTTP/1.1 200 Okay\r\n"
                                             "Content-Type: text/plain\r\n"
                                             "Transfer-Encoding: chunked\r\n"
                                             "Connection: keep-alive, X-Instance\r\n"
                                             "X-Instance: i-1\r\n"
                                             "Keep-Alive: timeout=5\r\n"
                                             "Set-Cookie: a=1\r\n"
                                             "Set-Cookie: b=2\r\n"
                                             "\r\n"),
                                    11, true);
    EXPECT_EQ(out,
              "x"
              "HTTP/1.1 200 Okay\r\n"
              "Content-Type: text/plain\r\n"
              "Set-Cookie: a=1\r\n"
              "Set-Cookie: b=2\r\n"
              "Content-Length: 11\r\n"
              "\r\n");
}

TEST(HttpForwarding, DownstreamRewritesContentLengthAndAddsClose) {
    EXPECT_EQ(
        downstream("HTTP/1.0 404 Not Found\r\nContent-Length: 9\r\nServer: f\r\n\r\n", 9, false),
        "HTTP/1.1 404 Not Found\r\nServer: f\r\nContent-Length: 9\r\nConnection: close\r\n\r\n");
    // Read until close: the length is what was read.
    EXPECT_EQ(downstream("HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n", 5, true),
              "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n");
}

TEST(HttpForwarding, DownstreamReasonFallsBackToTheStandardPhrase) {
    EXPECT_EQ(downstream("HTTP/1.1 503\r\nContent-Length: 0\r\n\r\n", 0, true),
              "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n");
    EXPECT_EQ(downstream("HTTP/1.1 299 \r\nContent-Length: 0\r\n\r\n", 0, true),
              "HTTP/1.1 299 \r\nContent-Length: 0\r\n\r\n");
}

TEST(HttpForwarding, DownstreamKeepsContentLengthWhenThereIsNoBody) {
    // HEAD: the instance's Content-Length describes the GET body and is passed on as is.
    EXPECT_EQ(downstream("HTTP/1.1 200 OK\r\nContent-Length: 1234\r\nETag: \"e\"\r\n\r\n", 0, true,
                         "HEAD"),
              "HTTP/1.1 200 OK\r\nContent-Length: 1234\r\nETag: \"e\"\r\n\r\n");
    EXPECT_EQ(downstream("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", 0, true, "HEAD"),
              "HTTP/1.1 200 OK\r\n\r\n");
    EXPECT_EQ(downstream("HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n", 0, false),
              "HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\nConnection: close\r\n\r\n");
    EXPECT_EQ(downstream("HTTP/1.1 204 No Content\r\nX-A: b\r\n\r\n", 0, true),
              "HTTP/1.1 204 No Content\r\nX-A: b\r\n\r\n");
}

TEST(HttpForwarding, DownstreamHeadParsesBack) {
    std::string out = downstream(
        "HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\nLocation: /x\r\n\r\n", 77, false);
    ResponseHead back = response(out);
    EXPECT_EQ(back.status, 201);
    EXPECT_EQ(back.size, out.size());
    EXPECT_EQ(back.framing, BodyFraming::Length);
    EXPECT_EQ(back.content_length, 77u);
    EXPECT_FALSE(back.keep_alive);
    EXPECT_EQ(back.header("location"), "/x");
}

TEST(HttpForwarding, SimpleResponse) {
    std::string out;
    append_simple_response(out, 404, "text/plain", "no such function\n", true);
    EXPECT_EQ(out,
              "HTTP/1.1 404 Not Found\r\n"
              "Content-Type: text/plain\r\n"
              "Content-Length: 17\r\n"
              "\r\n"
              "no such function\n");

    out = "prev|";
    const HeaderField extra[] = {{"Retry-After", "2"}, {"X-Reason", "capacity"}};
    append_simple_response(out, 503, "application/json", "{}", false, extra);
    EXPECT_EQ(out,
              "prev|"
              "HTTP/1.1 503 Service Unavailable\r\n"
              "Content-Type: application/json\r\n"
              "Content-Length: 2\r\n"
              "Retry-After: 2\r\n"
              "X-Reason: capacity\r\n"
              "Connection: close\r\n"
              "\r\n"
              "{}");
}

TEST(HttpForwarding, SimpleResponseWithoutBody) {
    std::string out;
    append_simple_response(out, 100, "", "", true);
    EXPECT_EQ(out, kContinueResponse);
    out.clear();
    append_simple_response(out, 204, "", "", false);
    EXPECT_EQ(out, "HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n");
    out.clear();
    append_simple_response(out, 200, "", "", true);
    EXPECT_EQ(out, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
}

TEST(HttpForwarding, DroppedFieldList) {
    for (std::string_view name :
         {"Connection", "keep-alive", "PROXY-CONNECTION", "Proxy-Authenticate",
          "Proxy-Authorization", "te", "Trailer", "Transfer-Encoding", "Upgrade", "Expect",
          "Content-Length", "X-Forwarded-For"}) {
        EXPECT_TRUE(is_dropped_when_forwarding(name)) << name;
    }
    for (std::string_view name : {"Host", "Trailers", "Content-Type", "X-Forwarded-Proto", "T"}) {
        EXPECT_FALSE(is_dropped_when_forwarding(name)) << name;
    }
}

}  // namespace
}  // namespace unifaas::http

namespace unifaas::http {
namespace {

std::string streamed(std::string_view text, DownstreamFraming framing, std::uint64_t length,
                     bool keep_alive) {
    ResponseHead head = response(text);
    std::string out;
    append_streamed_response_head(out, head, framing, length, keep_alive);
    return out;
}

TEST(HttpForwarding, StreamedHeadSaysHowTheBodyIsDelimited) {
    // Length passed through.
    EXPECT_EQ(streamed("HTTP/1.1 200 OK\r\nContent-Length: 9\r\nX-A: b\r\n\r\n",
                       DownstreamFraming::Length, 9, true),
              "HTTP/1.1 200 OK\r\nX-A: b\r\nContent-Length: 9\r\n\r\n");
    // The instance's chunking is its own hop: the client gets a chunking of ours.
    EXPECT_EQ(streamed("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: "
                       "text/event-stream\r\n\r\n",
                       DownstreamFraming::Chunked, 0, false),
              "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: "
              "chunked\r\nConnection: close\r\n\r\n");
    // Until close: no length, and the connection ends whatever keep_alive says.
    EXPECT_EQ(
        streamed("HTTP/1.0 200 OK\r\nServer: f\r\n\r\n", DownstreamFraming::UntilClose, 0, true),
        "HTTP/1.1 200 OK\r\nServer: f\r\nConnection: close\r\n\r\n");
    // A streamed head parses back with the framing it announces.
    ResponseHead back =
        response(streamed("HTTP/1.1 200 OK\r\n\r\n", DownstreamFraming::Chunked, 0, true));
    EXPECT_EQ(back.framing, BodyFraming::Chunked);
    EXPECT_TRUE(back.keep_alive);
}

TEST(HttpForwarding, UpgradeRequestsAreRecognised) {
    EXPECT_EQ(upgrade_protocol(request("GET /ws HTTP/1.1\r\nConnection: keep-alive, Upgrade\r\n"
                                       "Upgrade: websocket\r\n\r\n")),
              "websocket");
    // Not an upgrade: no Connection: upgrade, no Upgrade field, HTTP/1.0, a body.
    EXPECT_EQ(upgrade_protocol(request("GET /ws HTTP/1.1\r\nUpgrade: websocket\r\n\r\n")), "");
    EXPECT_EQ(upgrade_protocol(request("GET /ws HTTP/1.1\r\nConnection: upgrade\r\n\r\n")), "");
    EXPECT_EQ(upgrade_protocol(request("GET /ws HTTP/1.0\r\nConnection: upgrade\r\n"
                                       "Upgrade: websocket\r\n\r\n")),
              "");
    EXPECT_EQ(upgrade_protocol(request("POST /ws HTTP/1.1\r\nConnection: upgrade\r\n"
                                       "Upgrade: h2c\r\nContent-Length: 3\r\n\r\n")),
              "");
}

TEST(HttpForwarding, UpgradeSurvivesForwardingOnlyForAnUpgradeRequest) {
    RequestHead head = request(
        "GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        "Sec-WebSocket-Key: k\r\n\r\n");
    std::string out;
    append_upstream_request_head(out, head, "/ws", "10.20.0.2:8080", "192.0.2.7", 0, false,
                                 upgrade_protocol(head));
    EXPECT_EQ(out,
              "GET /ws HTTP/1.1\r\nHost: h\r\nSec-WebSocket-Key: k\r\n"
              "X-Forwarded-For: 192.0.2.7\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n");
    EXPECT_EQ(upstream("GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\n"
                       "Upgrade: websocket\r\n\r\n"),
              "GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 192.0.2.7\r\n\r\n");
}

TEST(HttpForwarding, SwitchingProtocolsHeadKeepsUpgradeAndNoFraming) {
    ResponseHead head = response(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Keep-Alive: x\r\nSec-WebSocket-Accept: abc\r\n\r\n");
    std::string out;
    append_upgrade_response_head(out, head);
    EXPECT_EQ(out,
              "HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: abc\r\n"
              "Connection: Upgrade\r\nUpgrade: websocket\r\n\r\n");
}

}  // namespace
}  // namespace unifaas::http
