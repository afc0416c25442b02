// FunctionTable: function name -> its current definition and its Pool. Consults the registry on
// every lookup (one stat) so edits apply to new instances and new functions appear without a
// restart; pools are created on first use and live until shutdown.
#pragma once

#include <memory>
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
    FunctionTable(Registry& registry, PoolServices services);

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

    // Stops every instance of every function and waits until all are gone.
    void shutdown();

  private:
    std::vector<std::shared_ptr<Pool>> pools() const;
    std::shared_ptr<Pool> pool_for(const std::string& name,
                                   const std::shared_ptr<const FunctionSpec>& spec);

    Registry& registry_;
    PoolServices services_;
    mutable std::shared_mutex mu_;
    std::unordered_map<std::string, std::shared_ptr<Pool>> pools_;
};

}  // namespace unifaas
