// The Prometheus text exposition of /metrics.
#include <gtest/gtest.h>

#include "gateway/metrics_endpoint.h"

namespace unifaas {
namespace {

using namespace std::chrono_literals;

TEST(Histogram, CountsIntoCumulativeBuckets) {
    Histogram h;
    h.observe(300us);  // <= 0.0005
    h.observe(2ms);    // <= 0.0025
    h.observe(20s);    // +Inf only
    std::string out;
    h.render(out, "x_seconds", "function=\"f\"");
    EXPECT_NE(out.find("x_seconds_bucket{function=\"f\",le=\"0.0005\"} 1\n"), std::string::npos)
        << out;
    EXPECT_NE(out.find("x_seconds_bucket{function=\"f\",le=\"0.001\"} 1\n"), std::string::npos);
    EXPECT_NE(out.find("x_seconds_bucket{function=\"f\",le=\"0.0025\"} 2\n"), std::string::npos);
    EXPECT_NE(out.find("x_seconds_bucket{function=\"f\",le=\"10\"} 2\n"), std::string::npos);
    EXPECT_NE(out.find("x_seconds_bucket{function=\"f\",le=\"+Inf\"} 3\n"), std::string::npos);
    EXPECT_NE(out.find("x_seconds_count{function=\"f\"} 3\n"), std::string::npos);
    EXPECT_NE(out.find("x_seconds_sum{function=\"f\"} 20.0023\n"), std::string::npos) << out;
}

TEST(MetricsEndpoint, RendersEveryFamilyWithFunctionLabels) {
    FunctionMetrics m;
    m.count_invocation(200);
    m.count_invocation(200);
    m.count_invocation(503);
    m.cold_starts = 3;
    m.restore_starts = 2;
    m.cold_start_seconds.observe(1500ms);
    m.restore_seconds.observe(200ms);
    PoolSnapshot p;
    p.function = "he\"llo";
    p.queued = 2;
    InstanceSnapshot ready;
    ready.state = InstanceState::Ready;
    p.instances.push_back(ready);
    std::string out = render_metrics({{p, &m}}, [](std::string& o) { o += "extra_sample 1\n"; });
    for (auto line : {"unifaas_invocations_total{function=\"he\\\"llo\",code=\"200\"} 2\n",
                      "unifaas_invocations_total{function=\"he\\\"llo\",code=\"503\"} 1\n",
                      "unifaas_cold_starts_total{function=\"he\\\"llo\",kind=\"boot\"} 1\n",
                      "unifaas_cold_starts_total{function=\"he\\\"llo\",kind=\"restore\"} 2\n",
                      "unifaas_restore_duration_seconds_count{function=\"he\\\"llo\"} 1\n",
                      "unifaas_queue_length{function=\"he\\\"llo\"} 2\n",
                      "unifaas_instances{function=\"he\\\"llo\",state=\"ready\"} 1\n",
                      "unifaas_instances{function=\"he\\\"llo\",state=\"booting\"} 0\n",
                      "# TYPE unifaas_cold_start_duration_seconds histogram\n",
                      "# TYPE unifaas_invocations_total counter\n", "extra_sample 1\n"}) {
        EXPECT_NE(out.find(line), std::string::npos) << line << "\n---\n" << out;
    }
    EXPECT_EQ(out.find("code=\"404\""), std::string::npos) << "codes never seen are not listed";
}

}  // namespace
}  // namespace unifaas
