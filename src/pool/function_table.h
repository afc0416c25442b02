// FunctionTable: function name -> its current definition and its Pool. Consults the registry on
// every lookup so edits apply to new instances and new functions appear without a restart;
// pools are created on first use and live until shutdown.
#pragma once

#include <atomic>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "pool/pool.h"
#include "registry/registry.h"

namespace unifaas {

struct ResolvedFunction {
    enum class Kind { Unknown, Broken, Ok } kind = Kind::Unknown;
    std::shared_ptr<const FunctionSpec> spec;  // Ok
    std::string error;                         // Broken: the load error
    std::shared_ptr<Pool> pool;                // Ok
};

class FunctionTable {
  public:
    // Follows the registry's changes (Registry::on_change) for sandboxes made ahead.
    FunctionTable(Registry& registry, PoolServices services);
    ~FunctionTable();
    FunctionTable(const FunctionTable&) = delete;
    FunctionTable& operator=(const FunctionTable&) = delete;

    // `freshness` as in Registry::lookup: an event loop serving registry().watch_fd() first
    // (the gateway's) resolves Watched, everyone else Checked.
    ResolvedFunction resolve(std::string_view name,
                             Registry::Freshness freshness = Registry::Freshness::Checked);
    Registry& registry() { return registry_; }

    // Loads every function in the registry now: logs broken ones, starts min-instances.
    // Returns {loaded, broken}.
    std::pair<unsigned, unsigned> load_all();

    std::vector<PoolSnapshot> snapshot() const;
    // Each function's snapshot with its metrics (for /metrics).
    std::vector<std::pair<PoolSnapshot, const FunctionMetrics*>> metrics_view() const;
    std::shared_ptr<Pool> find_pool(std::string_view name) const;

    // The live instance with that id, and its pool.
    std::pair<std::shared_ptr<Pool>, std::optional<InstanceSnapshot>> find_instance(
        const std::string& id) const;
    // Stops one instance; false when none has that id.
    bool stop_instance(const std::string& id, const std::string& reason);
    // Stops every instance of a function; nullopt when the function has no pool.
    std::optional<unsigned> stop_function(const std::string& name, const std::string& reason);

    // Stops every instance of every function and waits until all are gone; no sandbox is made
    // ahead any more.
    void shutdown();

  private:
    // Sandboxes made ahead (Backend::prepare_ahead) follow the registry between reloads: after a
    // change, the functions present then are handed over on the starts queue. One run at a time;
    // a change during a run queues one more.
    struct Ahead {
        std::mutex run;
        bool stopped = false;  // run held
        std::atomic<bool> queued{false};
    };
    void registry_changed();
    void prepare_ahead(const std::vector<std::shared_ptr<const FunctionSpec>>& specs);
    void stop_preparing_ahead();

    std::vector<std::shared_ptr<Pool>> pools() const;
    std::shared_ptr<Pool> pool_for(const std::string& name,
                                   const std::shared_ptr<const FunctionSpec>& spec);

    Registry& registry_;
    PoolServices services_;
    mutable std::shared_mutex mu_;
    std::unordered_map<std::string, std::shared_ptr<Pool>> pools_;
    std::shared_ptr<Ahead> ahead_ = std::make_shared<Ahead>();
};

}  // namespace unifaas
