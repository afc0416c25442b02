#include "sandbox/oci_spare.h"

#include <fcntl.h>
#include <poll.h>
#include <unistd.h>

#include <cerrno>
#include <system_error>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

namespace unifaas {

namespace fs = std::filesystem;

namespace {

constexpr int kStopWaitMs = 5000;

// ExitWatcher::unwatch(0) would wait for a callback that never runs.
void unwatch(ExitWatcher& exits, ExitWatcher::Id id) {
    if (id != 0) {
        exits.unwatch(id);
    }
}

bool exited(int pidfd) {
    pollfd p{pidfd, POLLIN, 0};
    return ::poll(&p, 1, 0) > 0;
}

}  // namespace

// ---- OciSpare ---------------------------------------------------------------------------------

OciSpare::OciSpare(OciSpareParts parts, std::unique_ptr<OciShim> shim, pid_t init_pid,
                   const VmEnvironment& env, OciOutputCap* output_cap)
    : parts_(std::move(parts)),
      exits_(*env.exits),
      callbacks_(env.callbacks),
      console_(env.consoles, parts_.workdir->path() / "output.log", parts_.spec->name,
               parts_.instance_id),
      capped_(output_cap, parts_.workdir->path() / "output.log"),
      shim_(std::move(shim)),
      pid_(init_pid) {}

OciSpare::~OciSpare() {
    unwatch(exits_, watch_);
    if (!exited(pidfd())) {
        runtime({"kill", container(), "KILL"});
        pollfd p{pidfd(), POLLIN, 0};
        if (::poll(&p, 1, kStopWaitMs) <= 0) {
            spdlog::warn("container {}: still running {} ms after SIGKILL", container(),
                         kStopWaitMs);
        }
    }
    runtime({"delete", "--force", container()});
    shim_.reset();  // reaped (killed first if it still runs)
    if (callbacks_ != nullptr) {
        callbacks_->forget(parts_.token);  // unused spare: its token must not stay valid
    }
    // Then, in reverse order: output, scope, bundle, network namespace.
}

void OciSpare::runtime(const std::vector<std::string>& args) const {
    std::vector<std::string> argv = {parts_.runtime, "--root", parts_.state_root.string()};
    if (parts_.cgroups_disabled) {
        argv.emplace_back("--cgroup-manager=disabled");
    }
    argv.insert(argv.end(), args.begin(), args.end());
    try {
        run_command(argv, parts_.workdir->path() / "stop.log");
    } catch (const std::exception& e) {
        spdlog::warn("{}", e.what());
    }
}

bool OciSpare::alive() const {
    return !exited(pidfd());
}

bool OciSpare::start(std::function<void(const std::string&)> on_exit) {
    // What `crun start` does: the init holds the fifo open for reading and execs once a byte
    // arrives. Without a reader (the init died) the non-blocking open fails with ENXIO.
    fs::path fifo = parts_.state_root / container() / "exec.fifo";
    int fd = ::open(fifo.c_str(), O_WRONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) {
        spdlog::info("spare container {}: cannot start ({}): replaced", container(),
                     std::strerror(errno));
        return false;
    }
    ::unlink(fifo.c_str());  // as crun does: the runtime reads "running" from its absence
    char byte = 0;
    ssize_t n = ::write(fd, &byte, 1);
    int saved = errno;
    ::close(fd);
    if (n != 1) {
        spdlog::info("spare container {}: cannot start ({}): replaced", container(),
                     std::strerror(saved));
        return false;
    }
    // Worded as a foreground `crun run` child's end: the shim ended as the init did.
    watch_ = exits_.watch(pidfd(), [this, on_exit = std::move(on_exit)] {
        on_exit(fmt::format("container {} ({})",
                            oci_exit_text(shim_->pid(), parts_.spec->container().memory_mib),
                            fs::path(parts_.runtime).filename().string()));
    });
    return true;
}

std::string OciSpare::describe() const {
    return fmt::format("container {} ({} spare, init pid {}, veth {})", container(),
                       fs::path(parts_.runtime).filename().string(), pid_,
                       parts_.lease->host_interface());
}

std::string OciSpare::output_tail() const {
    return OciOutputCap::tail(parts_.workdir->path() / "output.log", 20);
}

// ---- OciSpares --------------------------------------------------------------------------------

OciSpares::OciSpares(std::uint64_t memory_cap_mib, Maker make, ExitWatcher& exits)
    : cap_mib_(memory_cap_mib), make_(std::move(make)), exits_(exits) {
    thread_ = std::thread([this] { run(); });
}

OciSpares::~OciSpares() {
    {
        std::lock_guard lk(mu_);
        stop_ = true;
        for (auto& [name, slot] : slots_) {
            drop_locked(slot);
        }
    }
    cv_.notify_all();
    thread_.join();
}

void OciSpares::drop_locked(Slot& slot) {
    if (slot.spare) {
        garbage_.push_back({std::move(slot.spare), slot.watch});
    }
    slot.watch = 0;
    slot.dead = false;
    ++slot.generation;
}

void OciSpares::keep_for(const std::vector<std::shared_ptr<const FunctionSpec>>& specs) {
    {
        std::lock_guard lk(mu_);
        std::map<std::string, std::shared_ptr<const FunctionSpec>> wanted;
        for (const auto& spec : specs) {
            wanted[spec->name] = spec;
        }
        for (auto it = slots_.begin(); it != slots_.end();) {
            if (wanted.contains(it->first)) {
                ++it;
                continue;
            }
            drop_locked(it->second);  // the function is gone
            if (it->second.making) {
                it->second.spec = nullptr;  // its maker removes the slot
                ++it;
            } else {
                it = slots_.erase(it);
            }
        }
        for (auto& [name, spec] : wanted) {
            Slot& slot = slots_[name];
            if (slot.spec != spec) {
                drop_locked(slot);
                slot.spec = spec;
                slot.failed = false;
            }
        }
    }
    cv_.notify_all();
}

std::unique_ptr<OciSpare> OciSpares::take(const std::shared_ptr<const FunctionSpec>& spec) {
    std::unique_ptr<OciSpare> spare;
    ExitWatcher::Id watch = 0;
    {
        std::lock_guard lk(mu_);
        Slot& slot = slots_[spec->name];
        if (slot.spec != spec) {  // new or redefined function: spares of this definition from now
            drop_locked(slot);
            slot.spec = spec;
            slot.failed = false;
        } else if (slot.spare && !slot.dead) {
            spare = std::move(slot.spare);
            watch = slot.watch;
            slot.watch = 0;
            ++slot.generation;
        }
        slot.failed = false;  // used: worth another try
    }
    cv_.notify_all();
    if (!spare) {
        return nullptr;
    }
    unwatch(exits_, watch);  // from now its exit is the instance's
    if (!spare->alive()) {
        std::lock_guard lk(mu_);
        garbage_.push_back({std::move(spare), 0});
        cv_.notify_all();
        return nullptr;
    }
    return spare;
}

std::size_t OciSpares::ready() const {
    std::lock_guard lk(mu_);
    std::size_t n = 0;
    for (const auto& [name, slot] : slots_) {
        n += slot.spare && !slot.dead ? 1 : 0;
    }
    return n;
}

std::uint64_t OciSpares::committed_mib_locked() const {
    std::uint64_t sum = 0;
    for (const auto& [name, slot] : slots_) {
        if ((slot.spare || slot.making) && slot.spec) {
            sum += slot.spec->container().memory_mib;
        }
    }
    return sum;
}

OciSpares::Slot* OciSpares::next_to_make_locked() {
    std::uint64_t committed = committed_mib_locked();
    for (auto& [name, slot] : slots_) {
        if (slot.spec && !slot.spare && !slot.making && !slot.failed &&
            committed + slot.spec->container().memory_mib <= cap_mib_) {
            return &slot;
        }
    }
    return nullptr;
}

void OciSpares::run() {
    std::unique_lock lk(mu_);
    for (;;) {
        // A spare whose init died: removed, and made again.
        for (auto& [name, slot] : slots_) {
            if (slot.dead) {
                spdlog::info("function {}: spare container {} exited before use: replacing it",
                             name, slot.spare ? slot.spare->instance_id() : "");
                drop_locked(slot);
            }
        }
        if (!garbage_.empty()) {
            Garbage g = std::move(garbage_.front());
            garbage_.pop_front();
            lk.unlock();
            unwatch(exits_, g.watch);
            g.spare.reset();
            lk.lock();
            continue;
        }
        if (stop_) {
            return;
        }
        Slot* slot = next_to_make_locked();
        if (slot == nullptr) {
            cv_.wait(lk);
            continue;
        }
        auto spec = slot->spec;
        slot->making = true;
        std::uint64_t generation = slot->generation;
        lk.unlock();
        std::unique_ptr<OciSpare> spare;
        try {
            spare = make_(spec);
        } catch (const std::exception& e) {
            spdlog::warn("function {}: cannot create a spare container: {}", spec->name, e.what());
        }
        lk.lock();
        auto it = slots_.find(spec->name);
        if (it == slots_.end()) {
            if (spare) {
                garbage_.push_back({std::move(spare), 0});
            }
            continue;
        }
        Slot& s = it->second;
        s.making = false;
        if (!spare) {
            s.failed = true;
            continue;
        }
        if (stop_ || s.spec != spec || s.generation != generation || s.spare) {
            garbage_.push_back({std::move(spare), 0});  // redefined or removed meanwhile
            if (!s.spec) {
                slots_.erase(it);
            }
            continue;
        }
        std::string name = spec->name;
        s.spare = std::move(spare);
        s.watch = exits_.watch(s.spare->pidfd(), [this, name, generation] {
            {
                std::lock_guard guard(mu_);
                auto found = slots_.find(name);
                if (found == slots_.end() || found->second.generation != generation) {
                    return;  // taken or dropped meanwhile
                }
                found->second.dead = true;
            }
            cv_.notify_all();
        });
        spdlog::debug("function {}: spare container {} ready", name, s.spare->instance_id());
    }
}

}  // namespace unifaas
