#include "util/heap_policy.h"

#include <malloc.h>

#include <cstdlib>

#include <gtest/gtest.h>

namespace unifaas {
namespace {

// What one libnftables command (a firewall attach or detach) allocates and frees: its netlink
// batch buffer (2 MiB page + 64 KiB overrun + 1 page) and its receive buffers.
constexpr std::size_t kNftBatch = 2166783;
constexpr std::size_t kNftReceive = 128 * 1024;

// Bytes in mmapped blocks while `size` bytes are held (mallinfo2 counts them process-wide).
std::size_t mmapped_while_holding(std::size_t size) {
    std::size_t before = mallinfo2().hblkhd;
    auto* block = static_cast<volatile char*>(std::malloc(size));
    block[0] = 1;  // (used: the pair cannot be optimised away)
    std::size_t during = mallinfo2().hblkhd;
    std::free(const_cast<char*>(block));
    return during - before;
}

// Without the policy glibc raises its threshold when the first such block is freed, and every
// later one comes from (and stays in) the arena: the second round would see 0 bytes mmapped.
TEST(HeapPolicy, LargeBlocksStayMmappedAfterOneWasFreed) {
    ASSERT_TRUE(bound_heap_retention());
    for (int round = 0; round < 3; ++round) {
        EXPECT_GE(mmapped_while_holding(kNftBatch), kNftBatch)
            << "round " << round << ": a 2 MiB block came from an arena";
        EXPECT_GE(mmapped_while_holding(kNftReceive), kNftReceive)
            << "round " << round << ": a 128 KiB block came from an arena";
    }
}

TEST(HeapPolicy, BlocksBelowTheThresholdStayInTheArena) {
    ASSERT_TRUE(bound_heap_retention());
    EXPECT_EQ(mmapped_while_holding(64 * 1024), 0u);  // a gateway read buffer
}

}  // namespace
}  // namespace unifaas
