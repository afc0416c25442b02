// Per-function counters and histograms for /metrics. Lock-free on the hot path: every update is a
// relaxed atomic add; a scrape reads them without stopping anybody.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <string>

namespace unifaas {

// A Prometheus histogram with fixed buckets (seconds).
class Histogram {
  public:
    static constexpr std::array<double, 14> kBounds = {
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10};
    void observe(std::chrono::nanoseconds d);
    // Appends the _bucket/_sum/_count lines for `name` with `labels` ("function=\"f\"").
    void render(std::string& out, const std::string& name, const std::string& labels) const;

  private:
    std::array<std::atomic<std::uint64_t>, kBounds.size() + 1> buckets_{};  // last: +Inf
    std::atomic<std::uint64_t> sum_ns_{0};
    std::atomic<std::uint64_t> count_{0};
};

struct FunctionMetrics {
    // Invocations by status code (100..599; anything else is counted as 0).
    std::array<std::atomic<std::uint64_t>, 600> invocations{};
    std::atomic<std::uint64_t> cold_starts{0};
    std::atomic<std::uint64_t> restore_starts{0};  // of cold_starts: clones of a snapshot
    std::atomic<std::uint64_t> spare_starts{0};    // of cold_starts: sandboxes prepared ahead
    // Streamed responses cut off after their head was sent (instance error, stream timeouts).
    std::atomic<std::uint64_t> truncated_responses{0};
    // Exchanges that switched protocols (101, e.g. WebSocket) and became a tunnel.
    std::atomic<std::uint64_t> tunnels{0};
    Histogram cold_start_seconds;  // instance created -> ready
    Histogram restore_seconds;     // the same, for clones restored from a snapshot
    Histogram invocation_seconds;  // request accepted -> response ready
    Histogram queue_wait_seconds;  // time spent waiting for a slot (queued requests only)

    void count_invocation(int status) {
        invocations[status >= 100 && status < 600 ? status : 0].fetch_add(
            1, std::memory_order_relaxed);
    }
};

// Escapes a label value for the text exposition format.
std::string escape_label(const std::string& value);

}  // namespace unifaas
