#include "sandbox/oci_backend.h"

#include <poll.h>

#include <chrono>

#include <fstream>
#include <system_error>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "net/network.h"
#include "sandbox/child_process.h"
#include "sandbox/oci_seccomp.h"
#include "sandbox/oci_shim.h"
#include "systemd/console_forwarder.h"
#include "systemd/scope_manager.h"
#include "util/random.h"

namespace unifaas {

namespace fs = std::filesystem;

// Where a cold start's time goes: each phase of OciBackend::start, logged at debug level as one
// line ("runtime 0.1 image 0.0 netns 0.2 ... total 9.8 ms"). The rest of the cold start (the
// runtime's own work, the function's start-up, its callback) is the pool's "ready in" minus total.
class StartTimeline {
  public:
    void mark(const char* phase) {
        auto now = Clock::now();
        text_ += fmt::format("{} {:.1f} ", phase, ms(now - last_));
        last_ = now;
    }
    std::string summary() const {
        return fmt::format("{}total {:.1f} ms", text_, ms(Clock::now() - begin_));
    }

  private:
    using Clock = std::chrono::steady_clock;
    static double ms(Clock::duration d) {
        return std::chrono::duration<double, std::milli>(d).count();
    }
    Clock::time_point begin_ = Clock::now();
    Clock::time_point last_ = begin_;
    std::string text_;
};

namespace {

constexpr const char* kDefaultRuntime = "crun";
constexpr int kStopWaitMs = 5000;
constexpr std::uint32_t kPidsLimit = 256;

std::string container_id(const std::string& instance_id) {
    return "unifaas-" + instance_id;
}

bool is_crun(const std::string& exe) {
    return fs::path(exe).filename() == "crun";
}

// Spares are started the way crun start does (the init reads exec.fifo); runc's init writes it.
bool spares_possible(const FunctionSpec& spec) {
    return spec.is_container() && spec.container().engine == ContainerEngine::Oci &&
           is_crun(spec.container().runtime.value_or(kDefaultRuntime));
}

// `<runtime> --root <state> [--cgroup-manager=disabled] <args...>`
std::vector<std::string> runtime_argv(const std::string& exe, const fs::path& state_root,
                                      bool cgroups_disabled, std::vector<std::string> args) {
    std::vector<std::string> argv = {exe, "--root", state_root.string()};
    if (cgroups_disabled) {
        argv.emplace_back("--cgroup-manager=disabled");
    }
    argv.insert(argv.end(), args.begin(), args.end());
    return argv;
}

class OciInstance : public Instance {
  public:
    OciInstance(const InstanceContext& ctx, std::string runtime, std::unique_ptr<NetnsLease> lease,
                std::unique_ptr<WorkDir> workdir, const fs::path& state_root,
                const VmEnvironment& env, OciOutputCap* output_cap, StartTimeline& timeline)
        : lease_(std::move(lease)),
          workdir_(std::move(workdir)),
          runtime_(std::move(runtime)),
          state_root_(state_root),
          id_(container_id(ctx.instance_id)),
          port_(ctx.spec->port),
          memory_mib_(ctx.spec->container().memory_mib),
          cgroups_disabled_(env.scopes != nullptr && is_crun(runtime_)),
          exits_(*env.exits),
          console_(env.consoles, workdir_->path() / "output.log", ctx.spec->name, ctx.instance_id),
          capped_(output_cap, workdir_->path() / "output.log"),
          child_(
              runtime_argv(runtime_, state_root_, cgroups_disabled_,
                           // No session keyring of its own: the container's seccomp filter
                           // denies the keyring calls anyway, and where the runtime itself may
                           // not make one (systemd-nspawn's filter) it would fail to start.
                           {"run", "--no-new-keyring", "--bundle", workdir_->path().string(), id_}),
              workdir_->path() / "output.log", {}, /*held=*/cgroups_disabled_) {
        timeline.mark("fork");
        // Under systemd it is held: in its scope before it execs, so the container it forks is
        // in the scope too. Otherwise it has exec'd already (its own cgroup comes from crun).
        if (cgroups_disabled_) {
            scope_ = start_instance_scope(env.scopes, ctx, child_.pid(),
                                          ctx.spec->container().memory_mib << 20);
            timeline.mark("scope");
        }
        child_.release();
        timeline.mark("exec");
        auto on_exit = ctx.on_exit;
        watch_ = exits_.watch(child_.pidfd(), [this, on_exit] {
            on_exit(fmt::format("container {} ({})", exit_text(), runtime_name()));
        });
    }

    ~OciInstance() override {
        exits_.unwatch(watch_);
        std::error_code ec;
        fs::path log = workdir_->path() / "stop.log";
        if (child_.exit_description().empty()) {
            run(runtime_argv(runtime_, state_root_, cgroups_disabled_, {"kill", id_, "KILL"}), log);
            pollfd p{child_.pidfd(), POLLIN, 0};
            if (::poll(&p, 1, kStopWaitMs) <= 0) {
                spdlog::warn("container {}: still running {} ms after SIGKILL", id_, kStopWaitMs);
            }
        }
        // `run` deletes the container when it ends by itself; after a kill it may not have.
        run(runtime_argv(runtime_, state_root_, cgroups_disabled_, {"delete", "--force", id_}),
            log);
        // Members go in reverse order: the runtime process, scope, output, files, namespace.
    }

    std::string address() const override { return lease_->guest_ip(); }
    std::uint16_t port() const override { return port_; }
    std::string describe() const override {
        return fmt::format("container {} ({} pid {}, veth {})", id_, runtime_name(), child_.pid(),
                           lease_->host_interface());
    }
    std::string unit() const override { return scope_ ? scope_->name() : std::string(); }
    std::string output_tail() const override {
        return OciOutputCap::tail(workdir_->path() / "output.log", 20);
    }

  private:
    static void run(const std::vector<std::string>& argv, const fs::path& log) {
        try {
            run_command(argv, log);
        } catch (const std::exception& e) {
            spdlog::warn("{}", e.what());
        }
    }

    std::string runtime_name() const { return fs::path(runtime_).filename().string(); }

    std::string exit_text() const { return oci_exit_text(child_.pid(), memory_mib_); }

    std::unique_ptr<NetnsLease> lease_;
    std::unique_ptr<WorkDir> workdir_;
    std::string runtime_;
    fs::path state_root_;
    std::string id_;
    std::uint16_t port_;
    std::uint64_t memory_mib_;
    bool cgroups_disabled_;
    ExitWatcher& exits_;
    ForwardedConsole console_;
    CappedOutput capped_;
    std::unique_ptr<Scope> scope_;
    ChildProcess child_;
    ExitWatcher::Id watch_ = 0;
};

void write_file(const fs::path& file, const std::string& text) {
    std::ofstream out(file, std::ios::binary | std::ios::trunc);
    out << text;
    if (!out.flush()) {
        throw std::system_error(errno, std::generic_category(), "cannot write " + file.string());
    }
}

bool has_variable(const std::vector<std::string>& env, const std::string& name) {
    for (const auto& entry : env) {
        if (entry.starts_with(name + "=")) {
            return true;
        }
    }
    return false;
}

}  // namespace

void fill_process(const OciProcessInput& in, OciLaunch& launch) {
    const FunctionSpec& spec = *in.spec;
    const ContainerSpec& container = spec.container();
    std::vector<std::string> args = container.entrypoint;
    if (args.empty() && in.image != nullptr) {
        args = in.image->entrypoint;
    }
    if (args.empty()) {
        throw SandboxError(500, fmt::format("function \"{}\": image {} has no entrypoint (set "
                                            "[container] entrypoint = [\"/path\"])",
                                            spec.name, container.image_path.string()));
    }
    // As with Docker: the callback URL replaces the image's Cmd, as argv[1] of the entrypoint.
    args.push_back(in.callback_url);
    launch.args = std::move(args);

    std::vector<std::string> env;
    if (in.image != nullptr) {
        env = in.image->env;
        launch.cwd = in.image->cwd.empty() ? "/" : in.image->cwd;
        launch.uid = in.image->uid;
        launch.gid = in.image->gid;
    }
    if (!has_variable(env, "PATH")) {
        env.insert(env.begin(),
                   "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    }
    for (const auto& [name, value] : spec.env) {
        env.push_back(name + "=" + value);
    }
    env.push_back("UNIFAAS_CALLBACK=" + in.callback_url);
    env.push_back("PORT=" + std::to_string(spec.port));
    env.push_back("UNIFAAS_FUNCTION=" + spec.name);
    env.push_back("UNIFAAS_INSTANCE=" + in.instance_id);
    launch.env = std::move(env);
}

struct OciBackend::Bundle {
    std::string runtime;
    std::unique_ptr<NetnsLease> lease;
    std::unique_ptr<WorkDir> workdir;
};

OciBackend::OciBackend(VmEnvironment env, std::uint64_t spare_memory_mib)
    : env_(std::move(env)),
      state_root_(env_.runtime_dir / "oci"),
      images_(env_.runtime_dir / "images"),
      // Without systemd nothing takes the containers' lines to a journal: the files are capped.
      output_cap_(env_.consoles == nullptr ? std::make_unique<OciOutputCap>() : nullptr),
      shim_exe_(oci_shim_executable()) {
    // A spare's callback token comes from the daemon's registry before any instance exists.
    if (spare_memory_mib > 0 && env_.callbacks != nullptr && env_.network != nullptr &&
        shim_exe_.empty()) {
        spdlog::warn(
            "OCI spares are off: {} is neither next to the daemon's executable nor in "
            "../libexec/unifaas (every cold start runs crun run)",
            kOciShimName);
    } else if (spare_memory_mib > 0 && env_.callbacks != nullptr && env_.network != nullptr) {
        spares_ = std::make_unique<OciSpares>(
            spare_memory_mib,
            [this](std::shared_ptr<const FunctionSpec> spec) {
                return make_spare(std::move(spec));
            },
            *env_.exits);
    }
}

OciBackend::~OciBackend() {
    spares_.reset();  // before the members its containers use
}

OciBackend::Bundle OciBackend::make_bundle(const InstanceContext& ctx, StartTimeline& timeline) {
    const FunctionSpec& spec = *ctx.spec;
    const ContainerSpec& container = spec.container();
    std::string runtime_name = container.runtime.value_or(kDefaultRuntime);
    std::string runtime = find_executable(runtime_name);
    if (runtime.empty()) {
        throw SandboxError(500, fmt::format("function \"{}\": OCI runtime \"{}\" not found "
                                            "(install crun or runc, or set [container] runtime)",
                                            spec.name, runtime_name));
    }
    if (env_.network == nullptr) {
        throw SandboxError(501,
                           "OCI containers are not available: the daemon cannot manage "
                           "network namespaces");
    }
    timeline.mark("runtime");
    OciImage image = images_.prepare(spec);
    timeline.mark("image");

    std::unique_ptr<NetnsLease> lease;
    try {
        lease = env_.network->lease_netns();
    } catch (const NetworkExhausted& e) {
        throw SandboxError(503, e.what());
    } catch (const std::system_error& e) {
        throw SandboxError(
            502, fmt::format("function \"{}\": container network: {}", spec.name, e.what()));
    }
    timeline.mark("netns");
    apply_network_policy(env_, *lease, spec);
    timeline.mark("policy");
    OciLaunch launch;
    fill_process(
        {&spec, image.process ? &*image.process : nullptr, ctx.instance_id,
         fmt::format("http://{}:{}{}", lease->host_ip(), env_.callback_port, ctx.callback_path)},
        launch);
    launch.rootfs = image.rootfs;
    launch.hostname = "unifaas-" + ctx.instance_id;
    launch.netns = lease->netns_path();
    launch.memory_bytes = container.memory_mib << 20;
    launch.pids_limit = kPidsLimit;
    try {
        if (is_crun(runtime)) {
            launch.seccomp_bpf_base64 = oci_seccomp_bpf_base64();
        } else {
            launch.seccomp_profile = oci_seccomp_profile();
        }
    } catch (const std::runtime_error& e) {
        throw SandboxError(500, fmt::format("function \"{}\": {}", spec.name, e.what()));
    }
    bool in_scope = env_.scopes != nullptr && is_crun(runtime);
    if (!in_scope) {
        launch.cgroups_path = "/unifaas/" + ctx.instance_id;
    }
    auto workdir = std::make_unique<WorkDir>(env_.runtime_dir, ctx.instance_id);
    try {
        fs::create_directories(state_root_);
        write_file(workdir->path() / "config.json", oci_config(launch).dump(2));
    } catch (const std::system_error& e) {
        throw SandboxError(502, fmt::format("function \"{}\": {}", spec.name, e.what()));
    }
    timeline.mark("config");
    return Bundle{std::move(runtime), std::move(lease), std::move(workdir)};
}

std::unique_ptr<Instance> OciBackend::start(const InstanceContext& ctx) {
    StartTimeline timeline;
    const FunctionSpec& spec = *ctx.spec;
    if (auto* prepared = dynamic_cast<OciPrepared*>(ctx.prepared.get());
        prepared != nullptr && prepared->spare) {
        std::unique_ptr<OciSpare> spare = std::move(prepared->spare);
        if (spare->start(ctx.on_exit)) {
            timeline.mark("fifo");
            spdlog::debug("function {} instance {}: spare started, {}", spec.name, ctx.instance_id,
                          timeline.summary());
            return spare;
        }
        spare.reset();  // its init is gone: removed; the usual way under the same identity
    }
    Bundle bundle = make_bundle(ctx, timeline);
    try {
        auto instance = std::make_unique<OciInstance>(ctx, bundle.runtime, std::move(bundle.lease),
                                                      std::move(bundle.workdir), state_root_, env_,
                                                      output_cap_.get(), timeline);
        spdlog::debug("function {} instance {}: {} run, {}", spec.name, ctx.instance_id,
                      bundle.runtime, timeline.summary());
        return instance;
    } catch (const std::system_error& e) {
        throw SandboxError(502, fmt::format("function \"{}\": {}", spec.name, e.what()));
    }
}

std::unique_ptr<OciSpare> OciBackend::make_spare(std::shared_ptr<const FunctionSpec> spec) {
    StartTimeline timeline;
    InstanceContext ctx;
    ctx.instance_id = random_hex(6);
    ctx.spec = spec;
    OciSpareParts parts;
    parts.token = env_.callbacks->issue();
    // Until it is handed over, nobody expects this token: a forged early callback is refused.
    struct ForgetOnFailure {
        CallbackRegistry* callbacks;
        std::string* token;
        ~ForgetOnFailure() {
            if (token != nullptr) {
                callbacks->forget(*token);
            }
        }
    } forget{env_.callbacks, &parts.token};
    ctx.callback_path = "/ready/" + parts.token;
    Bundle bundle = make_bundle(ctx, timeline);
    parts.instance_id = ctx.instance_id;
    parts.spec = spec;
    parts.runtime = bundle.runtime;
    parts.state_root = state_root_;
    parts.cgroups_disabled = env_.scopes != nullptr && is_crun(bundle.runtime);
    parts.lease = std::move(bundle.lease);
    parts.workdir = std::move(bundle.workdir);
    fs::path dir = parts.workdir->path();
    std::string id = container_id(ctx.instance_id);
    // `crun create` as the child of the spare's shim, which adopts the init (oci_shim.h). Under
    // systemd, create is held until it is in the scope, so the container's init is too; the shim
    // stays in the daemon's cgroup, outside the container's memory limit.
    auto shim = std::make_unique<OciShim>(
        shim_exe_,
        runtime_argv(parts.runtime, state_root_, parts.cgroups_disabled,
                     {"create", "--no-new-keyring", "--bundle", dir.string(), "--pid-file",
                      (dir / "init.pid").string(), id}),
        dir / "init.pid", dir / "output.log");
    pid_t create = shim->create_pid();
    if (create > 0 && parts.cgroups_disabled) {
        parts.scope =
            start_instance_scope(env_.scopes, ctx, create, spec->container().memory_mib << 20);
    }
    pid_t init = create > 0 ? shim->run_create() : 0;
    if (init <= 0) {
        int status = shim->wait();  // as create ended (or the shim, when it could not run it)
        // What it made (state, cgroup) goes with a forced delete.
        run_command(runtime_argv(parts.runtime, state_root_, parts.cgroups_disabled,
                                 {"delete", "--force", id}),
                    dir / "stop.log");
        throw SandboxError(
            502, fmt::format("function \"{}\": {} create {}: {}", spec->name, parts.runtime,
                             oci_exit_reason(status, spec->container().memory_mib),
                             OciOutputCap::tail(dir / "output.log", 5)));
    }
    timeline.mark("create");
    forget.token = nullptr;
    auto spare = std::make_unique<OciSpare>(std::move(parts), std::move(shim), init, env_,
                                            output_cap_.get());
    spdlog::debug("function {}: spare {} created, {}", spec->name, ctx.instance_id,
                  timeline.summary());
    return spare;
}

void OciBackend::prepare_ahead(const std::vector<std::shared_ptr<const FunctionSpec>>& specs) {
    if (!spares_) {
        return;
    }
    std::vector<std::shared_ptr<const FunctionSpec>> oci;
    for (const auto& spec : specs) {
        if (spares_possible(*spec)) {
            oci.push_back(spec);
        }
    }
    spares_->keep_for(oci);
}

std::shared_ptr<Prepared> OciBackend::take_prepared(
    const std::shared_ptr<const FunctionSpec>& spec) {
    if (!spares_ || !spares_possible(*spec)) {
        return nullptr;
    }
    auto spare = spares_->take(spec);
    return spare ? std::make_shared<OciPrepared>(std::move(spare)) : nullptr;
}

unsigned OciBackend::remove_leftovers() {
    unsigned removed = images_.remove_leftovers();
    std::error_code ec;
    if (!fs::is_directory(state_root_, ec)) {
        return removed;
    }
    fs::path log = env_.runtime_dir / "oci-cleanup.log";
    for (const auto& entry : fs::directory_iterator(state_root_, ec)) {
        std::string id = entry.path().filename().string();
        if (!id.starts_with("unifaas-")) {
            continue;
        }
        for (const std::string& name : {std::string("crun"), std::string("runc")}) {
            std::string exe = find_executable(name);
            if (exe.empty()) {
                continue;
            }
            try {
                run_command({exe, "--root", state_root_.string(), "kill", id, "KILL"}, log);
                run_command({exe, "--root", state_root_.string(), "delete", "--force", id}, log);
            } catch (const std::exception& e) {
                spdlog::warn("cannot delete leftover container {}: {}", id, e.what());
            }
        }
        if (!fs::exists(entry.path(), ec)) {
            ++removed;
        } else {
            spdlog::warn("leftover container {} is still in {}", id, state_root_.string());
        }
    }
    fs::remove(log, ec);
    return removed;
}

}  // namespace unifaas
