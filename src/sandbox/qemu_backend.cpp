#include "sandbox/qemu_backend.h"

#include <poll.h>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "net/network.h"
#include "sandbox/child_process.h"
#include "sandbox/qmp_client.h"
#include "sandbox/restore_channel.h"
#include "systemd/console_forwarder.h"
#include "systemd/scope_manager.h"
#include "util/random.h"

namespace unifaas {

namespace {

// Under TCG a scope's memory limit also covers QEMU's translation cache, which grows as guest code
// is translated (about 100 MiB after a Linux boot here; QEMU reserves up to 1 GiB for it).
constexpr std::uint64_t kTcgCacheMiB = 256;
// Pausing and saving a template (QMP), and its qemu exiting afterwards.
constexpr auto kSaveDeadline = std::chrono::seconds(60);

const char* on_off(bool v) {
    return v ? "on" : "off";
}

std::string machine_option(const VmSpec& vm, bool memory_backend) {
    std::string machine =
        vm.hypervisor != HypervisorType::Microvm
            ? std::string("q35")
            : fmt::format("microvm,pic={},pit={},rtc={},acpi={},auto-kernel-cmdline={}",
                          on_off(vm.pic), on_off(vm.pit), on_off(vm.rtc), on_off(vm.acpi),
                          on_off(vm.auto_kernel_cmdline));
    return memory_backend ? machine + ",memory-backend=mem" : machine;
}

// A path inside a shell command of `-incoming exec:` / `migrate exec:`.
std::string shell_quoted(const std::string& text) {
    std::string out = "'";
    for (char c : text) {
        out += c == '\'' ? std::string("'\\''") : std::string(1, c);
    }
    return out + "'";
}

// Waits for the process behind `pidfd` to exit, up to `timeout`; whether it did.
bool wait_exit(int pidfd, std::chrono::milliseconds timeout) {
    pollfd p{pidfd, POLLIN, 0};
    return ::poll(&p, 1, static_cast<int>(timeout.count())) == 1;
}

void add_disk(std::vector<std::string>& argv, const VmSpec& vm, const std::string& bus) {
    if (vm.image.empty()) {
        return;
    }
    if (vm.disk_type == DiskType::NineP) {
        // The directory is shared read-only: instances of a function never see each other's
        // writes.
        argv.insert(argv.end(),
                    {"-fsdev",
                     fmt::format("local,id=rootfs,path={},security_model=none,readonly=on",
                                 vm.image.string()),
                     "-device", fmt::format("virtio-9p-{},fsdev=rootfs,mount_tag=rootfs", bus)});
        return;
    }
    // snapshot=on: each instance writes to its own throw-away overlay (in TMPDIR, the instance's
    // working directory); the image itself is never modified.
    argv.insert(argv.end(),
                {"-drive",
                 fmt::format("id=rootfs,file={},format=raw,if=none,snapshot=on", vm.image.string()),
                 "-device", fmt::format("virtio-blk-{},drive=rootfs", bus)});
}

class QemuInstance : public Instance {
  public:
    QemuInstance(const InstanceContext& ctx, std::unique_ptr<NetworkLease> lease,
                 std::unique_ptr<WorkDir> workdir, const std::vector<std::string>& argv,
                 const VmEnvironment& env, std::uint64_t memory_max,
                 std::shared_ptr<VmTemplate> restored_from = nullptr)
        : restored_from_(std::move(restored_from)),
          lease_(std::move(lease)),
          workdir_(std::move(workdir)),
          port_(ctx.spec->port),
          exits_(*env.exits),
          console_(env.consoles, workdir_->path() / "console.log", ctx.spec->name, ctx.instance_id),
          child_(argv, workdir_->path() / "qemu.log", {"TMPDIR=" + workdir_->path().string()}) {
        // Before the watch: when systemd refuses the scope, child_ is killed on the way out.
        scope_ = start_instance_scope(env.scopes, ctx, child_.pid(), memory_max);
        if (!restored_from_) {
            report_exit(ctx.on_exit);
        }
    }

    // From now on the sandbox's end is reported (a clone only once it is restored: a failed
    // restore is destroyed and replaced by a boot without the pool hearing of it).
    void report_exit(const std::function<void(const std::string&)>& on_exit) {
        watch_ = exits_.watch(child_.pidfd(), [this, on_exit] {
            std::string how = child_.exit_description();
            on_exit("qemu " + (how.empty() ? std::string("exited") : how));
        });
    }

    ~QemuInstance() override {
        if (watch_ != 0) {
            exits_.unwatch(watch_);  // no exit report for the kill below
        }
        // Members go in reverse order: the qemu process, then its files, then its tap.
    }

    std::string address() const override { return lease_->guest_ip(); }
    std::uint16_t port() const override { return port_; }
    std::string describe() const override {
        return fmt::format("qemu pid {} (tap {})", child_.pid(), lease_->tap());
    }
    std::string unit() const override { return scope_ ? scope_->name() : std::string(); }
    const char* start_kind() const override { return restored_from_ ? "restore" : "boot"; }
    std::string output_tail() const override {
        std::string console = tail_lines(workdir_->path() / "console.log", 20);
        std::string qemu = tail_lines(workdir_->path() / "qemu.log", 5);
        if (!qemu.empty()) {
            console += (console.empty() ? "" : "\n") + qemu;
        }
        return console;
    }

  private:
    std::shared_ptr<VmTemplate> restored_from_;  // its files stay while the clone maps them
    std::unique_ptr<NetworkLease> lease_;
    std::unique_ptr<WorkDir> workdir_;
    std::uint16_t port_;
    ExitWatcher& exits_;
    ForwardedConsole console_;      // its last lines are passed on once qemu is gone
    std::unique_ptr<Scope> scope_;  // stopped once qemu is gone
    ChildProcess child_;
    ExitWatcher::Id watch_ = 0;
};

}  // namespace

std::vector<std::string> qemu_command_line(const QemuLaunch& l) {
    const VmSpec& vm = *l.vm;
    const std::string bus = vm.hypervisor == HypervisorType::Microvm ? "device" : "pci";
    std::vector<std::string> argv = {
        l.binary,
        "-name",
        l.name,
        "-accel",
        to_string(l.accel),
        "-cpu",
        l.accel == Accel::Kvm ? "host" : "max",
        "-M",
        machine_option(vm, l.memory_file.has_value()),
        "-m",
        std::to_string(vm.memory_mib),
        "-smp",
        std::to_string(vm.cpus),
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
        "-serial",
        "file:" + l.console_log.string(),
        "-kernel",
        vm.kernel.string(),
    };
    if (vm.initrd) {
        argv.insert(argv.end(), {"-initrd", vm.initrd->string()});
    }
    argv.insert(argv.end(), {"-append", l.kernel_cmdline});
    argv.insert(argv.end(),
                {"-netdev", fmt::format("tap,id=net0,ifname={},script=no,downscript=no", l.tap),
                 "-device", fmt::format("virtio-net-{},netdev=net0,mac={}", bus, l.mac)});
    add_disk(argv, vm, bus);
    if (l.memory_file) {
        argv.insert(
            argv.end(),
            {"-object", fmt::format("memory-backend-file,id=mem,mem-path={},size={}M,share={}",
                                    l.memory_file->path.string(), vm.memory_mib,
                                    on_off(l.memory_file->shared))});
    }
    if (!l.qmp_socket.empty()) {
        argv.insert(argv.end(),
                    {"-qmp", fmt::format("unix:{},server=on,wait=off", l.qmp_socket.string())});
    }
    if (l.incoming) {
        argv.insert(argv.end(), {"-incoming", "defer"});
    }
    return argv;
}

QemuBackend::QemuBackend(VmEnvironment env, std::string binary, Accel accel)
    : env_(std::move(env)),
      configured_binary_(std::move(binary)),
      binary_(find_executable(configured_binary_)),
      accel_(accel),
      tsc_khz_(host_tsc_khz()) {}

std::string QemuBackend::kernel_cmdline(const VmSpec& vm, const GuestAddressing& a) const {
    std::string cmdline = substitute_cmdline(vm.cmdline, a);
    // Under TCG, Linux's early TSC calibration occasionally hangs the boot; tell it the rate.
    if (accel_ == Accel::Tcg && tsc_khz_ > 0 &&
        cmdline.find("tsc_early_khz=") == std::string::npos && is_linux_kernel(vm.kernel)) {
        cmdline += fmt::format(" tsc_early_khz={}", tsc_khz_);
    }
    return cmdline;
}

std::unique_ptr<NetworkLease> QemuBackend::lease_network(const FunctionSpec& spec) {
    if (!env_.network) {
        throw SandboxError(501, "microVMs are not available: the daemon cannot manage taps");
    }
    std::unique_ptr<NetworkLease> lease;
    try {
        lease = env_.network->lease();
    } catch (const NetworkExhausted& e) {
        throw SandboxError(503, e.what());
    }
    apply_network_policy(env_, *lease, spec);
    return lease;
}

std::unique_ptr<Instance> QemuBackend::start(const InstanceContext& ctx) {
    if (binary_.empty()) {
        throw SandboxError(501, fmt::format("QEMU is not installed: {} not found (install "
                                            "qemu-system-x86 or set qemu-binary)",
                                            configured_binary_));
    }
    if (auto clone = builder_.restore_or_build(
            ctx, binary_, accel_, [this](RestoreAttempt& attempt) { restore(attempt); },
            [this](TemplateBuild& build) { return save_template(build); })) {
        return clone;
    }
    return boot(ctx);
}

std::unique_ptr<Instance> QemuBackend::boot(const InstanceContext& ctx) {
    const FunctionSpec& spec = *ctx.spec;
    const VmSpec& vm = spec.vm();
    std::unique_ptr<NetworkLease> lease = lease_network(spec);
    auto workdir = std::make_unique<WorkDir>(env_.runtime_dir, ctx.instance_id);
    GuestAddressing addressing{
        lease->guest_ip(), lease->host_ip(), lease->netmask(),
        fmt::format("http://{}:{}{}", lease->host_ip(), env_.callback_port, ctx.callback_path)};

    QemuLaunch launch;
    launch.binary = binary_;
    launch.accel = accel_;
    launch.name = spec.name + "-" + ctx.instance_id;
    launch.vm = &vm;
    launch.kernel_cmdline = kernel_cmdline(vm, addressing);
    launch.tap = lease->tap();
    launch.mac = lease->mac();
    launch.console_log = workdir->path() / "console.log";
    auto argv = qemu_command_line(launch);
    spdlog::debug("function {} instance {}: {}", spec.name, ctx.instance_id, fmt::join(argv, " "));
    try {
        return std::make_unique<QemuInstance>(
            ctx, std::move(lease), std::move(workdir), argv, env_,
            scope_memory_max(vm.memory_mib, accel_ == Accel::Tcg ? kTcgCacheMiB : 0));
    } catch (const std::system_error& e) {
        throw SandboxError(502, e.what());
    }
}

void QemuBackend::restore(RestoreAttempt& attempt) {
    const InstanceContext& ctx = attempt.ctx();
    const FunctionSpec& spec = attempt.spec();
    const VmSpec& vm = spec.vm();
    const VmTemplate& tpl = *attempt.tpl();
    std::unique_ptr<NetworkLease> lease = lease_network(spec);
    lease->use_guest_mac(tpl.mac());  // virtio-net comes back with the template's MAC
    auto workdir = std::make_unique<WorkDir>(env_.runtime_dir, ctx.instance_id);
    RestoreMessage message{
        lease->guest_ip(), lease->host_ip(), lease->netmask(),
        fmt::format("http://{}:{}{}", lease->host_ip(), env_.callback_port, ctx.callback_path),
        random_hex(8)};
    std::string tap = lease->tap();

    QemuLaunch launch;
    launch.binary = binary_;
    launch.accel = accel_;
    launch.name = spec.name + "-" + ctx.instance_id;
    launch.vm = &vm;
    launch.kernel_cmdline = tpl.kernel_cmdline();
    launch.tap = tap;
    launch.mac = tpl.mac();
    launch.console_log = workdir->path() / "console.log";
    launch.memory_file = QemuLaunch::MemoryFile{tpl.memory_file(), false};
    launch.qmp_socket = workdir->path() / "qmp.sock";
    launch.incoming = true;
    auto argv = qemu_command_line(launch);
    spdlog::debug("function {} instance {}: {}", spec.name, ctx.instance_id, fmt::join(argv, " "));
    QemuInstance& clone = attempt.hold(std::make_unique<QemuInstance>(
        ctx, std::move(lease), std::move(workdir), argv, env_,
        scope_memory_max(vm.memory_mib, accel_ == Accel::Tcg ? kTcgCacheMiB : 0), attempt.tpl()));

    QmpClient qmp(launch.qmp_socket, attempt.deadline());
    qmp.enable_ignore_shared();
    qmp.restore("exec:cat " + shell_quoted(tpl.state_file().string()));
    attempt.acknowledge(tap, message);
    clone.report_exit(ctx.on_exit);
}

SavedTemplate QemuBackend::save_template(TemplateBuild& build) {
    const FunctionSpec& spec = build.spec();
    const VmSpec& vm = spec.vm();
    std::unique_ptr<NetworkLease> lease = lease_network(spec);
    WorkDir workdir(env_.runtime_dir, build.ctx().instance_id);
    GuestAddressing addressing{lease->guest_ip(), lease->host_ip(), lease->netmask(),
                               fmt::format("http://{}:{}{}", lease->host_ip(), env_.callback_port,
                                           build.ctx().callback_path)};
    QemuLaunch launch;
    launch.binary = binary_;
    launch.accel = accel_;
    launch.name = spec.name + "-template";
    launch.vm = &vm;
    launch.kernel_cmdline = kernel_cmdline(vm, addressing);
    launch.tap = lease->tap();
    launch.mac = lease->mac();
    launch.console_log = workdir.path() / "console.log";
    launch.memory_file = QemuLaunch::MemoryFile{build.partial() / "memory", true};
    launch.qmp_socket = workdir.path() / "qmp.sock";
    std::unique_ptr<Scope> scope;  // declared before qemu: stopped once qemu is gone
    ChildProcess qemu(qemu_command_line(launch), workdir.path() / "qemu.log",
                      {"TMPDIR=" + workdir.path().string()});
    // Like every instance, in a transient scope of unifaas.slice with the same memory limit.
    scope = start_instance_scope(
        env_.scopes, build.ctx(), qemu.pid(),
        scope_memory_max(vm.memory_mib, accel_ == Accel::Tcg ? kTcgCacheMiB : 0));
    build.wait_ready(lease->guest_ip(), qemu.pidfd(), [&] {
        std::string exit = qemu.exit_description();
        return (exit.empty() ? "" : "; qemu " + exit) + "\n" +
               tail_lines(workdir.path() / "console.log", 10);
    });

    auto deadline = std::chrono::steady_clock::now() + kSaveDeadline;
    QmpClient qmp(launch.qmp_socket, deadline);
    qmp.enable_ignore_shared();
    qmp.save("exec:cat > " + shell_quoted((build.partial() / "state").string()));
    try {
        qmp.execute("quit");
    } catch (const QmpError&) {
        // qemu may close the connection before answering
    }
    // The RAM file is complete once qemu is gone (its mapping was shared).
    if (!wait_exit(qemu.pidfd(), std::chrono::duration_cast<std::chrono::milliseconds>(
                                     deadline - std::chrono::steady_clock::now()))) {
        throw std::runtime_error("qemu did not exit after saving");
    }
    if (int status = qemu.wait(); status != 0) {
        // A RAM file that could not grow (disk full) kills qemu with SIGBUS.
        throw std::runtime_error(fmt::format("qemu ended with status {} while saving: {}", status,
                                             tail_lines(workdir.path() / "qemu.log", 5)));
    }
    return {launch.mac, launch.kernel_cmdline};
}

}  // namespace unifaas
