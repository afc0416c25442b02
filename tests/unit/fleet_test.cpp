// A node behind a load balancer: the drain switch, the agent-check weight and reply, the node's
// metrics.
#include <gtest/gtest.h>

#include <vector>

#include "fleet/drain_switch.h"
#include "fleet/load_report.h"
#include "gateway/metrics_endpoint.h"

namespace unifaas {
namespace {

PoolLoad pool(std::size_t limit, std::size_t in_use, std::size_t queued = 0) {
    return PoolLoad{limit, in_use, queued};
}

TEST(CapacityWeight, FullWeightWithoutPoolsOrBelowHalfLoad) {
    EXPECT_EQ(capacity_weight({}), 100u);
    EXPECT_EQ(capacity_weight({pool(10, 0)}), 100u);
    EXPECT_EQ(capacity_weight({pool(10, 1)}), 100u) << "small loads must not move functions";
    EXPECT_EQ(capacity_weight({pool(10, 5)}), 100u) << "exactly half";
    EXPECT_EQ(capacity_weight({pool(0, 0)}), 100u) << "a pool without a definition yet";
}

TEST(CapacityWeight, FallsLinearlyAboveHalfInStepsOfTen) {
    EXPECT_EQ(capacity_weight({pool(10, 6)}), 80u);    // 200 × 0.4
    EXPECT_EQ(capacity_weight({pool(10, 9)}), 20u);    // 200 × 0.1
    EXPECT_EQ(capacity_weight({pool(100, 51)}), 90u);  // 98 rounded down
    EXPECT_EQ(capacity_weight({pool(100, 99)}), 1u);   // 2 rounds down to 0: at least 1
}

TEST(CapacityWeight, AtOrOverTheLimitIsOnePercent) {
    EXPECT_EQ(capacity_weight({pool(1, 1)}), 1u) << "max-instances 1, its one slot in use";
    EXPECT_EQ(capacity_weight({pool(4, 4, 10)}), 1u) << "queued requests beyond the limit";
}

TEST(CapacityWeight, SumsOverFunctionsAndCountsQueues) {
    // One function full, another idle: 10 of 20 slots, half load.
    EXPECT_EQ(capacity_weight({pool(10, 10), pool(10, 0)}), 100u);
    // 15 of 20 (5 of them queued): 200 × 0.25 = 50.
    EXPECT_EQ(capacity_weight({pool(10, 10), pool(10, 0, 5)}), 50u);
}

TEST(CapacityWeight, LoadOfASnapshotCountsSlotsInUseOnEveryInstance) {
    PoolSnapshot snap;
    snap.slot_limit = 8;
    snap.queued = 2;
    snap.instances.resize(3);
    snap.instances[0].in_use = 2;
    snap.instances[1].in_use = 0;
    snap.instances[2].in_use = 1;
    PoolLoad load = load_of(snap);
    EXPECT_EQ(load.slot_limit, 8u);
    EXPECT_EQ(load.in_use, 3u);
    EXPECT_EQ(load.queued, 2u);
}

TEST(CapacityWeight, IdleFunctionsOfferNoCapacity) {
    PoolSnapshot idle;
    idle.slot_limit = 80;  // a function loaded from the registry, never used
    PoolLoad load = load_of(idle);
    EXPECT_EQ(load.slot_limit, 0u);
    PoolSnapshot full;
    full.slot_limit = 1;
    full.instances.resize(1);
    full.instances[0].in_use = 1;
    EXPECT_EQ(capacity_weight({load_of(idle), load_of(full)}), 1u)
        << "the idle function must not hide the full one";
    PoolSnapshot queued_only;  // waiting for its first instance
    queued_only.slot_limit = 4;
    queued_only.queued = 3;
    EXPECT_EQ(load_of(queued_only).slot_limit, 4u);
}

TEST(AgentReply, OneLinePerState) {
    EXPECT_EQ(agent_reply(NodeState::Serving, 100), "up ready 100%\n");
    EXPECT_EQ(agent_reply(NodeState::Serving, 30), "up ready 30%\n");
    EXPECT_EQ(agent_reply(NodeState::Serving, 0), "up ready 1%\n") << "never weight 0 while up";
    EXPECT_EQ(agent_reply(NodeState::Draining, 100), "drain\n");
    EXPECT_EQ(agent_reply(NodeState::Stopping, 100), "down #stopping\n");
}

TEST(DrainSwitch, DrainAndUndrainToggleWhileServing) {
    DrainSwitch d;
    std::vector<NodeState> seen;
    d.set_listener([&](NodeState s) { seen.push_back(s); });
    EXPECT_FALSE(d.draining());
    EXPECT_FALSE(d.undrain()) << "not draining";
    EXPECT_TRUE(d.drain());
    EXPECT_FALSE(d.drain()) << "already draining";
    EXPECT_TRUE(d.draining());
    EXPECT_TRUE(d.undrain());
    EXPECT_EQ(d.state(), NodeState::Serving);
    EXPECT_EQ(seen, (std::vector<NodeState>{NodeState::Draining, NodeState::Serving}));
}

TEST(DrainSwitch, ShutdownDrainsForGood) {
    DrainSwitch d;
    std::vector<NodeState> seen;
    d.set_listener([&](NodeState s) { seen.push_back(s); });
    d.begin_shutdown();
    EXPECT_EQ(d.state(), NodeState::Draining);
    EXPECT_TRUE(d.shutting_down());
    EXPECT_FALSE(d.undrain()) << "SIGTERM is not undone over D-Bus";
    EXPECT_EQ(d.state(), NodeState::Draining);
    d.stopping();
    EXPECT_EQ(d.state(), NodeState::Stopping);
    EXPECT_FALSE(d.drain());
    EXPECT_EQ(seen, (std::vector<NodeState>{NodeState::Draining, NodeState::Stopping}));
}

TEST(DrainSwitch, ShutdownOfADrainedNodeStillLocksTheDrain) {
    DrainSwitch d;
    ASSERT_TRUE(d.drain());
    d.begin_shutdown();
    EXPECT_TRUE(d.shutting_down());
    EXPECT_FALSE(d.undrain());
    EXPECT_EQ(d.state(), NodeState::Draining);
}

TEST(NodeMetrics, InfoMetricCarriesTheNodeName) {
    std::string text = render_node_metrics("edge-\"1\"", "1.2.3", false);
    EXPECT_NE(text.find("# TYPE unifaas_node_info gauge\n"), std::string::npos) << text;
    EXPECT_NE(text.find("unifaas_node_info{node=\"edge-\\\"1\\\"\",version=\"1.2.3\"} 1\n"),
              std::string::npos)
        << text;
    EXPECT_NE(text.find("unifaas_draining 0\n"), std::string::npos) << text;
    EXPECT_NE(render_node_metrics("n", "v", true).find("unifaas_draining 1\n"), std::string::npos);
}

}  // namespace
}  // namespace unifaas
