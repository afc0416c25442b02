#include "fleet/load_report.h"

#include <algorithm>

namespace unifaas {

PoolLoad load_of(const PoolSnapshot& pool) {
    PoolLoad load;
    if (pool.instances.empty() && pool.queued == 0) {
        return load;  // idle: every loaded function has a pool, most of them unused
    }
    load.slot_limit = pool.slot_limit;
    load.queued = pool.queued;
    for (const auto& instance : pool.instances) {
        load.in_use += instance.in_use;
    }
    return load;
}

unsigned capacity_weight(const std::vector<PoolLoad>& pools) {
    std::size_t limit = 0, demand = 0;
    for (const auto& p : pools) {
        limit += p.slot_limit;
        demand += p.in_use + p.queued;
    }
    if (limit == 0 || 2 * demand <= limit) {
        return 100;
    }
    if (demand >= limit) {
        return 1;
    }
    // 200 × (1 − demand/limit), rounded down to a multiple of 10.
    std::size_t percent = 200 * (limit - demand) / limit;
    return std::max<unsigned>(1, static_cast<unsigned>(percent / 10 * 10));
}

std::string agent_reply(NodeState state, unsigned weight) {
    switch (state) {
        case NodeState::Serving:
            return "up ready " + std::to_string(std::clamp(weight, 1u, 100u)) + "%\n";
        case NodeState::Draining:
            return "drain\n";
        case NodeState::Stopping:
            return "down #stopping\n";
    }
    return "down\n";
}

}  // namespace unifaas
