#include <gtest/gtest.h>

#include <limits>
#include <string>

#include "http/chunked.h"

namespace unifaas::http {
namespace {

constexpr std::uint64_t kNoLimit = std::numeric_limits<std::uint64_t>::max();

struct Decoded {
    std::string out;
    std::size_t consumed = 0;
    bool done = false;
    bool failed = false;
    bool too_large = false;
    std::string error;
};

Decoded decode(std::string_view in, std::uint64_t max_body = kNoLimit) {
    ChunkedDecoder decoder(max_body);
    Decoded d;
    d.consumed = decoder.feed(in, d.out);
    d.done = decoder.done();
    d.failed = decoder.failed();
    d.too_large = decoder.too_large();
    d.error = decoder.error();
    return d;
}

// Feeds `in` in pieces of `step` bytes, as long as the decoder consumes everything offered.
Decoded decode_in_steps(std::string_view in, std::size_t step, std::uint64_t max_body = kNoLimit) {
    ChunkedDecoder decoder(max_body);
    Decoded d;
    for (std::size_t pos = 0; pos < in.size() && !decoder.done() && !decoder.failed();
         pos += step) {
        std::string_view piece = in.substr(pos, step);
        std::size_t n = decoder.feed(piece, d.out);
        d.consumed += n;
        if (n < piece.size()) {
            break;
        }
    }
    d.done = decoder.done();
    d.failed = decoder.failed();
    d.too_large = decoder.too_large();
    d.error = decoder.error();
    return d;
}

const std::string kMessage = "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";

TEST(HttpChunked, DecodesAWholeMessage) {
    Decoded d = decode(kMessage);
    EXPECT_TRUE(d.done);
    EXPECT_FALSE(d.failed);
    EXPECT_FALSE(d.too_large);
    EXPECT_EQ(d.error, "");
    EXPECT_EQ(d.out, "hello world");
    EXPECT_EQ(d.consumed, kMessage.size());
}

TEST(HttpChunked, AppendsToOutput) {
    ChunkedDecoder decoder(kNoLimit);
    std::string out = "prefix:";
    decoder.feed(kMessage, out);
    EXPECT_EQ(out, "prefix:hello world");
    EXPECT_EQ(decoder.decoded_size(), 11u);
}

TEST(HttpChunked, EmptyBody) {
    Decoded d = decode("0\r\n\r\n");
    EXPECT_TRUE(d.done);
    EXPECT_EQ(d.out, "");
    EXPECT_EQ(d.consumed, 5u);
}

TEST(HttpChunked, StopsAtTheEndOfTheMessage) {
    std::string next = "GET /next HTTP/1.1\r\n\r\n";
    ChunkedDecoder decoder(kNoLimit);
    std::string out;
    EXPECT_EQ(decoder.feed(kMessage + next, out), kMessage.size());
    EXPECT_TRUE(decoder.done());
    EXPECT_EQ(out, "hello world");
    EXPECT_EQ(decoder.feed(next, out), 0u);
    EXPECT_EQ(out, "hello world");
}

TEST(HttpChunked, SizesAreHexInAnyCase) {
    std::string sixteen = "0123456789abcdef";
    std::string twenty_six = "abcdefghijklmnopqrstuvwxyz";
    Decoded d = decode("10\r\n" + sixteen + "\r\n1A\r\n" + twenty_six + "\r\n1a\r\n" + twenty_six +
                       "\r\n00000\r\n\r\n");
    EXPECT_TRUE(d.done);
    EXPECT_EQ(d.out, sixteen + twenty_six + twenty_six);
    EXPECT_EQ(decode("0005\r\nhello\r\n0\r\n\r\n").out, "hello");
}

TEST(HttpChunked, ExtensionsAreIgnored) {
    Decoded d = decode(
        "5;name=value\r\nhello\r\n"
        "1 ; a ; b=\"q;uoted\"\r\n!\r\n"
        "2\t;x\r\n!!\r\n"
        "0;last\r\n\r\n");
    EXPECT_TRUE(d.done);
    EXPECT_EQ(d.out, "hello!!!");
}

TEST(HttpChunked, TrailersAreConsumedAndDiscarded) {
    std::string text = "3\r\nabc\r\n0\r\nX-Checksum: 900150983cd24fb0\r\nX-Other:\t2\r\n\r\n";
    Decoded d = decode(text + "NEXT");
    EXPECT_TRUE(d.done);
    EXPECT_EQ(d.out, "abc");
    EXPECT_EQ(d.consumed, text.size());
}

TEST(HttpChunked, BareLineFeeds) {
    std::string text = "5\nhello\n3;ext\nabc\n0\nTrailer: x\n\n";
    Decoded d = decode(text);
    EXPECT_TRUE(d.done);
    EXPECT_EQ(d.out, "helloabc");
    EXPECT_EQ(d.consumed, text.size());
}

TEST(HttpChunked, SplitAtEveryByte) {
    const std::string messages[] = {
        kMessage,
        // Data holding CR and LF is just data.
        "1a;ext=1\r\nabcdefghijklmnopqrstuvwxyz\r\n3\r\n\r\n\r\r\n0\r\nA: b\r\nC: d\r\n\r\n",
        "5\nhello\n0\n\n",
    };
    for (const std::string& message : messages) {
        SCOPED_TRACE(testing::PrintToString(message));
        std::string whole = decode(message).out;
        ASSERT_FALSE(whole.empty());
        // Two pieces, split at every position.
        for (std::size_t split = 0; split <= message.size(); ++split) {
            ChunkedDecoder decoder(kNoLimit);
            std::string out;
            std::size_t n = decoder.feed(std::string_view(message).substr(0, split), out);
            ASSERT_EQ(n, split);
            ASSERT_EQ(decoder.done(), split == message.size()) << "split at " << split;
            n += decoder.feed(std::string_view(message).substr(split), out);
            EXPECT_EQ(n, message.size()) << "split at " << split;
            EXPECT_TRUE(decoder.done()) << "split at " << split;
            EXPECT_EQ(out, whole) << "split at " << split;
        }
        // Byte by byte, also with the next message behind it.
        Decoded d = decode_in_steps(message + "next", 1);
        EXPECT_TRUE(d.done);
        EXPECT_EQ(d.consumed, message.size());
        EXPECT_EQ(d.out, whole);
    }
}

TEST(HttpChunked, TooLarge) {
    // Exactly the limit is fine.
    Decoded d = decode("5\r\nhello\r\n5\r\nworld\r\n0\r\n\r\n", 10);
    EXPECT_TRUE(d.done);
    EXPECT_EQ(d.out, "helloworld");
    // One byte more fails as soon as the chunk size is known, before its data arrives.
    d = decode("5\r\nhello\r\n6\r\n", 10);
    EXPECT_TRUE(d.failed);
    EXPECT_TRUE(d.too_large);
    EXPECT_FALSE(d.done);
    EXPECT_FALSE(d.error.empty());
    EXPECT_EQ(d.out, "hello");
    d = decode("b\r\n", 10);
    EXPECT_TRUE(d.too_large);
    d = decode_in_steps("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n", 1, 10);
    EXPECT_TRUE(d.too_large);
    EXPECT_EQ(d.out, "hello");
    d = decode("1\r\na\r\n", 0);
    EXPECT_TRUE(d.too_large);
    EXPECT_TRUE(decode("0\r\n\r\n", 0).done);
}

TEST(HttpChunked, ChunkSizeOverflow) {
    // The largest size parses (and exceeds no limit), one more hex digit overflows.
    ChunkedDecoder decoder(kNoLimit);
    std::string out;
    EXPECT_EQ(decoder.feed("ffffffffffffffff\r\nabc", out), 21u);
    EXPECT_FALSE(decoder.failed());
    EXPECT_EQ(out, "abc");

    Decoded d = decode("10000000000000000\r\n");
    EXPECT_TRUE(d.failed);
    EXPECT_TRUE(d.too_large);
    d = decode("fffffffffffffffff\r\n");
    EXPECT_TRUE(d.failed);
    // Leading zeros do not overflow.
    EXPECT_TRUE(decode("00000000000000000000001\r\nx\r\n0\r\n\r\n").done);
}

TEST(HttpChunked, MalformedInput) {
    for (std::string text : {
             "x\r\n",                   // not hex
             "\r\n",                    // no size
             ";ext\r\n",                // no size
             " 5\r\n",                  // space before the size
             "-5\r\n",                  //
             "0x5\r\n",                 //
             "5 x\r\nhello\r\n",        // junk after the size
             "5\rhello\r\n",            // CR without LF
             "5;a\x01\r\nhello\r\n",    // control character in extension
             "5\r\nhelloX\r\n",         // data longer than the size
             "5\r\nhello\rX",           // CR without LF after the data
             "5\r\nhello\r\n0\r\n\rX",  // CR without LF at the end
             "0\r\nX: a\rb\r\n\r\n",    // bare CR in a trailer
             "0\r\n folded\r\n\r\n",    // trailer starting with whitespace
             "0\r\n: no name\r\n\r\n",  //
             "0\r\nX: a\x01\r\n\r\n",   // control character in a trailer
         }) {
        SCOPED_TRACE(testing::PrintToString(text));
        Decoded d = decode(text);
        EXPECT_TRUE(d.failed);
        EXPECT_FALSE(d.done);
        EXPECT_FALSE(d.too_large);
        EXPECT_FALSE(d.error.empty());
        EXPECT_LT(d.consumed, text.size());
        // The same byte by byte.
        EXPECT_TRUE(decode_in_steps(text, 1).failed);
    }
}

TEST(HttpChunked, FailedDecoderConsumesNothingMore) {
    ChunkedDecoder decoder(kNoLimit);
    std::string out;
    decoder.feed("zz", out);
    ASSERT_TRUE(decoder.failed());
    EXPECT_EQ(decoder.feed("5\r\nhello\r\n0\r\n\r\n", out), 0u);
    EXPECT_EQ(out, "");
    EXPECT_TRUE(decoder.failed());
}

TEST(HttpChunked, SizeLineLengthIsLimited) {
    std::string extension(ChunkedDecoder::kMaxSizeLine, 'a');
    Decoded d = decode("5;" + extension + "\r\nhello\r\n0\r\n\r\n");
    EXPECT_TRUE(d.failed);
    EXPECT_FALSE(d.too_large);
    d = decode(std::string(ChunkedDecoder::kMaxSizeLine + 1, '0') + "\r\n");
    EXPECT_TRUE(d.failed);
    // Just within the limit: digits, ';' and extension, CR LF.
    std::string fits = "5;" + std::string(ChunkedDecoder::kMaxSizeLine - 5, 'a') + "\r\n";
    ASSERT_EQ(fits.size(), ChunkedDecoder::kMaxSizeLine - 1);
    EXPECT_TRUE(decode(fits + "hello\r\n0\r\n\r\n").done);
    // The limit is per line.
    std::string many;
    for (int i = 0; i < 10; ++i) {
        many += "1;" + std::string(ChunkedDecoder::kMaxSizeLine - 10, 'e') + "\r\nx\r\n";
    }
    d = decode(many + "0\r\n\r\n");
    EXPECT_TRUE(d.done);
    EXPECT_EQ(d.out, "xxxxxxxxxx");
}

TEST(HttpChunked, TrailerSectionSizeIsLimited) {
    std::string small_trailers;
    while (small_trailers.size() + 20 < ChunkedDecoder::kMaxTrailerBytes) {
        small_trailers += "X-T: 0123456789ab\r\n";  // 19 bytes
    }
    EXPECT_TRUE(decode("0\r\n" + small_trailers + "\r\n").done);
    std::string big = "X-Big: " + std::string(ChunkedDecoder::kMaxTrailerBytes, 'a') + "\r\n";
    Decoded d = decode("0\r\n" + big + "\r\n");
    EXPECT_TRUE(d.failed);
    EXPECT_FALSE(d.too_large);
    EXPECT_TRUE(decode("0\r\n" + small_trailers + small_trailers + "\r\n").failed);
}

TEST(HttpChunked, ResetForTheNextMessage) {
    ChunkedDecoder decoder(4);
    std::string out;
    decoder.feed("5\r\nhello", out);
    ASSERT_TRUE(decoder.too_large());
    decoder.reset(kNoLimit);
    EXPECT_FALSE(decoder.failed());
    EXPECT_FALSE(decoder.too_large());
    EXPECT_EQ(decoder.error(), "");
    out.clear();
    EXPECT_EQ(decoder.feed(kMessage, out), kMessage.size());
    EXPECT_TRUE(decoder.done());
    EXPECT_EQ(out, "hello world");
    EXPECT_EQ(decoder.decoded_size(), 11u);
}

}  // namespace
}  // namespace unifaas::http
