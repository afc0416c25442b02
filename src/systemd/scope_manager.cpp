#include "systemd/scope_manager.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <systemd/sd-bus.h>
#include <unistd.h>

#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <filesystem>
#include <functional>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include <spdlog/spdlog.h>

namespace unifaas {

namespace {

using Clock = std::chrono::steady_clock;

constexpr const char* kService = "org.freedesktop.systemd1";
constexpr const char* kManagerPath = "/org/freedesktop/systemd1";
constexpr const char* kManagerInterface = "org.freedesktop.systemd1.Manager";
constexpr const char* kScopeInterface = "org.freedesktop.systemd1.Scope";
constexpr const char* kPropertiesInterface = "org.freedesktop.DBus.Properties";
constexpr const char* kNoSuchUnit = "org.freedesktop.systemd1.NoSuchUnit";
constexpr std::size_t kUnitNameMax = 255;  // systemd's UNIT_NAME_MAX - 1

bool valid_unit_char(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == ':' ||
           c == '_' || c == '.';
}

void append_escaped(std::string& out, char c) {
    static const char hex[] = "0123456789abcdef";
    auto byte = static_cast<unsigned char>(c);
    out += "\\x";
    out += hex[byte >> 4];
    out += hex[byte & 15];
}

std::string errno_text(int negative_errno) {
    return std::strerror(-negative_errno);
}

std::uint64_t to_usec(std::chrono::milliseconds ms) {
    return static_cast<std::uint64_t>(ms.count()) * 1000;
}

}  // namespace

std::string escape_unit_name(std::string_view text) {
    std::string out;
    out.reserve(text.size());
    for (std::size_t i = 0; i < text.size(); ++i) {
        char c = text[i];
        if (c == '/') {
            out += '-';
        } else if ((i == 0 && c == '.') || !valid_unit_char(c)) {
            append_escaped(out, c);
        } else {
            out += c;
        }
    }
    return out;
}

std::string scope_unit_name(std::string_view function, std::string_view instance_id) {
    const std::string prefix = "unifaas-";
    const std::string suffix = "-" + std::string(instance_id) + ".scope";
    std::string escaped = escape_unit_name(function);
    std::size_t room = kUnitNameMax - prefix.size() - suffix.size();
    if (escaped.size() > room) {
        std::size_t cut = room;
        // An escape is "\xNN": never keep a part of one.
        std::size_t backslash = escaped.rfind('\\', cut - 1);
        if (backslash != std::string::npos && backslash + 4 > cut) {
            cut = backslash;
        }
        escaped.resize(cut);
    }
    return prefix + escaped + suffix;
}

std::uint64_t scope_memory_max(std::uint64_t guest_memory_mib, std::uint64_t extra_mib) {
    std::uint64_t overhead = (guest_memory_mib * kScopeMemoryOverheadPercent + 99) / 100;
    return (guest_memory_mib + overhead + kScopeMemoryOverheadMiB + extra_mib) * 1024 * 1024;
}

namespace detail {

// One system bus connection shared by every caller. sd-bus is not thread-safe: every use of the
// connection happens with mu_ held. A thread of its own runs sd_bus_process (replies, JobRemoved
// signals) and sleeps in poll() with mu_ released; callers send asynchronously and wait on cv_.
class SystemdBus {
  public:
    using Writer = std::function<int(sd_bus_message*)>;
    using Reader = std::function<int(sd_bus_message*)>;

    // Throws ScopeError with the reason systemd cannot be used.
    explicit SystemdBus(std::chrono::milliseconds timeout);
    ~SystemdBus();
    SystemdBus(const SystemdBus&) = delete;
    SystemdBus& operator=(const SystemdBus&) = delete;

    std::string version() const { return version_; }

    // Calls a method on org.freedesktop.systemd1: `write` appends the arguments, `read` parses
    // the reply (both run with the bus locked; read on the bus thread). Throws ScopeError.
    void call(const std::string& path, const char* interface, const char* member,
              const Writer& write, const Reader& read);

    // Start jobs are matched by unit name: expect_job() before the call that makes the job, so
    // its JobRemoved cannot be missed.
    void expect_job(const std::string& unit);
    // The result of `job` on `unit` ("done", "failed", ...); "" when the deadline passed first.
    std::string wait_job(const std::string& unit, const std::string& job,
                         Clock::time_point deadline);
    void forget_job(const std::string& unit);

  private:
    struct PendingCall {
        SystemdBus* bus = nullptr;
        const Reader* read = nullptr;
        bool done = false;
        std::string error_name;
        std::string error_message;
    };
    struct JobWait {
        std::vector<std::pair<std::string, std::string>> removed;  // job path, result
    };

    static int on_reply(sd_bus_message* m, void* userdata, sd_bus_error* error);
    static int on_job_removed(sd_bus_message* m, void* userdata, sd_bus_error* error);

    void run();
    void wake();
    void close_locked();

    std::chrono::milliseconds timeout_;
    sd_bus* bus_ = nullptr;
    sd_bus_slot* job_match_ = nullptr;
    int wake_fd_ = -1;
    std::string version_;

    std::mutex mu_;
    std::condition_variable cv_;
    bool stopping_ = false;
    std::string broken_;  // why the connection is unusable ("" while it works)
    std::unordered_map<std::string, JobWait> jobs_;
    std::thread thread_;
};

SystemdBus::SystemdBus(std::chrono::milliseconds timeout) : timeout_(timeout) {
    // sd_bus_open_system honours DBUS_SYSTEM_BUS_ADDRESS.
    int r = sd_bus_open_system(&bus_);
    if (r < 0) {
        throw ScopeError("cannot connect to the system bus: " + errno_text(r));
    }
    sd_bus_set_method_call_timeout(bus_, to_usec(timeout_));
    // Broadcast signals reach us only through a match rule. systemd sends a job's JobRemoved to
    // the client that asked for the job even when it did not call Subscribe().
    r = sd_bus_match_signal(bus_, &job_match_, kService, kManagerPath, kManagerInterface,
                            "JobRemoved", &SystemdBus::on_job_removed, this);
    if (r < 0) {
        close_locked();
        throw ScopeError("cannot subscribe to systemd's JobRemoved signals on the system bus: " +
                         errno_text(r));
    }
    sd_bus_error error = SD_BUS_ERROR_NULL;
    char* version = nullptr;
    r = sd_bus_get_property_string(bus_, kService, kManagerPath, kManagerInterface, "Version",
                                   &error, &version);
    if (r < 0) {
        std::string why = error.message ? error.message : errno_text(r);
        sd_bus_error_free(&error);
        close_locked();
        throw ScopeError("systemd does not answer on the system bus: " + why);
    }
    version_ = version ? version : "";
    std::free(version);
    wake_fd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (wake_fd_ < 0) {
        int saved = errno;
        close_locked();
        throw ScopeError(std::string("eventfd: ") + std::strerror(saved));
    }
    thread_ = std::thread([this] { run(); });
}

SystemdBus::~SystemdBus() {
    {
        std::lock_guard lock(mu_);
        stopping_ = true;
    }
    wake();
    if (thread_.joinable()) {
        thread_.join();
    }
    std::lock_guard lock(mu_);
    close_locked();
    if (wake_fd_ >= 0) {
        ::close(wake_fd_);
    }
}

void SystemdBus::close_locked() {
    job_match_ = sd_bus_slot_unref(job_match_);
    if (bus_ != nullptr) {
        // Sends what is still queued (a last StopUnit) before closing.
        bus_ = sd_bus_flush_close_unref(bus_);
    }
}

void SystemdBus::wake() {
    std::uint64_t one = 1;
    if (wake_fd_ >= 0) {
        [[maybe_unused]] ssize_t n = ::write(wake_fd_, &one, sizeof(one));
    }
}

void SystemdBus::run() {
    std::unique_lock lock(mu_);
    while (!stopping_) {
        int r;
        do {
            r = sd_bus_process(bus_, nullptr);
        } while (r > 0);
        if (r < 0) {
            // Replies still pending were completed with errors by sd_bus_process itself.
            broken_ = "the system bus connection was lost: " + errno_text(r);
            spdlog::error("systemd: {}; transient scopes cannot be created any more", broken_);
            cv_.notify_all();
            return;
        }
        pollfd fds[2] = {{sd_bus_get_fd(bus_), static_cast<short>(sd_bus_get_events(bus_)), 0},
                         {wake_fd_, POLLIN, 0}};
        std::uint64_t until = UINT64_MAX;
        sd_bus_get_timeout(bus_, &until);
        int wait_ms = -1;
        if (until != UINT64_MAX) {
            timespec now{};
            clock_gettime(CLOCK_MONOTONIC, &now);
            std::uint64_t now_us = static_cast<std::uint64_t>(now.tv_sec) * 1000000 +
                                   static_cast<std::uint64_t>(now.tv_nsec) / 1000;
            wait_ms = until <= now_us ? 0 : static_cast<int>((until - now_us + 999) / 1000);
        }
        lock.unlock();
        ::poll(fds, 2, wait_ms);
        if (fds[1].revents != 0) {
            std::uint64_t count;
            [[maybe_unused]] ssize_t n = ::read(wake_fd_, &count, sizeof(count));
        }
        lock.lock();
    }
}

int SystemdBus::on_reply(sd_bus_message* m, void* userdata, sd_bus_error* /*error*/) {
    auto* call = static_cast<PendingCall*>(userdata);
    if (const sd_bus_error* e = sd_bus_message_get_error(m)) {
        call->error_name = e->name ? e->name : "";
        call->error_message = e->message ? e->message : call->error_name;
    } else if (call->read != nullptr && *call->read) {
        int r = (*call->read)(m);
        if (r < 0) {
            call->error_message = "unexpected reply: " + errno_text(r);
        }
    }
    call->done = true;
    call->bus->cv_.notify_all();
    return 0;
}

int SystemdBus::on_job_removed(sd_bus_message* m, void* userdata, sd_bus_error* /*error*/) {
    auto* self = static_cast<SystemdBus*>(userdata);
    std::uint32_t id = 0;
    const char* job = nullptr;
    const char* unit = nullptr;
    const char* result = nullptr;
    if (sd_bus_message_read(m, "uoss", &id, &job, &unit, &result) < 0) {
        return 0;
    }
    auto it = self->jobs_.find(unit);
    if (it != self->jobs_.end()) {
        it->second.removed.emplace_back(job, result);
        self->cv_.notify_all();
    }
    return 0;
}

void SystemdBus::call(const std::string& path, const char* interface, const char* member,
                      const Writer& write, const Reader& read) {
    const std::string what = std::string(member);
    PendingCall pending;
    pending.bus = this;
    pending.read = &read;
    sd_bus_slot* slot = nullptr;
    std::unique_lock lock(mu_);
    if (!broken_.empty()) {
        throw ScopeError(what + ": " + broken_);
    }
    sd_bus_message* m = nullptr;
    int r = sd_bus_message_new_method_call(bus_, &m, kService, path.c_str(), interface, member);
    if (r >= 0 && write) {
        r = write(m);
    }
    if (r >= 0) {
        r = sd_bus_call_async(bus_, &slot, m, &SystemdBus::on_reply, &pending, to_usec(timeout_));
    }
    sd_bus_message_unref(m);
    if (r < 0) {
        throw ScopeError(what + ": cannot send: " + errno_text(r));
    }
    wake();  // the bus thread may have to wait for POLLOUT or for the new call's timeout
    // sd-bus ends the call itself after timeout_; the margin only guards against a stuck thread.
    auto deadline = Clock::now() + timeout_ + std::chrono::seconds(1);
    bool done = cv_.wait_until(lock, deadline, [&] { return pending.done || !broken_.empty(); });
    sd_bus_slot_unref(slot);  // no callback into `pending` once we return
    if (!pending.done) {
        throw ScopeError(what + ": " + (done ? broken_ : std::string("no answer from systemd")));
    }
    if (!pending.error_message.empty()) {
        throw ScopeError(what + ": " + pending.error_message, pending.error_name);
    }
}

void SystemdBus::expect_job(const std::string& unit) {
    std::lock_guard lock(mu_);
    jobs_[unit] = JobWait{};
}

std::string SystemdBus::wait_job(const std::string& unit, const std::string& job,
                                 Clock::time_point deadline) {
    std::unique_lock lock(mu_);
    std::string result;
    auto seen = [&] {
        auto it = jobs_.find(unit);
        if (it == jobs_.end()) {
            return false;
        }
        for (const auto& [path, job_result] : it->second.removed) {
            if (path == job) {
                result = job_result;
                return true;
            }
        }
        return false;
    };
    cv_.wait_until(lock, deadline, [&] { return seen() || !broken_.empty(); });
    return result;
}

void SystemdBus::forget_job(const std::string& unit) {
    std::lock_guard lock(mu_);
    jobs_.erase(unit);
}

}  // namespace detail

namespace {

// Removes the unit's job wait on scope exit.
class JobWaitGuard {
  public:
    JobWaitGuard(detail::SystemdBus& bus, std::string unit) : bus_(bus), unit_(std::move(unit)) {
        bus_.expect_job(unit_);
    }
    ~JobWaitGuard() { bus_.forget_job(unit_); }
    JobWaitGuard(const JobWaitGuard&) = delete;
    JobWaitGuard& operator=(const JobWaitGuard&) = delete;

  private:
    detail::SystemdBus& bus_;
    std::string unit_;
};

// StartTransientUnit(s name, s mode, a(sv) properties, a(sa(sv)) aux).
int append_scope_properties(sd_bus_message* m, const std::string& unit,
                            const std::string& description, pid_t pid, std::uint64_t memory_max) {
    int r = sd_bus_message_append(m, "ss", unit.c_str(), "fail");
    if (r >= 0) {
        r = sd_bus_message_open_container(m, 'a', "(sv)");
    }
    const int yes = 1;
    if (r >= 0) {
        r = sd_bus_message_append(m, "(sv)(sv)(sv)(sv)(sv)(sv)(sv)(sv)",             //
                                  "PIDs", "au", 1, static_cast<std::uint32_t>(pid),  //
                                  "Description", "s", description.c_str(),           //
                                  "Slice", "s", kInstanceSlice,                      //
                                  "CPUAccounting", "b", yes,                         //
                                  "MemoryAccounting", "b", yes,                      //
                                  "TasksAccounting", "b", yes,                       //
                                  "MemoryMax", "t", memory_max,                      //
                                  "CollectMode", "s", "inactive-or-failed");
    }
    if (r >= 0) {
        r = sd_bus_message_close_container(m);
    }
    if (r >= 0) {
        r = sd_bus_message_append(m, "a(sa(sv))", 0);
    }
    return r;
}

int read_object_path(sd_bus_message* m, std::string& out) {
    const char* path = nullptr;
    int r = sd_bus_message_read(m, "o", &path);
    if (r >= 0) {
        out = path;
    }
    return r;
}

// Properties.GetAll: a{sv}; picks the three counters, skips everything else.
int read_accounting(sd_bus_message* m, ScopeAccounting& out) {
    int r = sd_bus_message_enter_container(m, 'a', "{sv}");
    if (r < 0) {
        return r;
    }
    while ((r = sd_bus_message_enter_container(m, 'e', "sv")) > 0) {
        const char* name = nullptr;
        if ((r = sd_bus_message_read(m, "s", &name)) < 0) {
            return r;
        }
        std::uint64_t* target = nullptr;
        if (std::strcmp(name, "MemoryCurrent") == 0) {
            target = &out.memory_current;
        } else if (std::strcmp(name, "CPUUsageNSec") == 0) {
            target = &out.cpu_usage_nsec;
        } else if (std::strcmp(name, "TasksCurrent") == 0) {
            target = &out.tasks_current;
        }
        r = target ? sd_bus_message_read(m, "v", "t", target) : sd_bus_message_skip(m, "v");
        if (r < 0 || (r = sd_bus_message_exit_container(m)) < 0) {
            return r;
        }
    }
    if (r < 0) {
        return r;
    }
    return sd_bus_message_exit_container(m);
}

void stop_unit(detail::SystemdBus& bus, const std::string& unit) {
    bus.call(
        kManagerPath, kManagerInterface, "StopUnit",
        [&](sd_bus_message* m) { return sd_bus_message_append(m, "ss", unit.c_str(), "replace"); },
        {});
}

}  // namespace

Scope::Scope(std::shared_ptr<detail::SystemdBus> bus, std::string name)
    : bus_(std::move(bus)), name_(std::move(name)) {}

Scope::~Scope() {
    try {
        stop_unit(*bus_, name_);
    } catch (const ScopeError& e) {
        if (e.dbus_error() != kNoSuchUnit) {
            spdlog::warn("systemd: cannot stop {}: {}", name_, e.what());
        }
    } catch (const std::exception& e) {
        spdlog::warn("systemd: cannot stop {}: {}", name_, e.what());
    }
}

std::unique_ptr<ScopeManager> ScopeManager::connect(std::string& reason) {
    return connect(reason, Options{});
}

std::unique_ptr<ScopeManager> ScopeManager::connect(std::string& reason, const Options& options) {
    std::error_code ec;
    if (options.require_booted && !std::filesystem::exists("/run/systemd/system", ec)) {
        reason = "systemd is not the init system (no /run/systemd/system)";
        return nullptr;
    }
    try {
        auto bus = std::make_shared<detail::SystemdBus>(options.timeout);
        std::string version = bus->version();
        return std::unique_ptr<ScopeManager>(
            new ScopeManager(std::move(bus), std::move(version), options.timeout));
    } catch (const ScopeError& e) {
        reason = e.what();
        return nullptr;
    }
}

ScopeManager::ScopeManager(std::shared_ptr<detail::SystemdBus> bus, std::string version,
                           std::chrono::milliseconds timeout)
    : bus_(std::move(bus)), version_(std::move(version)), timeout_(timeout) {}

ScopeManager::~ScopeManager() = default;

std::unique_ptr<Scope> ScopeManager::create(const std::string& function,
                                            const std::string& instance_id, pid_t pid,
                                            std::uint64_t memory_max_bytes) {
    const std::string unit = scope_unit_name(function, instance_id);
    const std::string description = "unifaas " + function + " instance " + instance_id;
    auto deadline = Clock::now() + timeout_;
    JobWaitGuard wait(*bus_, unit);
    std::string job;
    try {
        bus_->call(
            kManagerPath, kManagerInterface, "StartTransientUnit",
            [&](sd_bus_message* m) {
                return append_scope_properties(m, unit, description, pid, memory_max_bytes);
            },
            [&](sd_bus_message* m) { return read_object_path(m, job); });
    } catch (const ScopeError& e) {
        throw ScopeError("cannot start " + unit + ": " + e.what(), e.dbus_error());
    }
    std::string result = bus_->wait_job(unit, job, deadline);
    if (result == "done") {
        return std::unique_ptr<Scope>(new Scope(bus_, unit));
    }
    try {
        stop_unit(*bus_, unit);  // it may still come up later
    } catch (const ScopeError&) {
    }
    throw ScopeError("cannot start " + unit + ": " +
                     (result.empty() ? "its start job did not finish in time"
                                     : "its start job ended with result \"" + result + "\""));
}

ScopeAccounting ScopeManager::accounting(const std::string& unit) {
    std::string path;
    bus_->call(
        kManagerPath, kManagerInterface, "GetUnit",
        [&](sd_bus_message* m) { return sd_bus_message_append(m, "s", unit.c_str()); },
        [&](sd_bus_message* m) { return read_object_path(m, path); });
    ScopeAccounting accounting;
    bus_->call(
        path, kPropertiesInterface, "GetAll",
        [&](sd_bus_message* m) { return sd_bus_message_append(m, "s", kScopeInterface); },
        [&](sd_bus_message* m) { return read_accounting(m, accounting); });
    return accounting;
}

}  // namespace unifaas
