#pragma once
// The daemon's malloc policy, set once at startup before any thread exists.
//
// Why: every libnftables command (one per firewall attach or detach) allocates a ~2.07 MiB
// netlink batch buffer and about a dozen 128 KiB receive buffers for its cache dumps, with
// small cache objects in between. glibc mmaps blocks of 128 KiB and more at first, but raises
// that threshold (and the trim threshold with it) each time such a block is freed; after the
// first firewall command all of them were carved from the calling thread's arena. The small
// objects left between them pin the freed space, so each arena of the start, stop and
// callback threads kept ~2 MiB resident: a soak of 1000 OCI cold starts grew RSS from 17 to
// 35 MiB with no byte leaked (heaptrack: 0 B; malloc_info: ~1.9 MiB free per arena).
//
// What: glibc's own initial thresholds, fixed (setting them turns the dynamic adjustment off).
// Blocks of 128 KiB and more always come from mmap and go back to the kernel when freed (a
// 2 MiB nft batch touches only the pages it fills); what an arena keeps free at its top is
// bounded by the trim threshold. Smaller blocks are reused as before: the gateway's 64 KiB
// read buffers never pay a system call. The cost is an mmap/munmap pair per large block,
// about a dozen per firewall command.
#include <cstddef>

namespace unifaas {

inline constexpr std::size_t kMmapThreshold = 128 * 1024;
inline constexpr std::size_t kTrimThreshold = 128 * 1024;

// Applies the policy; false if glibc refused a setting (the daemon still runs, as before).
bool bound_heap_retention() noexcept;

}  // namespace unifaas
