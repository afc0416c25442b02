// ManagerObject: /org/unifaas, interface org.unifaas.Manager1 (dbus/org.unifaas.Manager1.xml):
// lists functions and instances, stops them, cleans up taps, reloads the registry. Lives on the
// bus thread only; its calls never hold a pool lock across I/O (the pool calls they make take
// the lock briefly and post sandbox work to the work queues).
#pragma once

#include <sdbus-c++/sdbus-c++.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "dbus/org.unifaas.Manager1_adaptor.h"
#include "fleet/drain_switch.h"
#include "pool/function_table.h"
#include "registry/registry.h"

namespace unifaas {

class Network;

// Error names of the interface.
namespace bus_error {
inline constexpr const char* kNoSuchInstance = "org.unifaas.Error.NoSuchInstance";
inline constexpr const char* kNoSuchFunction = "org.unifaas.Error.NoSuchFunction";
inline constexpr const char* kNotAvailable = "org.unifaas.Error.NotAvailable";
inline constexpr const char* kFailed = "org.unifaas.Error.Failed";
}  // namespace bus_error

// What the daemon shows as Manager1's constant properties.
struct BusInfo {
    std::string version;
    std::string listen_address;  // ADDR:PORT
    std::string subnet;          // the microVM subnet; "" without a tap network
};

class ManagerObject final : public sdbus::AdaptorInterfaces<org::unifaas::Manager1_adaptor> {
  public:
    static constexpr const char* kPath = "/org/unifaas";

    struct Context {
        BusInfo info;
        FunctionTable& functions;
        Registry& registry;
        Network* network;                          // null: CleanupTaps is NotAvailable
        std::function<unsigned()> reload;          // empty: functions.load_all()
        std::function<void()> catch_up;            // applies pool events not yet applied
        std::function<std::uint32_t()> instances;  // objects published now (InstanceCount)
        DrainSwitch* drain = nullptr;              // null: Drain/Undrain are NotAvailable
    };

    ManagerObject(sdbus::IConnection& connection, Context context);
    ~ManagerObject();
    ManagerObject(const ManagerObject&) = delete;
    ManagerObject& operator=(const ManagerObject&) = delete;

    // InstanceCount changed.
    void instance_count_changed();
    // Draining changed.
    void draining_changed();

  private:
    using FunctionEntry =
        sdbus::Struct<std::string, std::string, std::string, std::uint32_t, bool, std::uint64_t,
                      std::uint32_t, std::uint32_t, std::uint32_t, std::string>;
    using InstanceEntry =
        sdbus::Struct<std::string, std::string, std::string, std::string, std::string,
                      std::uint64_t, std::uint64_t, sdbus::ObjectPath>;

    std::vector<FunctionEntry> ListFunctions() override;
    std::vector<InstanceEntry> ListInstances() override;
    sdbus::ObjectPath GetInstance(const std::string& id) override;
    void StopInstance(const std::string& id) override;
    std::uint32_t StopFunction(const std::string& name) override;
    std::uint32_t CleanupTaps() override;
    void Reload() override;
    bool Drain() override;
    bool Undrain() override;

    std::string Version() override { return context_.info.version; }
    std::string ListenAddress() override { return context_.info.listen_address; }
    std::string Subnet() override { return context_.info.subnet; }
    std::uint32_t InstanceCount() override { return context_.instances(); }
    bool Draining() override { return context_.drain && context_.drain->draining(); }

    std::vector<FunctionEntry> list_functions();
    std::vector<InstanceEntry> list_instances();
    // Who sent the call being handled, for the log.
    std::string caller() const;

    Context context_;
};

}  // namespace unifaas
