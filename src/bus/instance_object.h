// InstanceObject: /org/unifaas/instance/<id>, interface org.unifaas.Instance1 (dbus/
// org.unifaas.Instance1.xml). Shows one live instance as the bus thread last heard of it; lives on
// the bus thread only.
#pragma once

#include <sdbus-c++/sdbus-c++.h>

#include <string>
#include <string_view>

#include "bus/unit_accounting.h"
#include "dbus/org.unifaas.Instance1_adaptor.h"
#include "pool/pool.h"

namespace unifaas {

class InstanceObject final : public sdbus::AdaptorInterfaces<org::unifaas::Instance1_adaptor> {
  public:
    // Registers the object at path_for(snapshot.id); `accounting` may be empty.
    InstanceObject(sdbus::IConnection& connection, InstanceSnapshot snapshot,
                   AccountingSource accounting);
    ~InstanceObject();
    InstanceObject(const InstanceObject&) = delete;
    InstanceObject& operator=(const InstanceObject&) = delete;

    // Takes a newer snapshot of the instance and emits PropertiesChanged for what changed.
    void update(const InstanceSnapshot& snapshot);
    const InstanceSnapshot& snapshot() const { return snapshot_; }

    // Instance ids are 12 lowercase hex digits.
    static bool valid_id(std::string_view id);
    // "/org/unifaas/instance/<id>" (id must be valid).
    static sdbus::ObjectPath path_for(const std::string& id);
    // Microseconds since the epoch; 0 for the epoch itself (not started).
    static std::uint64_t epoch_usec(std::chrono::system_clock::time_point t);

  private:
    std::string Function() override { return snapshot_.function; }
    std::string State() override { return to_string(snapshot_.state); }
    std::string Address() override { return snapshot_.address; }
    std::string Unit() override { return snapshot_.unit; }
    std::string StartKind() override { return snapshot_.start_kind; }
    std::uint64_t StartedAt() override { return epoch_usec(snapshot_.started_at); }
    std::uint64_t Requests() override { return snapshot_.requests; }
    std::uint64_t MemoryCurrent() override { return accounting().memory_current; }
    std::uint64_t CPUUsageNSec() override { return accounting().cpu_usage_nsec; }

    // The unit's accounting now; unknown values when there is no unit or no source.
    UnitAccounting accounting() const;

    InstanceSnapshot snapshot_;
    AccountingSource accounting_;
};

}  // namespace unifaas
