#include "gateway/invoke_target.h"

#include <gtest/gtest.h>

#include "gateway/proxy.h"

namespace unifaas {
namespace {

TEST(InvokeTarget, MapsPathAndQueryUnchanged) {
    auto t = parse_invoke_target("/invoke/hello/a/b%20c/d?x=1&y=%2F");
    ASSERT_TRUE(t);
    EXPECT_EQ(t->function, "hello");
    EXPECT_EQ(t->upstream_target, "/a/b%20c/d?x=1&y=%2F");
}

TEST(InvokeTarget, BareFunctionMapsToRoot) {
    EXPECT_EQ(parse_invoke_target("/invoke/hello")->upstream_target, "/");
    EXPECT_EQ(parse_invoke_target("/invoke/hello/")->upstream_target, "/");
    EXPECT_EQ(parse_invoke_target("/invoke/hello?q=1")->upstream_target, "/?q=1");
}

TEST(InvokeTarget, RejectsOtherPaths) {
    EXPECT_FALSE(parse_invoke_target("/invoke/"));
    EXPECT_FALSE(parse_invoke_target("/invoke"));
    EXPECT_FALSE(parse_invoke_target("/other/hello"));
    EXPECT_FALSE(parse_invoke_target("/invoke//x"));
}

TEST(InvokeTarget, DecodesFunctionName) {
    EXPECT_EQ(parse_invoke_target("/invoke/%2e%2e/x")->function, "..");
    EXPECT_EQ(percent_decode("a%2Fb%zz%4"), "a/b%zz%4");
}

TEST(ProxyHeaders, DropsHopByHopAndConnectionNamedHeaders) {
    httplib::Request in;
    in.remote_addr = "127.0.0.1";
    in.headers = {{"Connection", "keep-alive, X-Private"},
                  {"X-Private", "secret"},
                  {"Keep-Alive", "timeout=5"},
                  {"Transfer-Encoding", "chunked"},
                  {"Content-Length", "3"},
                  {"REMOTE_ADDR", "127.0.0.1"},
                  {"X-Custom", "kept"},
                  {"Content-Type", "text/plain"}};
    auto out = upstream_request_headers(in);
    EXPECT_EQ(out.count("X-Custom"), 1u);
    EXPECT_EQ(out.count("Content-Type"), 1u);
    for (auto name : {"Connection", "X-Private", "Keep-Alive", "Transfer-Encoding",
                      "Content-Length", "REMOTE_ADDR"}) {
        EXPECT_EQ(out.count(name), 0u) << name;
    }
    EXPECT_EQ(out.find("X-Forwarded-For")->second, "127.0.0.1");
}

TEST(ProxyHeaders, AppendsToExistingForwardedFor) {
    httplib::Request in;
    in.remote_addr = "127.0.0.1";
    in.headers = {{"X-Forwarded-For", "192.0.2.1"}};
    EXPECT_EQ(upstream_request_headers(in).find("X-Forwarded-For")->second, "192.0.2.1, 127.0.0.1");
}

}  // namespace
}  // namespace unifaas
