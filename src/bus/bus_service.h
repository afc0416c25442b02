// BusService: the daemon's management interface on the system bus: name org.unifaas, the manager
// at /org/unifaas (org.unifaas.Manager1) and one object per live instance at
// /org/unifaas/instance/<id> (org.unifaas.Instance1). Interfaces: dbus/*.xml; who may call what:
// dbus/org.unifaas.conf.
//
// Threads: everything D-Bus happens on the service's own thread (method calls, objects,
// signals). As a PoolObserver it is called with a pool's lock held and only queues the event and
// wakes that thread (an eventfd), so a slow D-Bus client never holds up an invocation. Changes of
// one instance coalesce in the queue (only the newest is applied).
#pragma once

#include <sdbus-c++/IConnection.h>

#include <atomic>
#include <chrono>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <unordered_map>

#include "bus/instance_object.h"
#include "bus/manager_object.h"
#include "bus/observer_relay.h"
#include "bus/unit_accounting.h"
#include "pool/function_table.h"
#include "registry/registry.h"

namespace unifaas {

class Network;

class BusService final : public PoolObserver {
  public:
    static constexpr const char* kBusName = "org.unifaas";

    using Config = BusInfo;  // {version, listen_address, subnet}
    // Re-reads the registry (the Reload method); returns the number of functions loaded.
    using ReloadFn = std::function<unsigned()>;

    // Nothing happens on the bus until start(). `network` may be null (CleanupTaps is then
    // NotAvailable); `accounting` and `reload` may be empty.
    BusService(Config config, FunctionTable& functions, Registry& registry, Network* network,
               AccountingSource accounting, ReloadFn reload);
    // Leaves the relay, stops the bus thread, releases the name and closes the connection.
    ~BusService() override;
    BusService(const BusService&) = delete;
    BusService& operator=(const BusService&) = delete;

    // Connects to the system bus (DBUS_SYSTEM_BUS_ADDRESS when set), publishes the objects (one
    // per instance already live), owns org.unifaas and serves on a thread of its own. `events`:
    // the relay the pools report to, which the service attaches to while it runs (null when this
    // service is the pools' observer itself). Throws std::runtime_error saying why when it cannot
    // connect or own the name; the service is then inert.
    void start(ObserverRelay* events = nullptr);
    // The same on a connection made by the caller.
    void start(std::unique_ptr<sdbus::IConnection> connection, ObserverRelay* events = nullptr);

    // Drain()/Undrain() and the Draining property act on `drain` (owned by the caller, outliving
    // the service). Before start(); without it they are NotAvailable.
    void set_drain_switch(DrainSwitch* drain);

    // PoolObserver: queue and wake the bus thread; nothing else (called under a pool's lock).
    void instance_started(const InstanceSnapshot& s) override;
    void instance_changed(const InstanceSnapshot& s) override;
    void instance_stopped(const InstanceSnapshot& s, const std::string& reason) override;

  private:
    struct Lifecycle {
        bool started;  // else stopped
        InstanceSnapshot snapshot;
        std::string reason;
    };

    void publish(std::unique_ptr<sdbus::IConnection> connection, ObserverRelay* events);
    void stop() noexcept;
    void run();
    // Sleeps until the bus or the pools have work, or until pending changes are due.
    void wait_for_work(std::optional<std::chrono::milliseconds> changes_due);
    void wake();
    // On the bus thread: applies the queued events to the objects and emits the signals; count
    // changes only when due (or `all`). Returns how long until pending changes are due.
    std::optional<std::chrono::milliseconds> apply_events(bool all = false);
    void add_instance(const InstanceSnapshot& s, bool announce);
    void remove_instance(const InstanceSnapshot& s, const std::string& reason);
    void queue_lifecycle(Lifecycle event);

    Config config_;
    FunctionTable& functions_;
    Registry& registry_;
    Network* network_;
    AccountingSource accounting_;
    ReloadFn reload_;

    // Bus thread (and start/stop while it is not running).
    std::unique_ptr<sdbus::IConnection> connection_;
    std::unique_ptr<ManagerObject> manager_;
    std::map<std::string, std::unique_ptr<InstanceObject>> instances_;
    ObserverRelay* relay_ = nullptr;
    bool name_owned_ = false;
    std::thread thread_;
    std::atomic<bool> stopping_{false};
    int wake_fd_ = -1;  // eventfd: events queued or stop requested
    DrainSwitch* drain_ = nullptr;
    std::atomic<bool> draining_changed_{false};  // any thread -> bus thread: emit Draining

    // Pool threads -> bus thread.
    std::mutex mu_;
    bool accepting_ = false;  // the bus thread runs (or is about to): events are worth queuing
    bool woken_ = false;      // wake_fd_ written since the bus thread last drained
    std::deque<Lifecycle> lifecycle_;
    std::unordered_map<std::string, InstanceSnapshot> changes_;  // newest per instance
    // Count changes (InUse, Requests) are published at most every kChangesInterval: a busy
    // instance would otherwise emit PropertiesChanged for every request. Lifecycle is immediate.
    std::chrono::steady_clock::time_point changes_due_{};
    static constexpr std::chrono::milliseconds kChangesInterval{100};
};

}  // namespace unifaas
