// The sandbox seam: one interface, one backend per file pair (docker, qemu, firecracker).
// A backend knows nothing of HTTP routing or pools; the pool knows nothing of Docker or QEMU.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "config/function_spec.h"

namespace unifaas {

// A start that failed. http_status says how the gateway should answer the requests that were
// waiting for it: 500 (the function's configuration is unusable: image or runtime unknown),
// 502 (the sandbox failed or died), 503 (the engine/hypervisor is unreachable), 501 (backend not
// available).
class SandboxError : public std::runtime_error {
  public:
    SandboxError(int http_status, const std::string& what)
        : std::runtime_error(what), http_status_(http_status) {}
    int http_status() const { return http_status_; }

  private:
    int http_status_;
};

// A sandbox a backend made ahead of need (the OCI backend's pre-created containers), already
// waiting under its own identity: the pool names the instance it creates next after it and passes
// it to start() in InstanceContext::prepared. Dropped unused, it removes its sandbox.
class Prepared {
  public:
    virtual ~Prepared() = default;
    std::string instance_id;  // as InstanceContext::instance_id
    std::string token;        // the callback token it calls back with (issued by the daemon's
                              // readiness registry)
};

struct InstanceContext {
    std::string instance_id;                   // [0-9a-f]{12}, unique among live instances
    std::shared_ptr<const FunctionSpec> spec;  // the spec this instance runs with, fixed for life
    std::string callback_path;                 // "/ready/<token>"; the backend prefixes
                                               // http://<host address>:<callback port>
    // Called (from any thread, at most once) when the sandbox ends by itself, with a short reason.
    // Never called after the Instance has been destroyed.
    std::function<void(const std::string& reason)> on_exit;
    // Set: the sandbox the backend prepared under this instance_id (its take_prepared()); start()
    // uses it when it is still alive.
    std::shared_ptr<Prepared> prepared;
};

// A started sandbox. Destroying it stops the sandbox and gives back everything it holds
// (container, process, tap, scope, working files). Destruction may block; it never throws.
class Instance {
  public:
    virtual ~Instance() = default;
    // Address the function is reached at and from which it calls back (container or guest IP).
    virtual std::string address() const = 0;
    virtual std::uint16_t port() const = 0;
    // Backend-specific identity for logs ("container 3f2a…", "qemu pid 1234").
    virtual std::string describe() const = 0;
    // The last lines of the sandbox's output (console/logs), for error messages. May do I/O.
    virtual std::string output_tail() const = 0;
    // The systemd unit (transient scope) or cgroup holding the sandbox; "" when none.
    virtual std::string unit() const { return {}; }
    // How the sandbox came up: "boot", "restore" (a clone of a saved snapshot template) or
    // "spare" (a sandbox prepared ahead, only started now).
    virtual const char* start_kind() const { return "boot"; }
};

class Backend {
  public:
    virtual ~Backend() = default;
    // Starts a sandbox; returns once it runs (not once the function is ready). Throws SandboxError.
    virtual std::unique_ptr<Instance> start(const InstanceContext& ctx) = 0;
    // Removes sandboxes an earlier run of the daemon left behind (after a crash). Returns count.
    virtual unsigned remove_leftovers() { return 0; }
    // The functions now defined (startup, reload): a backend that prepares sandboxes ahead makes
    // them for its functions in the background and removes those of functions not listed.
    virtual void prepare_ahead(const std::vector<std::shared_ptr<const FunctionSpec>>& /*specs*/) {}
    // A sandbox prepared for exactly this definition, now the caller's; nullptr when none. Never
    // blocks on sandbox work (the pool calls it with its lock held).
    virtual std::shared_ptr<Prepared> take_prepared(
        const std::shared_ptr<const FunctionSpec>& /*spec*/) {
        return nullptr;
    }
};

// Picks the backend for a spec; nullptr when this build/daemon has none for it.
class Backends {
  public:
    virtual ~Backends() = default;
    virtual Backend* for_spec(const FunctionSpec& spec) = 0;
    // Backend::prepare_ahead on every backend.
    virtual void prepare_ahead(const std::vector<std::shared_ptr<const FunctionSpec>>& /*specs*/) {}
};

}  // namespace unifaas
