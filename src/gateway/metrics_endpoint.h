// GET /metrics: the Prometheus text exposition of every function's counters and instances.
#pragma once

#include <functional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "metrics/function_metrics.h"
#include "pool/pool.h"

namespace unifaas {

std::string render_metrics(
    const std::vector<std::pair<PoolSnapshot, const FunctionMetrics*>>& pools,
    const std::function<void(std::string&)>& extra = {});

// The node's samples: unifaas_node_info{node,version} 1 (join on it to tell a fleet's nodes
// apart) and unifaas_draining (1 while /healthz answers 503).
std::string render_node_metrics(std::string_view node, std::string_view version, bool draining);

}  // namespace unifaas
