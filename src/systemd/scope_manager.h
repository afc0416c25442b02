// ScopeManager: puts each sandbox process (qemu, firecracker) in a transient systemd scope of its
// own, "unifaas-<function>-<instance id>.scope" in unifaas.slice, with CPU, memory and task
// accounting and a memory limit. Talks to systemd over the system bus (DBUS_SYSTEM_BUS_ADDRESS
// redirects it) through one connection served by one thread, so a start waiting for its job
// never blocks other calls.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>

#include "systemd/unit_accounting.h"

namespace unifaas {

// Escapes text for use in a unit name as `systemd-escape` does: '/' becomes '-'; '-', '\\', a
// leading '.' and every byte outside [A-Za-z0-9:_.] become "\xNN" (lowercase hex).
std::string escape_unit_name(std::string_view text);

// "unifaas-<escaped function>-<instance id>.scope". The escaped function name is cut (never
// inside an escape) so that the name stays within systemd's 255 characters.
std::string scope_unit_name(std::string_view function, std::string_view instance_id);

inline constexpr const char* kInstanceSlice = "unifaas.slice";

// A VM's scope holds the guest's memory and the hypervisor's own: its code, device emulation,
// I/O buffers and page tables. MemoryMax = guest * (100 + 10) % + 64 MiB (+ extra_mib, e.g. the
// translation cache when QEMU runs under TCG). The limit is there to stop a runaway hypervisor,
// not to squeeze the guest: the guest kernel already lives within its own memory.
inline constexpr std::uint64_t kScopeMemoryOverheadMiB = 64;
inline constexpr std::uint64_t kScopeMemoryOverheadPercent = 10;
std::uint64_t scope_memory_max(std::uint64_t guest_memory_mib, std::uint64_t extra_mib = 0);

// A failed call to systemd; dbus_error is the D-Bus error name when systemd (or the bus) answered
// with one ("org.freedesktop.systemd1.NoSuchUnit"), "" otherwise.
class ScopeError : public std::runtime_error {
  public:
    ScopeError(const std::string& what, std::string dbus_error = {})
        : std::runtime_error(what), dbus_error_(std::move(dbus_error)) {}
    const std::string& dbus_error() const { return dbus_error_; }

  private:
    std::string dbus_error_;
};

namespace detail {
class SystemdBus;
}

// One transient scope. Destroying it stops the unit (StopUnit "replace"; a unit already gone is
// fine). Destroy it after the processes in it have been killed: systemd then has nothing left to
// stop and the unit is collected at once. Never throws; may block up to the call timeout.
class Scope {
  public:
    ~Scope();
    Scope(const Scope&) = delete;
    Scope& operator=(const Scope&) = delete;

    const std::string& name() const { return name_; }

  private:
    friend class ScopeManager;
    Scope(std::shared_ptr<detail::SystemdBus> bus, std::string name);

    std::shared_ptr<detail::SystemdBus> bus_;
    std::string name_;
};

class ScopeManager {
  public:
    struct Options {
        // Require /run/systemd/system (systemd is the init system). Tests against a stand-in
        // manager on a private bus turn it off.
        bool require_booted = true;
        // Bound of each call to systemd, and of a scope's start job.
        std::chrono::milliseconds timeout{5000};
    };

    // nullptr, with `reason` set, when systemd cannot be used: it is not the init system, the
    // system bus is unreachable, or org.freedesktop.systemd1 does not answer on it.
    static std::unique_ptr<ScopeManager> connect(std::string& reason);
    static std::unique_ptr<ScopeManager> connect(std::string& reason, const Options& options);
    ~ScopeManager();
    ScopeManager(const ScopeManager&) = delete;
    ScopeManager& operator=(const ScopeManager&) = delete;

    // Starts "unifaas-<function>-<instance_id>.scope" holding `pid` (StartTransientUnit, then
    // waits for the start job's JobRemoved with result "done"). Thread-safe. Throws ScopeError
    // naming the unit.
    std::unique_ptr<Scope> create(const std::string& function, const std::string& instance_id,
                                  pid_t pid, std::uint64_t memory_max_bytes);

    // MemoryCurrent, CPUUsageNSec and TasksCurrent of a scope unit. Throws ScopeError (e.g. with
    // dbus_error() "org.freedesktop.systemd1.NoSuchUnit").
    ScopeAccounting accounting(const std::string& unit);

    // The manager's version ("252.39-1~deb12u2").
    const std::string& version() const { return version_; }

  private:
    ScopeManager(std::shared_ptr<detail::SystemdBus> bus, std::string version,
                 std::chrono::milliseconds timeout);

    std::shared_ptr<detail::SystemdBus> bus_;
    std::string version_;
    std::chrono::milliseconds timeout_;
};

}  // namespace unifaas
