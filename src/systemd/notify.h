// ServiceNotifier: what the service manager hears from the daemon (sd_notify): READY=1 once
// serving, a STATUS= line kept current as instances come and go ("3 functions, 2 instances
// (1 booting)"), RELOADING=1 around a reload, STOPPING=1 on shutdown and WATCHDOG=1 keep-alives
// when the unit has WatchdogSec=. Without NOTIFY_SOCKET every message is simply dropped.
#pragma once

#include <chrono>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <unordered_map>

#include "pool/pool.h"

namespace unifaas {

struct ServiceCounts {
    unsigned functions = 0;  // loaded from the registry
    unsigned broken = 0;     // function.toml files with errors
    unsigned instances = 0;  // live instances (starting, booting, ready)
    unsigned booting = 0;    // of those, not ready yet (starting or booting)
};

// "1 function, 0 instances", "3 functions (1 with errors), 2 instances (1 booting)".
std::string format_status(const ServiceCounts& counts);

// The watchdog interval the service manager asked for (WATCHDOG_USEC for this process), if any.
std::optional<std::chrono::microseconds> watchdog_interval();

class ServiceNotifier : public PoolObserver {
  public:
    using Send = std::function<void(const std::string& message)>;
    // At most one STATUS update per this interval; updates in between are merged.
    static constexpr std::chrono::milliseconds kStatusInterval{500};

    // Sends with sd_notify; keeps the watchdog fed when the unit asks for it.
    ServiceNotifier();
    // For tests: `send` receives each message; WATCHDOG=1 every watchdog/2 when set.
    ServiceNotifier(Send send, std::optional<std::chrono::microseconds> watchdog);
    ~ServiceNotifier() override;
    ServiceNotifier(const ServiceNotifier&) = delete;
    ServiceNotifier& operator=(const ServiceNotifier&) = delete;

    // READY=1 with the first STATUS; STATUS updates start from here.
    void ready(unsigned functions, unsigned broken);
    // RELOADING=1 with MONOTONIC_USEC, before re-reading the registry.
    void reloading();
    // READY=1 again with the new function counts.
    void reloaded(unsigned functions, unsigned broken);
    // STOPPING=1; STATUS keeps following the instances while they stop.
    void stopping();

    ServiceCounts counts() const;

    // PoolObserver: record and wake the sender thread only (called under a pool's lock).
    void instance_started(const InstanceSnapshot& s) override;
    void instance_changed(const InstanceSnapshot& s) override;
    void instance_stopped(const InstanceSnapshot& s, const std::string& reason) override;

  private:
    using Clock = std::chrono::steady_clock;

    void run();
    void send_with_status(const std::string& prefix);
    void set_state(const std::string& id, InstanceState state);
    ServiceCounts counts_locked() const;
    std::string status_locked() const;

    Send send_;
    std::optional<Clock::duration> watchdog_every_;

    std::mutex send_mu_;  // taken before mu_; never by the observer callbacks
    mutable std::mutex mu_;
    std::condition_variable cv_;
    bool stop_ = false;
    bool announced_ = false;  // READY=1 sent: STATUS updates may follow
    bool dirty_ = false;
    unsigned functions_ = 0;
    unsigned broken_ = 0;
    std::unordered_map<std::string, InstanceState> instances_;
    Clock::time_point next_status_{};
    Clock::time_point next_watchdog_{};
    std::thread thread_;
};

}  // namespace unifaas
