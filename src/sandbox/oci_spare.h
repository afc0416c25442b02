// Spares: OCI containers created ahead (`crun create`: namespaces, mounts, cgroup, seccomp all
// set up, the entrypoint not yet exec'd), one per function, so a cold start is only the start.
// OciSpare is one such container; started, it is the instance. Starting is what `crun start`
// does, without exec'ing crun: write one byte to <state>/<id>/exec.fifo, where the container's
// init waits before it execs the entrypoint. Its init is the child of its shim (oci_shim.h),
// which ends as the init ends: the daemon watches the shim. A spare is made under its own instance
// id and callback token (baked into its config.json); the pool adopts that identity for the
// instance it serves (Backend::take_prepared). OciSpares keeps the spares: one thread makes them
// (off the request path) and removes what is no longer wanted (function gone or redefined, init
// died), within a memory cap (the functions' `memory`, summed).
#pragma once

#include <sys/types.h>

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "config/function_spec.h"
#include "net/network.h"
#include "sandbox/child_process.h"
#include "sandbox/oci_output.h"
#include "sandbox/oci_shim.h"
#include "sandbox/sandbox.h"
#include "sandbox/vm_common.h"
#include "systemd/console_forwarder.h"
#include "systemd/scope_manager.h"

namespace unifaas {

// What a created container holds; all given back (in reverse order) when the spare is destroyed.
struct OciSpareParts {
    std::string instance_id;
    std::string token;
    std::shared_ptr<const FunctionSpec> spec;
    std::string runtime;  // the runtime executable (crun)
    std::filesystem::path state_root;
    bool cgroups_disabled = false;
    std::unique_ptr<NetnsLease> lease;
    std::unique_ptr<WorkDir> workdir;
    std::unique_ptr<Scope> scope;
};

class OciSpare : public Instance {
  public:
    // Takes the container `unifaas-<instance_id>` just created, whose init is `init_pid`, the
    // child of `shim`.
    OciSpare(OciSpareParts parts, std::unique_ptr<OciShim> shim, pid_t init_pid,
             const VmEnvironment& env, OciOutputCap* output_cap);
    ~OciSpare() override;  // kills and deletes the container, then gives back the rest

    const std::string& instance_id() const { return parts_.instance_id; }
    const std::string& token() const { return parts_.token; }
    const std::shared_ptr<const FunctionSpec>& spec() const { return parts_.spec; }
    // Readable when the init (and so its shim) has ended.
    int pidfd() const { return shim_->pidfd(); }
    // The init still waits to be started.
    bool alive() const;
    // Lets the init exec the entrypoint; on_exit as InstanceContext::on_exit. False when the
    // init is gone (nothing started).
    bool start(std::function<void(const std::string&)> on_exit);

    std::string address() const override { return parts_.lease->guest_ip(); }
    std::uint16_t port() const override { return parts_.spec->port; }
    std::string describe() const override;
    std::string output_tail() const override;
    std::string unit() const override { return parts_.scope ? parts_.scope->name() : ""; }
    const char* start_kind() const override { return "spare"; }

  private:
    std::string container() const { return "unifaas-" + parts_.instance_id; }
    void runtime(const std::vector<std::string>& args) const;

    OciSpareParts parts_;
    ExitWatcher& exits_;
    CallbackRegistry* callbacks_;
    ForwardedConsole console_;
    CappedOutput capped_;
    std::unique_ptr<OciShim> shim_;
    pid_t pid_;
    ExitWatcher::Id watch_ = 0;
};

// A spare handed to the pool (Backend::take_prepared); the backend takes `spare` back in start().
class OciPrepared : public Prepared {
  public:
    explicit OciPrepared(std::unique_ptr<OciSpare> s) : spare(std::move(s)) {
        instance_id = spare->instance_id();
        token = spare->token();
    }
    std::unique_ptr<OciSpare> spare;
};

class OciSpares {
  public:
    // Makes a spare for a spec; throws (SandboxError, system_error) when it cannot.
    using Maker = std::function<std::unique_ptr<OciSpare>(std::shared_ptr<const FunctionSpec>)>;

    OciSpares(std::uint64_t memory_cap_mib, Maker make, ExitWatcher& exits);
    ~OciSpares();  // stops making and removes every spare
    OciSpares(const OciSpares&) = delete;
    OciSpares& operator=(const OciSpares&) = delete;

    // These are the OCI functions now: a spare for each (as the cap allows), none for others.
    void keep_for(const std::vector<std::shared_ptr<const FunctionSpec>>& specs);
    // The spare made for exactly this spec, if one is ready and its init alive; the next one is
    // made in the background. A spec not seen before gets spares from now on. Does not block
    // on container work.
    std::unique_ptr<OciSpare> take(const std::shared_ptr<const FunctionSpec>& spec);

    // Spares ready now (for tests and logs).
    std::size_t ready() const;

  private:
    struct Slot {
        std::shared_ptr<const FunctionSpec> spec;
        std::unique_ptr<OciSpare> spare;
        ExitWatcher::Id watch = 0;
        std::uint64_t generation = 0;  // bumped whenever the spare is taken or dropped
        bool making = false;
        bool dead = false;    // its init exited before use
        bool failed = false;  // the last attempt failed: no retry until redefined or taken
    };
    struct Garbage {
        std::unique_ptr<OciSpare> spare;
        ExitWatcher::Id watch = 0;
    };

    void run();
    void drop_locked(Slot& slot);
    Slot* next_to_make_locked();
    std::uint64_t committed_mib_locked() const;

    const std::uint64_t cap_mib_;
    Maker make_;
    ExitWatcher& exits_;
    mutable std::mutex mu_;
    std::condition_variable cv_;
    std::map<std::string, Slot> slots_;  // by function name
    std::deque<Garbage> garbage_;        // removed on the thread
    bool stop_ = false;
    std::thread thread_;
};

}  // namespace unifaas
