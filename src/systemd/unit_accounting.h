// Resource use of a systemd unit, as its cgroup accounting reports it.
#pragma once

#include <cstdint>
#include <limits>

namespace unifaas {

// systemd reports UINT64_MAX for a counter it does not know (accounting off, controller
// unavailable, unit gone).
inline constexpr std::uint64_t kAccountingUnknown = std::numeric_limits<std::uint64_t>::max();

struct ScopeAccounting {
    std::uint64_t memory_current = kAccountingUnknown;  // bytes (MemoryCurrent)
    std::uint64_t cpu_usage_nsec = kAccountingUnknown;  // CPU time used (CPUUsageNSec)
    std::uint64_t tasks_current = kAccountingUnknown;   // processes and threads (TasksCurrent)
};

}  // namespace unifaas
