#include "bus/manager_object.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <map>
#include <set>

#include "bus/instance_object.h"
#include "net/network.h"

namespace unifaas {

namespace {

constexpr const char* kStopReason = "stopped over D-Bus";

// Runs a method body; any failure other than an sdbus::Error (which carries its own name) becomes
// org.unifaas.Error.Failed. sd-bus calls the handlers from C: no other exception may leave them.
template <typename F>
auto guarded(const char* method, F&& body) -> decltype(body()) {
    try {
        return body();
    } catch (const sdbus::Error&) {
        throw;
    } catch (const std::exception& e) {
        spdlog::warn("D-Bus {}: {}", method, e.what());
        throw sdbus::Error(bus_error::kFailed, std::string(method) + ": " + e.what());
    }
}

[[noreturn]] void no_such_instance(const std::string& id) {
    throw sdbus::Error(bus_error::kNoSuchInstance, "no live instance has the id \"" + id + "\"");
}

struct StateCounts {
    std::uint32_t starting = 0, booting = 0, ready = 0;

    void add(InstanceState s) {
        switch (s) {
            case InstanceState::Starting:
                ++starting;
                break;
            case InstanceState::Booting:
                ++booting;
                break;
            case InstanceState::Ready:
                ++ready;
                break;
            case InstanceState::Stopping:
                break;
        }
    }
};

}  // namespace

ManagerObject::ManagerObject(sdbus::IConnection& connection, Context context)
    : AdaptorInterfaces(connection, kPath), context_(std::move(context)) {
    registerAdaptor();
}

ManagerObject::~ManagerObject() {
    unregisterAdaptor();
}

void ManagerObject::instance_count_changed() {
    getObject().emitPropertiesChangedSignal(INTERFACE_NAME, {"InstanceCount"});
}

void ManagerObject::draining_changed() {
    getObject().emitPropertiesChangedSignal(INTERFACE_NAME, {"Draining"});
}

bool ManagerObject::Drain() {
    return guarded("Drain", [&] {
        if (context_.drain == nullptr) {
            throw sdbus::Error(bus_error::kNotAvailable, "this daemon has no drain switch");
        }
        bool changed = context_.drain->drain();
        spdlog::info("drain requested over D-Bus by {}{}", caller(),
                     changed ? ": /healthz answers 503" : " (already draining)");
        return changed;
    });
}

bool ManagerObject::Undrain() {
    return guarded("Undrain", [&] {
        if (context_.drain == nullptr) {
            throw sdbus::Error(bus_error::kNotAvailable, "this daemon has no drain switch");
        }
        if (context_.drain->shutting_down()) {
            throw sdbus::Error(bus_error::kNotAvailable, "the daemon is shutting down");
        }
        bool changed = context_.drain->undrain();
        spdlog::info("undrain requested over D-Bus by {}{}", caller(),
                     changed ? ": serving again" : " (was not draining)");
        return changed;
    });
}

std::vector<ManagerObject::FunctionEntry> ManagerObject::ListFunctions() {
    return guarded("ListFunctions", [&] { return list_functions(); });
}

std::vector<ManagerObject::InstanceEntry> ManagerObject::ListInstances() {
    return guarded("ListInstances", [&] { return list_instances(); });
}

sdbus::ObjectPath ManagerObject::GetInstance(const std::string& id) {
    return guarded("GetInstance", [&] {
        if (!InstanceObject::valid_id(id) || !context_.functions.find_instance(id).second) {
            no_such_instance(id);
        }
        context_.catch_up();  // its object exists once the event of its start is applied
        return InstanceObject::path_for(id);
    });
}

void ManagerObject::StopInstance(const std::string& id) {
    guarded("StopInstance", [&] {
        if (!InstanceObject::valid_id(id) || !context_.functions.stop_instance(id, kStopReason)) {
            no_such_instance(id);
        }
        spdlog::info("instance {} stopped over D-Bus by {}", id, caller());
    });
}

std::uint32_t ManagerObject::StopFunction(const std::string& name) {
    return guarded("StopFunction", [&]() -> std::uint32_t {
        if (auto stopped = context_.functions.stop_function(name, kStopReason)) {
            spdlog::info("function {}: {} instances stopped over D-Bus by {}", name, *stopped,
                         caller());
            return *stopped;
        }
        if (context_.registry.lookup(name)) {
            return 0;  // in the registry, never used: no instances
        }
        throw sdbus::Error(bus_error::kNoSuchFunction,
                           "no function \"" + name + "\" in " + context_.registry.dir().string());
    });
}

std::uint32_t ManagerObject::CleanupTaps() {
    return guarded("CleanupTaps", [&]() -> std::uint32_t {
        if (context_.network == nullptr) {
            throw sdbus::Error(bus_error::kNotAvailable,
                               "the daemon runs without a tap network (microVMs are disabled)");
        }
        unsigned removed = context_.network->cleanup_taps();
        spdlog::info("{} idle taps removed over D-Bus by {}", removed, caller());
        return removed;
    });
}

void ManagerObject::Reload() {
    guarded("Reload", [&] {
        spdlog::info("registry reload requested over D-Bus by {}", caller());
        if (context_.reload) {
            context_.reload();
        } else {
            context_.functions.load_all();
        }
    });
}

std::vector<ManagerObject::FunctionEntry> ManagerObject::list_functions() {
    std::map<std::string, StateCounts> counts;
    for (const auto& pool : context_.functions.snapshot()) {
        if (pool.instances.empty()) {
            continue;
        }
        auto& c = counts[pool.function];
        for (const auto& inst : pool.instances) {
            c.add(inst.state);
        }
    }
    auto scanned = context_.registry.scan();
    std::set<std::string> names(scanned.begin(), scanned.end());
    for (const auto& [name, c] : counts) {
        names.insert(name);  // removed from the registry, instances still running
    }

    std::vector<FunctionEntry> out;
    out.reserve(names.size());
    for (const auto& name : names) {
        std::string backend, error, network;
        std::uint32_t concurrent = 0;
        bool single_use = false;
        std::uint64_t keepalive_usec = 0;
        if (auto entry = context_.registry.lookup(name); !entry) {
            error = "not in the registry any more";
        } else if (!entry->spec) {
            error = entry->error;
        } else {
            const FunctionSpec& spec = *entry->spec;
            backend = spec.backend_name();
            concurrent = spec.concurrent_requests;
            single_use = spec.single_use;
            network = spec.network.describe();
            keepalive_usec = static_cast<std::uint64_t>(
                std::chrono::duration_cast<std::chrono::microseconds>(spec.keepalive).count());
        }
        StateCounts c = counts.count(name) ? counts[name] : StateCounts{};
        out.push_back(sdbus::make_struct(name, backend, error, concurrent, single_use,
                                         keepalive_usec, c.starting, c.booting, c.ready, network));
    }
    return out;
}

std::vector<ManagerObject::InstanceEntry> ManagerObject::list_instances() {
    context_.catch_up();  // so every path listed has its object
    std::vector<InstanceSnapshot> all;
    for (auto& pool : context_.functions.snapshot()) {
        std::move(pool.instances.begin(), pool.instances.end(), std::back_inserter(all));
    }
    std::sort(all.begin(), all.end(), [](const auto& a, const auto& b) {
        return std::tie(a.function, a.started_at, a.id) < std::tie(b.function, b.started_at, b.id);
    });
    std::vector<InstanceEntry> out;
    out.reserve(all.size());
    for (const auto& i : all) {
        out.push_back(sdbus::make_struct(
            i.id, i.function, std::string(to_string(i.state)), i.address, i.unit,
            InstanceObject::epoch_usec(i.started_at), i.requests, InstanceObject::path_for(i.id)));
    }
    return out;
}

std::string ManagerObject::caller() const {
    const sdbus::Message* call = getObject().getCurrentlyProcessedMessage();
    return call ? call->getSender() : std::string("?");
}

}  // namespace unifaas
