#include "gateway/metrics_endpoint.h"

#include <algorithm>
#include <map>

#include <fmt/format.h>

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
    header(out, "unifaas_cold_starts_total", "counter",
           "Instances started, by how: boot, restore of a snapshot template, or start of a "
           "spare (a container created ahead).");
    for (const auto& [p, m] : pools) {
        auto all = m->cold_starts.load(std::memory_order_relaxed);
        auto restored = m->restore_starts.load(std::memory_order_relaxed);
        auto spares = m->spare_starts.load(std::memory_order_relaxed);
        out += fmt::format("unifaas_cold_starts_total{{{},kind=\"boot\"}} {}\n", function_label(p),
                           all - std::min(all, restored + spares));
        out += fmt::format("unifaas_cold_starts_total{{{},kind=\"restore\"}} {}\n",
                           function_label(p), restored);
        if (spares > 0) {
            out += fmt::format("unifaas_cold_starts_total{{{},kind=\"spare\"}} {}\n",
                               function_label(p), spares);
        }
    }
    header(out, "unifaas_truncated_responses_total", "counter",
           "Streamed responses cut off after their head was sent.");
    for (const auto& [p, m] : pools) {
        out += fmt::format("unifaas_truncated_responses_total{{{}}} {}\n", function_label(p),
                           m->truncated_responses.load(std::memory_order_relaxed));
    }
    header(out, "unifaas_tunnels_total", "counter",
           "Exchanges that switched protocols (101, e.g. WebSocket) and became a tunnel.");
    for (const auto& [p, m] : pools) {
        out += fmt::format("unifaas_tunnels_total{{{}}} {}\n", function_label(p),
                           m->tunnels.load(std::memory_order_relaxed));
    }
    header(out, "unifaas_cold_start_duration_seconds", "histogram",
           "Time from starting an instance to its readiness callback.");
    for (const auto& [p, m] : pools) {
        m->cold_start_seconds.render(out, "unifaas_cold_start_duration_seconds", function_label(p));
    }
    header(out, "unifaas_restore_duration_seconds", "histogram",
           "Time from starting a clone of a snapshot template to its readiness callback.");
    for (const auto& [p, m] : pools) {
        m->restore_seconds.render(out, "unifaas_restore_duration_seconds", function_label(p));
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

std::string render_node_metrics(std::string_view node, std::string_view version, bool draining) {
    std::string out;
    header(out, "unifaas_node_info", "gauge", "This node: its name (node-name) and version.");
    out += fmt::format("unifaas_node_info{{node=\"{}\",version=\"{}\"}} 1\n",
                       escape_label(std::string(node)), escape_label(std::string(version)));
    header(out, "unifaas_draining", "gauge",
           "1 while the node drains (/healthz answers 503), else 0.");
    out += fmt::format("unifaas_draining {}\n", draining ? 1 : 0);
    return out;
}

}  // namespace unifaas
