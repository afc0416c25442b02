#include "gateway/metrics_endpoint.h"

#include <fmt/format.h>

#include <map>

namespace unifaas {

namespace {

void header(std::string& out, const char* name, const char* type, const char* help) {
    out += fmt::format("# HELP {} {}\n# TYPE {} {}\n", name, help, name, type);
}

std::string function_label(const PoolSnapshot& p) {
    return fmt::format("function=\"{}\"", escape_label(p.function));
}

}  // namespace

std::string render_metrics(
    const std::vector<std::pair<PoolSnapshot, const FunctionMetrics*>>& pools,
    const std::function<void(std::string&)>& extra) {
    std::string out;
    out.reserve(4096 + pools.size() * 2048);

    header(out, "unifaas_invocations_total", "counter", "Invocations answered, by status code.");
    for (const auto& [p, m] : pools) {
        for (std::size_t code = 0; code < m->invocations.size(); ++code) {
            if (auto n = m->invocations[code].load(std::memory_order_relaxed)) {
                out += fmt::format("unifaas_invocations_total{{{},code=\"{}\"}} {}\n",
                                   function_label(p), code, n);
            }
        }
    }
    header(out, "unifaas_cold_starts_total", "counter", "Instances started.");
    for (const auto& [p, m] : pools) {
        out += fmt::format("unifaas_cold_starts_total{{{}}} {}\n", function_label(p),
                           m->cold_starts.load(std::memory_order_relaxed));
    }
    header(out, "unifaas_truncated_responses_total", "counter",
           "Streamed responses cut off after their head was sent.");
    for (const auto& [p, m] : pools) {
        out += fmt::format("unifaas_truncated_responses_total{{{}}} {}\n", function_label(p),
                           m->truncated_responses.load(std::memory_order_relaxed));
    }
    header(out, "unifaas_cold_start_duration_seconds", "histogram",
           "Time from starting an instance to its readiness callback.");
    for (const auto& [p, m] : pools) {
        m->cold_start_seconds.render(out, "unifaas_cold_start_duration_seconds", function_label(p));
    }
    header(out, "unifaas_invocation_duration_seconds", "histogram",
           "Time from accepting an invocation to having its answer.");
    for (const auto& [p, m] : pools) {
        m->invocation_seconds.render(out, "unifaas_invocation_duration_seconds", function_label(p));
    }
    header(out, "unifaas_queue_wait_seconds", "histogram",
           "Time queued requests waited for a slot.");
    for (const auto& [p, m] : pools) {
        m->queue_wait_seconds.render(out, "unifaas_queue_wait_seconds", function_label(p));
    }
    header(out, "unifaas_queue_length", "gauge", "Requests waiting for a slot.");
    for (const auto& [p, m] : pools) {
        out += fmt::format("unifaas_queue_length{{{}}} {}\n", function_label(p), p.queued);
    }
    header(out, "unifaas_instances", "gauge", "Instances by state.");
    for (const auto& [p, m] : pools) {
        std::map<std::string, unsigned> by_state = {{"starting", 0}, {"booting", 0}, {"ready", 0}};
        for (const auto& i : p.instances) {
            ++by_state[to_string(i.state)];
        }
        for (const auto& [state, n] : by_state) {
            out += fmt::format("unifaas_instances{{{},state=\"{}\"}} {}\n", function_label(p),
                               state, n);
        }
    }
    if (extra) {
        extra(out);
    }
    return out;
}

}  // namespace unifaas
