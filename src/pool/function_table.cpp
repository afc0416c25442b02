#include "pool/function_table.h"

#include <spdlog/spdlog.h>

#include <mutex>

namespace unifaas {

FunctionTable::FunctionTable(Registry& registry, PoolServices services)
    : registry_(registry), services_(services) {
    registry_.on_change([this] { registry_changed(); });
}

FunctionTable::~FunctionTable() {
    registry_.on_change(nullptr);
    stop_preparing_ahead();
}

ResolvedFunction FunctionTable::resolve(std::string_view name, Registry::Freshness freshness) {
    ResolvedFunction out;
    auto entry = registry_.lookup(name, freshness);
    if (!entry) {
        return out;
    }
    if (!entry->spec) {
        out.kind = ResolvedFunction::Kind::Broken;
        out.error = std::move(entry->error);
        return out;
    }
    out.kind = ResolvedFunction::Kind::Ok;
    out.spec = std::move(entry->spec);
    out.pool = pool_for(std::string(name), out.spec);
    return out;
}

std::shared_ptr<Pool> FunctionTable::pool_for(const std::string& name,
                                              const std::shared_ptr<const FunctionSpec>& spec) {
    {
        std::shared_lock lk(mu_);
        auto it = pools_.find(name);
        if (it != pools_.end()) {
            return it->second;
        }
    }
    std::unique_lock lk(mu_);
    auto [it, inserted] = pools_.try_emplace(name);
    if (inserted) {
        it->second = std::make_shared<Pool>(name, services_);
        it->second->update(spec);
    }
    return it->second;
}

std::pair<unsigned, unsigned> FunctionTable::load_all() {
    unsigned loaded = 0;
    unsigned broken = 0;
    std::vector<std::shared_ptr<const FunctionSpec>> specs;
    for (const auto& name : registry_.scan()) {
        auto fn = resolve(name);
        if (fn.kind == ResolvedFunction::Kind::Ok) {
            ++loaded;
            fn.pool->update(fn.spec);
            specs.push_back(fn.spec);
        } else if (fn.kind == ResolvedFunction::Kind::Broken) {
            ++broken;
            spdlog::error("function {}: {}", name, fn.error);
        }
    }
    prepare_ahead(specs);
    return {loaded, broken};
}

// Sandboxes made ahead follow the registry: made for these, removed for functions gone.
void FunctionTable::prepare_ahead(const std::vector<std::shared_ptr<const FunctionSpec>>& specs) {
    std::lock_guard lk(ahead_->run);
    if (!ahead_->stopped) {
        services_.backends.prepare_ahead(specs);
    }
}

// Registry lock held: only queues the run.
void FunctionTable::registry_changed() {
    if (ahead_->queued.exchange(true)) {
        return;
    }
    // `ahead` outlives the table; `this` is used only while not stopped, under the lock the
    // destructor takes to stop it.
    services_.starts.post([this, ahead = ahead_] {
        ahead->queued = false;  // changes from here on queue another run
        std::lock_guard lk(ahead->run);
        if (ahead->stopped) {
            return;
        }
        std::vector<std::shared_ptr<const FunctionSpec>> specs;
        for (const auto& name : registry_.scan()) {
            if (auto entry = registry_.lookup(name); entry && entry->spec) {
                specs.push_back(std::move(entry->spec));
            }
        }
        services_.backends.prepare_ahead(specs);
    });
}

void FunctionTable::stop_preparing_ahead() {
    std::lock_guard lk(ahead_->run);
    ahead_->stopped = true;
}

std::vector<PoolSnapshot> FunctionTable::snapshot() const {
    std::vector<PoolSnapshot> out;
    for (auto& pool : pools()) {
        out.push_back(pool->snapshot());
    }
    return out;
}

std::vector<std::pair<PoolSnapshot, const FunctionMetrics*>> FunctionTable::metrics_view() const {
    std::vector<std::pair<PoolSnapshot, const FunctionMetrics*>> out;
    for (auto& pool : pools()) {
        out.emplace_back(pool->snapshot(), &pool->metrics());  // pools live until shutdown
    }
    return out;
}

std::shared_ptr<Pool> FunctionTable::find_pool(std::string_view name) const {
    std::shared_lock lk(mu_);
    auto it = pools_.find(std::string(name));
    return it == pools_.end() ? nullptr : it->second;
}

std::vector<std::shared_ptr<Pool>> FunctionTable::pools() const {
    std::shared_lock lk(mu_);
    std::vector<std::shared_ptr<Pool>> out;
    out.reserve(pools_.size());
    for (auto& [name, pool] : pools_) {
        out.push_back(pool);
    }
    return out;
}

std::pair<std::shared_ptr<Pool>, std::optional<InstanceSnapshot>> FunctionTable::find_instance(
    const std::string& id) const {
    for (auto& pool : pools()) {
        if (auto found = pool->find_instance(id)) {
            return {pool, found};
        }
    }
    return {nullptr, std::nullopt};
}

bool FunctionTable::stop_instance(const std::string& id, const std::string& reason) {
    auto [pool, found] = find_instance(id);
    return pool && pool->stop_instance(id, reason);
}

std::optional<unsigned> FunctionTable::stop_function(const std::string& name,
                                                     const std::string& reason) {
    auto pool = find_pool(name);
    if (!pool) {
        return std::nullopt;
    }
    return pool->stop_all(reason);
}

void FunctionTable::shutdown() {
    stop_preparing_ahead();
    for (auto& pool : pools()) {
        pool->shutdown();
    }
}

}  // namespace unifaas
