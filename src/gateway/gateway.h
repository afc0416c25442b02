// Gateway: the daemon's HTTP face. The invocation server (/invoke/<function>/<path…>, /healthz,
// /status, /metrics) runs on event loops (HttpServer): a request waits for its instance slot and
// its instance's answer without holding a thread. The callback server (/ready/<token>, reached by
// booting instances, rare) is a small cpp-httplib server.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <utility>
#include <vector>

#include "config/daemon_config.h"
#include "fleet/drain_switch.h"
#include "gateway/http_server.h"
#include "gateway/listening_server.h"
#include "gateway/stream_relay.h"
#include "gateway/tunnel.h"
#include "gateway/upstream_call.h"
#include "pool/function_table.h"
#include "pool/readiness.h"

namespace unifaas {

struct Listeners {
    int http_fd = -1;      // invocations
    int callback_fd = -1;  // readiness callbacks
    int agent_fd = -1;     // HAProxy agent-check (served by main's AgentServer, not the gateway)
};

class Gateway {
  public:
    // Appends daemon-wide samples (e.g. tap leases) to /metrics.
    using MetricsAppender = std::function<void(std::string&)>;
    Gateway(const DaemonConfig& config, FunctionTable& functions, Readiness& readiness,
            MetricsAppender extra_metrics = {});
    ~Gateway();

    // Serves the given listening sockets (taking ownership) on their own threads.
    void serve(Listeners listeners);
    // Stops accepting invocations; requests in progress go on.
    void stop_accepting();
    // Waits until no invocation is in progress, or until `deadline`. True when drained.
    bool drain(std::chrono::steady_clock::time_point deadline);
    // Stops the callback server too and waits for every connection thread.
    void join();

    std::size_t in_flight() const;
    // While `drain` (owned by the caller) says draining, /healthz answers 503 "draining".
    void set_drain_switch(const DrainSwitch* drain) { drain_ = drain; }

  private:
    class InFlight;
    struct Invocation;
    HttpServer::Options invoke_options() const;
    std::string error_text(std::string_view target, int status, std::string_view problem) const;
    void setup_callback_server();
    void on_request(const std::shared_ptr<HttpExchange>& ex);
    void invoke(const std::shared_ptr<HttpExchange>& ex);
    void on_lease(const std::shared_ptr<Invocation>& call, std::shared_ptr<Lease> lease,
                  std::optional<PoolError> error);
    void open_tunnel(const std::shared_ptr<Invocation>& call, std::shared_ptr<Lease> lease,
                     UpstreamReply reply);
    void on_reply(const std::shared_ptr<Invocation>& call, std::shared_ptr<Lease> lease,
                  UpstreamReply reply);
    static StreamLimits stream_limits(const FunctionSpec& spec);
    std::size_t body_limit(std::string_view target) const;
    static void client_left(Invocation& call);
    std::string status_json() const;
    void ready(const httplib::Request& req, httplib::Response& res);

    MetricsAppender extra_metrics_;
    const DrainSwitch* drain_ = nullptr;
    const DaemonConfig& config_;
    FunctionTable& functions_;
    Readiness& readiness_;
    HttpServer invoke_server_;
    ListeningServer callback_server_;

    // Open tunnels (they left the HTTP server): join() ends them on their loops first, so none
    // outlives the gateway (a tunnel holds an invocation, which refers to it).
    std::mutex tunnels_mu_;
    std::vector<std::pair<EventLoop*, std::weak_ptr<Tunnel>>> tunnels_;

    mutable std::mutex mu_;
    std::condition_variable drained_;
    std::atomic<std::size_t> in_flight_{0};
};

}  // namespace unifaas
