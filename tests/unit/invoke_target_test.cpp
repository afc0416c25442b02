#include "gateway/invoke_target.h"

#include <gtest/gtest.h>

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

}  // namespace
}  // namespace unifaas
