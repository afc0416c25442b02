// Gateway: the daemon's HTTP face. The invocation server (/invoke/<function>/<path…>, /healthz,
// /status) and the callback server (/ready/<token>, reached by booting instances).
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>

#include "config/daemon_config.h"
#include "gateway/listening_server.h"
#include "pool/function_table.h"
#include "pool/readiness.h"

namespace unifaas {

struct Listeners {
    int http_fd = -1;      // invocations
    int callback_fd = -1;  // readiness callbacks
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

  private:
    class InFlight;
    void setup_invoke_server();
    void setup_callback_server();
    void invoke(const httplib::Request& req, httplib::Response& res);
    void status(httplib::Response& res);
    void ready(const httplib::Request& req, httplib::Response& res);

    MetricsAppender extra_metrics_;
    const DaemonConfig& config_;
    FunctionTable& functions_;
    Readiness& readiness_;
    ListeningServer invoke_server_;
    ListeningServer callback_server_;

    mutable std::mutex mu_;
    std::condition_variable drained_;
    std::atomic<std::size_t> in_flight_{0};
};

}  // namespace unifaas
