// UnitAccounting: what systemd accounts for the unit (transient scope) holding an instance, as the
// bus shows it on org.unifaas.Instance1. Provided by main (systemd's scope accounting); kUnknown
// for a value that is not known (no unit, accounting off), as systemd itself reports it.
#pragma once

#include <cstdint>
#include <functional>
#include <limits>
#include <string>

namespace unifaas {

struct UnitAccounting {
    static constexpr std::uint64_t kUnknown = std::numeric_limits<std::uint64_t>::max();

    std::uint64_t memory_current = kUnknown;  // bytes
    std::uint64_t cpu_usage_nsec = kUnknown;  // nanoseconds of CPU time
    std::uint64_t tasks_current = kUnknown;
};

// The accounting of a unit by name ("unifaas-3f2a….scope"); may block briefly (a D-Bus call).
using AccountingSource = std::function<UnitAccounting(const std::string& unit)>;

}  // namespace unifaas
