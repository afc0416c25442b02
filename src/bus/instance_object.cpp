#include "bus/instance_object.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <vector>

namespace unifaas {

namespace {

constexpr std::string_view kInstancePathPrefix = "/org/unifaas/instance/";

}  // namespace

InstanceObject::InstanceObject(sdbus::IConnection& connection, InstanceSnapshot snapshot,
                               AccountingSource accounting)
    : AdaptorInterfaces(connection, path_for(snapshot.id)),
      snapshot_(std::move(snapshot)),
      accounting_(std::move(accounting)) {
    registerAdaptor();
}

InstanceObject::~InstanceObject() {
    unregisterAdaptor();
}

void InstanceObject::update(const InstanceSnapshot& s) {
    std::vector<std::string> changed;
    if (s.state != snapshot_.state) {
        changed.emplace_back("State");
    }
    if (s.address != snapshot_.address) {
        changed.emplace_back("Address");
    }
    if (s.unit != snapshot_.unit) {
        changed.emplace_back("Unit");
    }
    if (s.start_kind != snapshot_.start_kind) {
        changed.emplace_back("StartKind");
    }
    if (s.started_at != snapshot_.started_at) {
        changed.emplace_back("StartedAt");
    }
    if (s.requests != snapshot_.requests) {
        changed.emplace_back("Requests");
    }
    snapshot_ = s;
    if (!changed.empty()) {
        getObject().emitPropertiesChangedSignal(INTERFACE_NAME, changed);
    }
}

bool InstanceObject::valid_id(std::string_view id) {
    return id.size() == 12 && std::all_of(id.begin(), id.end(), [](char c) {
               return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
           });
}

sdbus::ObjectPath InstanceObject::path_for(const std::string& id) {
    return sdbus::ObjectPath(std::string(kInstancePathPrefix) + id);
}

std::uint64_t InstanceObject::epoch_usec(std::chrono::system_clock::time_point t) {
    auto usec = std::chrono::duration_cast<std::chrono::microseconds>(t.time_since_epoch());
    return usec.count() > 0 ? static_cast<std::uint64_t>(usec.count()) : 0;
}

UnitAccounting InstanceObject::accounting() const {
    if (!accounting_ || snapshot_.unit.empty()) {
        return {};
    }
    try {
        return accounting_(snapshot_.unit);
    } catch (const std::exception& e) {
        spdlog::debug("instance {}: accounting of {}: {}", snapshot_.id, snapshot_.unit, e.what());
        return {};
    }
}

}  // namespace unifaas
