// What this node tells HAProxy's agent-check: its state and a weight in percent derived from its
// free capacity. Pure functions; the TCP side is AgentServer.
//
// Load L = Σ(slots in use + requests queued) / Σ slot limit, summed over the active functions
// (with live instances or queued requests), a function's slot limit being max-instances ×
// concurrent-requests (× 1 when single-use). Idle functions do not count: every function in the
// registry has a pool, and their limits together say nothing about what this host can take. Weight
// = 100 % while L ≤ 0.5; above that 200 × (1 − L) %, rounded down to a multiple of 10, at least 1
// %. Below half load the weight stays put on purpose: with `hash-type consistent` every weight
// change moves a few functions to another node (a cold start each), so small fluctuations must not
// change it. 1 % rather than 0: a full node keeps the functions hashed to it (their warm
// instances), it just stops attracting others.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include "fleet/drain_switch.h"
#include "pool/pool.h"

namespace unifaas {

struct PoolLoad {
    std::size_t slot_limit = 0;  // max-instances × slots per instance
    std::size_t in_use = 0;      // slots taken (on ready and booting instances)
    std::size_t queued = 0;      // requests waiting for a slot
};

// An idle pool (no instance, no queue) contributes nothing.
PoolLoad load_of(const PoolSnapshot& pool);

// The weight in percent (1..100) for these pools; 100 without any (or all idle).
unsigned capacity_weight(const std::vector<PoolLoad>& pools);

// The agent-check line (with its "\n"): "up ready <w>%" serving, "drain" draining, "down" once
// the listener is closed.
std::string agent_reply(NodeState state, unsigned weight);

}  // namespace unifaas
