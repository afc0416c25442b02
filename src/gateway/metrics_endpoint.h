// GET /metrics: the Prometheus text exposition of every function's counters and instances.
#pragma once

#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "metrics/function_metrics.h"
#include "pool/pool.h"

namespace unifaas {

std::string render_metrics(
    const std::vector<std::pair<PoolSnapshot, const FunctionMetrics*>>& pools,
    const std::function<void(std::string&)>& extra = {});

}  // namespace unifaas
