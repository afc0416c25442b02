#include "sandbox/firecracker_backend.h"

#include "util/unique_fd.h"

#include <fcntl.h>
#include <linux/fs.h>
#include <poll.h>
#include <signal.h>
#include <sys/inotify.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <system_error>
#include <vector>

#include <spdlog/spdlog.h>

#include "net/network.h"
#include "sandbox/child_process.h"
#include "sandbox/restore_channel.h"
#include "systemd/console_forwarder.h"
#include "systemd/scope_manager.h"
#include "util/random.h"

namespace unifaas {

namespace fs = std::filesystem;

namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

constexpr const char* kApiSocket = "api.sock";
constexpr const char* kLogFile = "firecracker.log";
constexpr unsigned kTailLines = 20;
constexpr milliseconds kSocketTimeout{5000};
// Each call that pauses and saves a template (a Full snapshot writes all guest memory).
constexpr milliseconds kSaveTimeout{60000};
constexpr const char* kNotInstalled =
    "firecracker is not installed (set FIRECRACKER_EXE or firecracker in the daemon config)";

[[noreturn]] void throw_errno(const std::string& what) {
    throw std::system_error(errno, std::generic_category(), what);
}

// --- sparse copy ---

// Removes the file on scope exit unless kept.
class RemoveUnlessKept {
  public:
    explicit RemoveUnlessKept(fs::path path) : path_(std::move(path)) {}
    ~RemoveUnlessKept() {
        if (!kept_) {
            std::error_code ec;
            fs::remove(path_, ec);
        }
    }
    RemoveUnlessKept(const RemoveUnlessKept&) = delete;
    RemoveUnlessKept& operator=(const RemoveUnlessKept&) = delete;
    void keep() { kept_ = true; }

  private:
    fs::path path_;
    bool kept_ = false;
};

bool all_zero(const char* data, std::size_t size) {
    return std::all_of(data, data + size, [](char c) { return c == 0; });
}

// read/write fallback; blocks of zeros are skipped (they stay holes).
void copy_range_by_reading(int in, int out, off_t offset, off_t length, const fs::path& from) {
    constexpr std::size_t kChunk = 1 << 20;
    std::vector<char> buffer(kChunk);
    while (length > 0) {
        std::size_t want = static_cast<std::size_t>(std::min<off_t>(length, kChunk));
        ssize_t got = ::pread(in, buffer.data(), want, offset);
        if (got < 0 && errno == EINTR) {
            continue;
        }
        if (got <= 0) {
            if (got == 0) {
                errno = EIO;  // the file shrank under us
            }
            throw_errno("read " + from.string());
        }
        auto size = static_cast<std::size_t>(got);
        if (!all_zero(buffer.data(), size)) {
            for (std::size_t done = 0; done < size;) {
                ssize_t put = ::pwrite(out, buffer.data() + done, size - done,
                                       offset + static_cast<off_t>(done));
                if (put < 0 && errno == EINTR) {
                    continue;
                }
                if (put < 0) {
                    throw_errno("write copy of " + from.string());
                }
                done += static_cast<std::size_t>(put);
            }
        }
        offset += got;
        length -= got;
    }
}

// copy_file_range where the kernel can (same filesystem, or across filesystems where allowed).
void copy_range(int in, int out, off_t offset, off_t length, const fs::path& from) {
    loff_t in_off = offset;
    loff_t out_off = offset;
    while (length > 0) {
        ssize_t n =
            ::copy_file_range(in, &in_off, out, &out_off, static_cast<std::size_t>(length), 0);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0 && (errno == EXDEV || errno == ENOSYS || errno == EOPNOTSUPP || errno == EINVAL ||
                      errno == EBADF)) {
            copy_range_by_reading(in, out, in_off, length, from);
            return;
        }
        if (n < 0) {
            throw_errno("copy " + from.string());
        }
        if (n == 0) {
            errno = EIO;  // the file shrank under us
            throw_errno("copy " + from.string());
        }
        length -= n;
    }
}

void copy_data_extents(int in, int out, off_t size, const fs::path& from) {
    off_t pos = 0;
    while (pos < size) {
        off_t data = ::lseek(in, pos, SEEK_DATA);
        if (data < 0 && errno == ENXIO) {
            break;  // only a hole is left
        }
        if (data < 0) {
            throw_errno("seek data in " + from.string());
        }
        off_t hole = ::lseek(in, data, SEEK_HOLE);
        if (hole < 0) {
            throw_errno("seek hole in " + from.string());
        }
        hole = std::min(hole, size);
        copy_range(in, out, data, hole - data, from);
        pos = hole;
    }
}

// --- waiting for the API socket ---

// Whether a unix socket accepts a connection now.
bool accepts_connections(const fs::path& socket) {
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    const std::string path = socket.string();
    if (path.size() >= sizeof(addr.sun_path)) {
        errno = ENAMETOOLONG;
        throw_errno("API socket " + path);
    }
    std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
    UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!fd) {
        throw_errno("socket");
    }
    return ::connect(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) == 0;
}

void drain(int inotify_fd) {
    alignas(inotify_event) char buffer[4096];
    while (::read(inotify_fd, buffer, sizeof(buffer)) > 0) {
    }
}

// "exited with status N" or "killed by signal N (SIGNAME)", without reaping.
std::string describe_exit(pid_t pid) {
    siginfo_t info{};
    if (::waitid(P_PID, static_cast<id_t>(pid), &info, WEXITED | WNOHANG | WNOWAIT) != 0 ||
        info.si_pid == 0) {
        return "exited";
    }
    if (info.si_code == CLD_EXITED) {
        return "exited with status " + std::to_string(info.si_status);
    }
    const char* name = ::sigabbrev_np(info.si_status);
    return "killed by signal " + std::to_string(info.si_status) +
           (name ? std::string(" (SIG") + name + ")" : std::string());
}

std::string tail_or_note(const fs::path& log) {
    std::string tail = tail_lines(log, kTailLines);
    return tail.empty() ? "(no output)" : tail;
}

// --- start() steps ---

const VmSpec& firecracker_vm(const FunctionSpec& spec) {
    if (!spec.is_vm() || spec.vm().hypervisor != HypervisorType::Firecracker) {
        throw SandboxError(500, "function \"" + spec.name + "\" is not a firecracker function");
    }
    return spec.vm();
}

void check_readable(const fs::path& file, const char* what) {
    if (::access(file.c_str(), R_OK) != 0) {
        throw SandboxError(500,
                           std::string(what) + " " + file.string() + ": " + std::strerror(errno));
    }
}

std::unique_ptr<NetworkLease> lease_tap(Network& network) {
    try {
        return network.lease();
    } catch (const NetworkExhausted& e) {
        throw SandboxError(503, e.what());
    }
}

struct Rootfs {
    fs::path path;
    bool read_only;
};

// The private copy's name in a working directory (and in a template's directory).
fs::path rootfs_copy_name(const VmSpec& vm) {
    return "rootfs" + vm.image.extension().string();
}

// With copy-rootfs, a private sparse copy of `from` (the image, or a template's saved disk).
Rootfs prepare_rootfs(const VmSpec& vm, const fs::path& workdir, const fs::path& from) {
    if (!vm.copy_rootfs) {
        return {vm.image, true};
    }
    fs::path copy = workdir / rootfs_copy_name(vm);
    try {
        copy_sparse(from, copy);
    } catch (const std::system_error& e) {
        throw SandboxError(502, "cannot copy the root filesystem: " + std::string(e.what()));
    }
    return {copy, false};
}

// Started in `cwd`: the relative paths it is given (a private rootfs copy) resolve there.
std::unique_ptr<ChildProcess> spawn(const std::vector<std::string>& argv, const fs::path& log,
                                    const fs::path& cwd) {
    try {
        return std::make_unique<ChildProcess>(argv, log, std::vector<std::string>{}, false, cwd);
    } catch (const std::system_error& e) {
        throw SandboxError(502, std::string("firecracker: ") + e.what());
    }
}

void await_api_socket(const ChildProcess& child, const fs::path& socket, const fs::path& log) {
    SocketWait result;
    try {
        result = wait_for_api_socket(socket, child.pidfd(), kSocketTimeout);
    } catch (const std::system_error& e) {
        throw SandboxError(502, std::string("firecracker: ") + e.what());
    }
    switch (result) {
        case SocketWait::Ready:
            return;
        case SocketWait::ProcessExited:
            throw SandboxError(502, "firecracker " + describe_exit(child.pid()) +
                                        " before its API socket appeared: " + tail_or_note(log));
        case SocketWait::TimedOut:
            throw SandboxError(502, "firecracker did not open its API socket within " +
                                        std::to_string(kSocketTimeout.count()) +
                                        " ms: " + tail_or_note(log));
    }
}

void boot_vm(const fs::path& socket, const BootPlan& plan) {
    try {
        FirecrackerApi api(socket);
        boot_via_api(api, plan);
    } catch (const FirecrackerApiError& e) {
        throw SandboxError(502, e.what());
    }
}

class FirecrackerInstance : public Instance {
  public:
    FirecrackerInstance(ExitWatcher* exits, std::unique_ptr<NetworkLease> lease,
                        std::unique_ptr<WorkDir> dir, std::unique_ptr<ForwardedConsole> console,
                        std::unique_ptr<Scope> scope, std::unique_ptr<ChildProcess> child,
                        std::uint16_t port, std::shared_ptr<VmTemplate> restored_from = nullptr)
        : restored_from_(std::move(restored_from)),
          exits_(exits),
          lease_(std::move(lease)),
          dir_(std::move(dir)),
          console_(std::move(console)),
          scope_(std::move(scope)),
          child_(std::move(child)),
          port_(port) {}

    // Unwatch first (no exit report for our own kill), then the members go in reverse order:
    // the process is killed and reaped, the working directory removed, the tap given back.
    ~FirecrackerInstance() override {
        if (exits_ != nullptr && watch_ != 0) {
            exits_->unwatch(watch_);
        }
    }

    void watch(std::function<void(const std::string&)> on_exit) {
        if (exits_ == nullptr || !on_exit) {
            return;
        }
        pid_t pid = child_->pid();
        watch_ = exits_->watch(child_->pidfd(), [pid, on_exit = std::move(on_exit)] {
            on_exit("firecracker " + describe_exit(pid));
        });
    }

    std::string address() const override { return lease_->guest_ip(); }
    std::uint16_t port() const override { return port_; }
    std::string describe() const override {
        return "firecracker pid " + std::to_string(child_->pid()) + " (tap " + lease_->tap() + ")";
    }
    std::string output_tail() const override {
        return tail_lines(dir_->path() / kLogFile, kTailLines);
    }
    std::string unit() const override { return scope_ ? scope_->name() : std::string(); }
    const char* start_kind() const override { return restored_from_ ? "restore" : "boot"; }

  private:
    std::shared_ptr<VmTemplate> restored_from_;  // its files stay while the clone maps them
    ExitWatcher* exits_;
    std::unique_ptr<NetworkLease> lease_;
    std::unique_ptr<WorkDir> dir_;
    std::unique_ptr<ForwardedConsole> console_;  // last lines passed on once the process is gone
    std::unique_ptr<Scope> scope_;               // stopped once the process is gone
    std::unique_ptr<ChildProcess> child_;
    std::uint16_t port_;
    ExitWatcher::Id watch_ = 0;
};

double ms_since(Clock::time_point start) {
    return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

}  // namespace

std::string find_firecracker(const std::string& configured) {
    if (!configured.empty()) {
        return find_executable(configured);
    }
    const char* env = std::getenv("FIRECRACKER_EXE");
    if (env != nullptr && *env != '\0') {
        return find_executable(env);
    }
    return find_executable("firecracker");
}

CopyMethod copy_sparse(const fs::path& from, const fs::path& to, bool allow_reflink) {
    UniqueFd in(::open(from.c_str(), O_RDONLY | O_CLOEXEC));
    if (!in) {
        throw_errno("open " + from.string());
    }
    struct stat st {};
    if (::fstat(in.get(), &st) != 0) {
        throw_errno("stat " + from.string());
    }
    if (!S_ISREG(st.st_mode)) {
        errno = EINVAL;
        throw_errno(from.string() + " is not a regular file");
    }
    UniqueFd out(::open(to.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600));
    if (!out) {
        throw_errno("create " + to.string());
    }
    RemoveUnlessKept guard(to);
    CopyMethod method = CopyMethod::DataExtents;
    if (allow_reflink && ::ioctl(out.get(), FICLONE, in.get()) == 0) {
        method = CopyMethod::Reflink;
    } else {
        copy_data_extents(in.get(), out.get(), st.st_size, from);
        if (::ftruncate(out.get(), st.st_size) != 0) {
            throw_errno("truncate " + to.string());
        }
    }
    guard.keep();
    return method;
}

BootPlan plan_boot(const VmSpec& vm, const GuestAddressing& addressing, const fs::path& rootfs,
                   bool rootfs_read_only, const std::string& tap, const std::string& mac) {
    BootPlan plan;
    plan.vcpus = vm.cpus;
    plan.memory_mib = vm.memory_mib;
    plan.kernel = vm.kernel.string();
    plan.boot_args = substitute_cmdline(vm.cmdline, addressing);
    if (vm.initrd) {
        plan.initrd = vm.initrd->string();
    }
    plan.rootfs = rootfs.string();
    plan.rootfs_read_only = rootfs_read_only;
    plan.tap = tap;
    plan.mac = mac;
    return plan;
}

std::vector<std::string> firecracker_command_line(const std::string& executable,
                                                  const fs::path& api_socket,
                                                  const std::string& instance_id) {
    // --level: Firecracker's own log (on stdout, next to the console) keeps only warnings.
    return {executable, "--api-sock", api_socket.string(), "--id", instance_id,
            "--level",  "Warning"};
}

SocketWait wait_for_api_socket(const fs::path& socket, int pidfd, milliseconds timeout) {
    const auto deadline = Clock::now() + timeout;
    UniqueFd inotify(::inotify_init1(IN_CLOEXEC | IN_NONBLOCK));
    if (!inotify) {
        throw_errno("inotify_init1");
    }
    if (::inotify_add_watch(inotify.get(), socket.parent_path().c_str(), IN_CREATE | IN_MOVED_TO) <
        0) {
        throw_errno("inotify_add_watch " + socket.parent_path().string());
    }
    // Checked after the watch exists, so a socket created in between is not missed.
    milliseconds refused_backoff{1};
    for (;;) {
        auto remaining = std::chrono::ceil<milliseconds>(deadline - Clock::now());
        milliseconds wait = remaining;
        std::error_code ec;
        if (fs::exists(socket, ec)) {
            if (accepts_connections(socket)) {
                return SocketWait::Ready;
            }
            // Bound but not listening yet: Firecracker listens right after bind().
            wait = std::min(remaining, refused_backoff);
            refused_backoff = std::min(refused_backoff * 2, milliseconds(50));
        }
        if (remaining.count() <= 0) {
            return SocketWait::TimedOut;
        }
        pollfd fds[2] = {{pidfd, POLLIN, 0}, {inotify.get(), POLLIN, 0}};
        int n = ::poll(fds, 2, static_cast<int>(wait.count()));
        if (n < 0 && errno != EINTR) {
            throw_errno("poll");
        }
        if (n > 0 && fds[0].revents != 0) {
            return SocketWait::ProcessExited;
        }
        if (n > 0 && fds[1].revents != 0) {
            drain(inotify.get());
        }
    }
}

FirecrackerBackend::FirecrackerBackend(VmEnvironment env, std::string executable)
    : env_(std::move(env)), executable_(std::move(executable)) {}

std::unique_ptr<Instance> FirecrackerBackend::start(const InstanceContext& ctx) {
    const FunctionSpec& spec = *ctx.spec;
    const VmSpec& vm = firecracker_vm(spec);
    if (executable_.empty()) {
        throw SandboxError(501, kNotInstalled);
    }
    if (env_.network == nullptr) {
        throw SandboxError(501, "microVMs are not available: the daemon has no tap network");
    }
    check_readable(vm.kernel, "kernel");
    check_readable(vm.image, "image");
    if (vm.initrd) {
        check_readable(*vm.initrd, "initrd");
    }
    // Firecracker runs on KVM only: the accelerator is part of the binary.
    if (auto clone = builder_.restore_or_build(
            ctx, executable_, Accel::Kvm, [this](RestoreAttempt& attempt) { restore(attempt); },
            [this](TemplateBuild& build) { return save_template(build); })) {
        return clone;
    }
    return boot(ctx);
}

std::unique_ptr<Instance> FirecrackerBackend::boot(const InstanceContext& ctx) {
    const FunctionSpec& spec = *ctx.spec;
    const VmSpec& vm = spec.vm();
    auto begin = Clock::now();

    // Declared in release order: on any failure the process dies first, then the working
    // directory (with a private rootfs copy) goes, then the tap.
    std::unique_ptr<NetworkLease> lease = lease_tap(*env_.network);
    apply_network_policy(env_, *lease, spec);
    auto dir = std::make_unique<WorkDir>(env_.runtime_dir, ctx.instance_id);
    Rootfs rootfs = prepare_rootfs(vm, dir->path(), vm.image);
    GuestAddressing addressing{lease->guest_ip(), lease->host_ip(), lease->netmask(),
                               "http://" + lease->host_ip() + ":" +
                                   std::to_string(env_.callback_port) + ctx.callback_path};
    BootPlan plan =
        plan_boot(vm, addressing, rootfs.path, rootfs.read_only, lease->tap(), lease->mac());
    auto prepared = Clock::now();

    const fs::path socket = dir->path() / kApiSocket;
    const fs::path log = dir->path() / kLogFile;
    auto console =
        std::make_unique<ForwardedConsole>(env_.consoles, log, spec.name, ctx.instance_id);
    std::unique_ptr<Scope> scope;  // declared before the process: stopped after it is killed
    auto child =
        spawn(firecracker_command_line(executable_, socket, ctx.instance_id), log, dir->path());
    scope = start_instance_scope(env_.scopes, ctx, child->pid(), scope_memory_max(vm.memory_mib));
    await_api_socket(*child, socket, log);
    auto listening = Clock::now();
    boot_vm(socket, plan);

    spdlog::debug(
        "firecracker: {} instance {}: pid {} tap {} guest {} (prepare {:.1f} ms, api socket "
        "{:.1f} ms, boot calls {:.1f} ms)",
        spec.name, ctx.instance_id, child->pid(), lease->tap(), lease->guest_ip(),
        std::chrono::duration<double, std::milli>(prepared - begin).count(),
        std::chrono::duration<double, std::milli>(listening - prepared).count(),
        ms_since(listening));
    auto instance = std::make_unique<FirecrackerInstance>(
        env_.exits, std::move(lease), std::move(dir), std::move(console), std::move(scope),
        std::move(child), spec.port);
    instance->watch(ctx.on_exit);
    return instance;
}

void FirecrackerBackend::restore(RestoreAttempt& attempt) {
    try {
        load_clone(attempt);
    } catch (const SandboxError& e) {
        if (e.http_status() != 502) {
            throw;  // no tap, no kernel: booting would fail the same way
        }
        throw std::runtime_error(e.what());  // this firecracker failed; a booted one may not
    }
}

void FirecrackerBackend::load_clone(RestoreAttempt& attempt) {
    const InstanceContext& ctx = attempt.ctx();
    const FunctionSpec& spec = attempt.spec();
    const VmSpec& vm = spec.vm();
    const VmTemplate& tpl = *attempt.tpl();
    auto begin = Clock::now();
    std::unique_ptr<NetworkLease> lease = lease_tap(*env_.network);
    apply_network_policy(env_, *lease, spec);
    lease->use_guest_mac(tpl.mac());  // virtio-net comes back with the template's MAC
    auto dir = std::make_unique<WorkDir>(env_.runtime_dir, ctx.instance_id);
    // The snapshot names the template's disk by the relative path of its private copy: this
    // clone's copy of the disk as the template left it, in the clone's working directory.
    fs::path saved_disk = tpl.dir() / rootfs_copy_name(vm);
    if (vm.copy_rootfs) {
        prepare_rootfs(vm, dir->path(), saved_disk);
    }
    RestoreMessage message{
        lease->guest_ip(), lease->host_ip(), lease->netmask(),
        "http://" + lease->host_ip() + ":" + std::to_string(env_.callback_port) + ctx.callback_path,
        random_hex(8)};
    std::string tap = lease->tap();

    const fs::path socket = dir->path() / kApiSocket;
    const fs::path log = dir->path() / kLogFile;
    auto console =
        std::make_unique<ForwardedConsole>(env_.consoles, log, spec.name, ctx.instance_id);
    std::unique_ptr<Scope> scope;
    auto child =
        spawn(firecracker_command_line(executable_, socket, ctx.instance_id), log, dir->path());
    scope = start_instance_scope(env_.scopes, ctx, child->pid(), scope_memory_max(vm.memory_mib));
    await_api_socket(*child, socket, log);
    {
        FirecrackerApi api(socket,
                           std::chrono::ceil<milliseconds>(attempt.deadline() - Clock::now()));
        api.load_snapshot(tpl.state_file().string(), tpl.memory_file().string(),
                          kNetworkInterfaceId, tap);
    }
    FirecrackerInstance& clone = attempt.hold(std::make_unique<FirecrackerInstance>(
        env_.exits, std::move(lease), std::move(dir), std::move(console), std::move(scope),
        std::move(child), spec.port, attempt.tpl()));
    attempt.acknowledge(tap, message);
    spdlog::debug("firecracker: {} instance {}: restored from template {} in {:.1f} ms", spec.name,
                  ctx.instance_id, tpl.key(), ms_since(begin));
    clone.watch(ctx.on_exit);
}

SavedTemplate FirecrackerBackend::save_template(TemplateBuild& build) {
    const FunctionSpec& spec = build.spec();
    const VmSpec& vm = firecracker_vm(spec);
    std::unique_ptr<NetworkLease> lease = lease_tap(*env_.network);
    apply_network_policy(env_, *lease, spec);
    WorkDir dir(env_.runtime_dir, build.ctx().instance_id);
    Rootfs rootfs = prepare_rootfs(vm, dir.path(), vm.image);
    // A private copy is named relative to the working directory, where every clone has its own.
    fs::path drive = rootfs.read_only ? rootfs.path : rootfs.path.filename();
    GuestAddressing addressing{lease->guest_ip(), lease->host_ip(), lease->netmask(),
                               "http://" + lease->host_ip() + ":" +
                                   std::to_string(env_.callback_port) + build.ctx().callback_path};
    BootPlan plan = plan_boot(vm, addressing, drive, rootfs.read_only, lease->tap(), lease->mac());

    const fs::path socket = dir.path() / kApiSocket;
    const fs::path log = dir.path() / kLogFile;
    std::unique_ptr<Scope> scope;  // declared before the process: stopped after it is killed
    auto child = spawn(firecracker_command_line(executable_, socket, build.ctx().instance_id), log,
                       dir.path());
    // Like every instance, in a transient scope of unifaas.slice.
    scope = start_instance_scope(env_.scopes, build.ctx(), child->pid(),
                                 scope_memory_max(vm.memory_mib));
    await_api_socket(*child, socket, log);
    boot_vm(socket, plan);
    build.wait_ready(lease->guest_ip(), child->pidfd(), [&] { return "\n" + tail_or_note(log); });

    // Paused and saved, never resumed: a snapshot resumed twice would duplicate its secrets.
    FirecrackerApi api(socket, kSaveTimeout);
    api.pause_vm();
    api.create_snapshot((build.partial() / "state").string(),
                        (build.partial() / "memory").string());
    child.reset();  // killed and reaped: the disk copy is no longer written to
    if (!rootfs.read_only) {
        copy_sparse(dir.path() / drive, build.partial() / drive);  // the disk as the VM left it
    }
    return {lease->mac(), plan.boot_args};
}

}  // namespace unifaas
