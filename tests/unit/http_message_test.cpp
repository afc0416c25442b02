#include <gtest/gtest.h>

#include "http/message.h"

namespace unifaas::http {
namespace {

TEST(HttpMessage, IequalsIsAsciiCaseInsensitive) {
    EXPECT_TRUE(iequals("Content-Length", "content-length"));
    EXPECT_TRUE(iequals("X-FORWARDED-FOR", "x-forwarded-for"));
    EXPECT_TRUE(iequals("", ""));
    EXPECT_FALSE(iequals("Host", "Hosts"));
    EXPECT_FALSE(iequals("Host", "Hast"));
    // Only letters fold: '@' (0x40) and '`' (0x60) differ by the case bit but are not letters.
    EXPECT_FALSE(iequals("@", "`"));
    EXPECT_FALSE(iequals("[", "{"));
    EXPECT_FALSE(iequals("\xc4", "\xe4"));
}

TEST(HttpMessage, ListContainsFindsTrimmedElements) {
    EXPECT_TRUE(list_contains("close", "close"));
    EXPECT_TRUE(list_contains("Keep-Alive, Upgrade", "upgrade"));
    EXPECT_TRUE(list_contains(" foo ,\tClose\t", "close"));
    EXPECT_TRUE(list_contains("a,,b", "b"));
    EXPECT_FALSE(list_contains("closed", "close"));
    EXPECT_FALSE(list_contains("", "close"));
    EXPECT_FALSE(list_contains("keep-alive", "close"));
}

TEST(HttpMessage, ReasonPhrases) {
    EXPECT_EQ(reason_phrase(200), "OK");
    EXPECT_EQ(reason_phrase(100), "Continue");
    EXPECT_EQ(reason_phrase(404), "Not Found");
    EXPECT_EQ(reason_phrase(413), "Content Too Large");
    EXPECT_EQ(reason_phrase(429), "Too Many Requests");
    EXPECT_EQ(reason_phrase(431), "Request Header Fields Too Large");
    EXPECT_EQ(reason_phrase(502), "Bad Gateway");
    EXPECT_EQ(reason_phrase(503), "Service Unavailable");
    EXPECT_EQ(reason_phrase(504), "Gateway Timeout");
    EXPECT_EQ(reason_phrase(505), "HTTP Version Not Supported");
    EXPECT_EQ(reason_phrase(299), "");
    EXPECT_EQ(reason_phrase(0), "");
    EXPECT_EQ(reason_phrase(-1), "");
}

}  // namespace
}  // namespace unifaas::http
