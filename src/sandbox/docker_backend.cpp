#include "sandbox/docker_backend.h"

#include <algorithm>
#include <cctype>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <string_view>
#include <thread>
#include <vector>

#include <spdlog/spdlog.h>
#include <nlohmann/json.hpp>

#include "sandbox/docker_client.h"

namespace unifaas {

namespace docker {

using nlohmann::json;

constexpr const char* kInstanceLabel = "unifaas.instance";
constexpr const char* kFunctionLabel = "unifaas.function";

// Follows the engine's container "die" events for the containers it is told about and reports
// each exit once: to a start() still in progress (finish_start) or to the instance's on_exit.
// After every (re)subscription it inspects the containers it follows, so exits during a gap in
// the stream are not lost either.
class ExitWatcher {
  public:
    using OnExit = std::function<void(const std::string& reason)>;

    explicit ExitWatcher(std::shared_ptr<DockerClient> client)
        : client_(std::move(client)),
          stream_(client_->socket_path(),
                  json{{"type", {"container"}}, {"event", {"die"}}, {"label", {kInstanceLabel}}}) {}
    ~ExitWatcher() { stop(); }

    // Starts the thread on first use.
    void ensure_started() {
        std::lock_guard lock(mutex_);
        if (!thread_.joinable() && !stopping_) {
            thread_ = std::thread([this] { loop(); });
        }
    }

    void stop() {
        {
            std::lock_guard lock(mutex_);
            if (stopping_) {
                return;
            }
            stopping_ = true;
        }
        cv_.notify_all();
        stream_.cancel();
        if (thread_.joinable()) {
            if (thread_.get_id() == std::this_thread::get_id()) {
                thread_.detach();  // the last owner let go from inside an on_exit callback
            } else {
                thread_.join();
            }
        }
    }

    // Waits until the event subscription is live. With a zero timeout, only checks.
    bool wait_connected(std::chrono::milliseconds timeout) {
        std::unique_lock lock(mutex_);
        if (!connected_ && timeout.count() > 0) {
            retry_now_ = true;  // cut a reconnect backoff short: someone is waiting
            cv_.notify_all();
            cv_.wait_for(lock, timeout, [&] { return connected_ || stopping_; });
        }
        return connected_;
    }

    std::string last_error() const {
        std::lock_guard lock(mutex_);
        return last_error_.empty() ? "no event subscription yet" : last_error_;
    }

    // Follows a created container; its start is in progress until finish_start().
    void watch(const std::string& id, OnExit on_exit) {
        std::lock_guard lock(mutex_);
        Entry entry;
        entry.on_exit = std::move(on_exit);
        entries_[id] = std::move(entry);
    }

    // Ends the start phase: the exit status if the container already died, else nullopt (from
    // now on a die goes to on_exit).
    std::optional<int> finish_start(const std::string& id) {
        std::lock_guard lock(mutex_);
        auto it = entries_.find(id);
        if (it == entries_.end()) {
            return std::nullopt;
        }
        if (it->second.died) {
            return it->second.died;
        }
        it->second.starting = false;
        return std::nullopt;
    }

    // Stops following a container. Waits for its on_exit if that runs right now on another
    // thread, so on_exit is never called once forget() has returned.
    void forget(const std::string& id) {
        std::unique_lock lock(mutex_);
        if (std::this_thread::get_id() != thread_id_) {
            cv_.wait(lock, [&] { return calling_ != id; });
        }
        entries_.erase(id);
    }

    bool follows(const std::string& id) const {
        std::lock_guard lock(mutex_);
        return entries_.count(id) != 0;
    }

    // A container of an instance that is gone but could not be removed (engine unreachable):
    // removed after the next (re)subscription, so an engine restart leaves no container behind.
    void remove_later(const std::string& id) {
        {
            std::lock_guard lock(mutex_);
            orphans_.insert(id);
            retry_now_ = true;
        }
        cv_.notify_all();
    }

  private:
    struct Entry {
        OnExit on_exit;
        bool starting = true;
        std::optional<int> died;  // exit status seen while starting
        bool reported = false;
    };

    void loop() {
        {
            std::lock_guard lock(mutex_);
            thread_id_ = std::this_thread::get_id();
        }
        auto backoff = std::chrono::milliseconds(100);
        while (!stopping()) {
            std::string error = run_once(backoff);
            std::unique_lock lock(mutex_);
            bool was_connected = connected_;
            connected_ = false;
            last_error_ = error;
            if (stopping_) {
                break;
            }
            if (was_connected) {
                spdlog::warn("docker: event stream from {} ended ({}); reconnecting",
                             client_->socket_path(), error);
            } else {
                spdlog::debug("docker: no event stream from {}: {}", client_->socket_path(), error);
            }
            cv_.wait_for(lock, backoff, [&] { return stopping_ || retry_now_; });
            retry_now_ = false;
            backoff = std::min(backoff * 2, std::chrono::milliseconds(5000));
        }
    }

    // One subscription; returns why it ended.
    std::string run_once(std::chrono::milliseconds& backoff) {
        try {
            stream_.run(
                "",
                [&] {
                    backoff = std::chrono::milliseconds(100);
                    {
                        std::lock_guard lock(mutex_);
                        connected_ = true;
                        last_error_.clear();
                    }
                    cv_.notify_all();
                    reconcile();
                },
                [&](const json& event) { on_event(event); });
            return "the engine closed the event stream";
        } catch (const std::exception& e) {
            return e.what();
        }
    }

    void on_event(const json& event) {
        if (event.value("Action", event.value("status", "")) != "die") {
            return;
        }
        std::string id = event.value("id", "");
        const auto& actor = event.value("Actor", json::object());
        if (id.empty()) {
            id = actor.value("ID", "");
        }
        std::string code = actor.value("Attributes", json::object()).value("exitCode", "");
        int status = code.empty() ? -1 : std::atoi(code.c_str());
        report(id, status, "container exited with status " + (code.empty() ? "?" : code));
    }

    void remove_orphans() {
        std::set<std::string> orphans;
        {
            std::lock_guard lock(mutex_);
            orphans.swap(orphans_);
        }
        for (const auto& id : orphans) {
            try {
                client_->remove_container(id);
                spdlog::info("docker: removed container {} of a stopped instance",
                             id.substr(0, 12));
            } catch (const std::exception& e) {
                spdlog::warn("docker: still cannot remove container {}: {}", id.substr(0, 12),
                             e.what());
            }
        }
    }

    // Containers that ended while no subscription was live; containers left to remove.
    void reconcile() {
        remove_orphans();
        std::vector<std::string> ids;
        {
            std::lock_guard lock(mutex_);
            for (const auto& [id, entry] : entries_) {
                if (!entry.reported && !entry.died) {
                    ids.push_back(id);
                }
            }
        }
        for (const auto& id : ids) {
            try {
                auto info = client_->inspect_container(id);
                if (info.state.status == "exited" || info.state.status == "dead") {
                    report(id, info.state.exit_code,
                           "container exited with status " + std::to_string(info.state.exit_code));
                }
            } catch (const EngineError& e) {
                if (e.status() == 404) {
                    report(id, -1, "container was removed outside unifaas");
                }
            } catch (const std::exception& e) {
                spdlog::debug("docker: cannot check container {}: {}", id.substr(0, 12), e.what());
            }
        }
    }

    void report(const std::string& id, int status, const std::string& reason) {
        OnExit on_exit;
        {
            std::lock_guard lock(mutex_);
            auto it = entries_.find(id);
            if (it == entries_.end()) {
                return;
            }
            Entry& entry = it->second;
            if (entry.starting) {
                if (!entry.died) {
                    entry.died = status;
                }
                return;
            }
            if (entry.reported) {
                return;
            }
            entry.reported = true;
            on_exit = entry.on_exit;
            calling_ = id;
        }
        if (on_exit) {
            try {
                on_exit(reason);
            } catch (const std::exception& e) {
                spdlog::error("docker: on_exit of container {} threw: {}", id.substr(0, 12),
                              e.what());
            }
        }
        {
            std::lock_guard lock(mutex_);
            calling_.clear();
        }
        cv_.notify_all();
    }

    bool stopping() const {
        std::lock_guard lock(mutex_);
        return stopping_;
    }

    std::shared_ptr<DockerClient> client_;
    EventStream stream_;
    mutable std::mutex mutex_;
    std::condition_variable cv_;
    std::map<std::string, Entry> entries_;
    std::set<std::string> orphans_;  // see remove_later()
    std::string calling_;            // container whose on_exit runs right now
    bool connected_ = false;
    bool stopping_ = false;
    bool retry_now_ = false;
    std::string last_error_;
    std::thread::id thread_id_;
    std::thread thread_;
};

}  // namespace docker

namespace {

using docker::DockerClient;
using docker::EngineError;
using docker::EngineUnreachable;
using docker::ExitWatcher;
using nlohmann::json;
using Clock = std::chrono::steady_clock;

constexpr unsigned kTailLines = 20;
constexpr auto kSubscribeTimeout = std::chrono::seconds(5);

std::string trim_right(std::string text) {
    auto end = text.find_last_not_of(" \r\n\t");
    text.erase(end == std::string::npos ? 0 : end + 1);
    return text;
}

bool contains_nocase(std::string_view text, std::string_view needle) {
    auto it = std::search(text.begin(), text.end(), needle.begin(), needle.end(),
                          [](char a, char b) { return std::tolower(a) == std::tolower(b); });
    return it != text.end();
}

std::string unreachable_text(const std::string& socket, const std::string& cause) {
    return "docker engine unreachable at " + socket + ": " + cause;
}

// Maps an engine failure during create/start/inspect to the status the gateway answers with.
[[noreturn]] void rethrow_as_sandbox_error(const std::string& socket, const ContainerSpec& spec) {
    try {
        throw;
    } catch (const EngineUnreachable& e) {
        throw SandboxError(503, unreachable_text(socket, e.what()));
    } catch (const EngineError& e) {
        const std::string& message = e.engine_message();
        if (e.status() == 404 && contains_nocase(message, "no such image")) {
            throw SandboxError(500, "image \"" + spec.image +
                                        "\" not found in the local engine (images are never "
                                        "pulled)");
        }
        if (spec.runtime && contains_nocase(message, "unknown runtime")) {
            throw SandboxError(
                500, "container runtime \"" + *spec.runtime + "\" is not known to the engine");
        }
        throw SandboxError(502, "docker: " + std::string(e.what()));
    } catch (const std::exception& e) {
        throw SandboxError(502, "docker: " + std::string(e.what()));
    }
}

template <typename Fn>
auto engine_call(const std::string& socket, const ContainerSpec& spec, Fn&& fn) {
    try {
        return fn();
    } catch (const SandboxError&) {
        throw;
    } catch (const std::exception&) {
        rethrow_as_sandbox_error(socket, spec);
    }
}

json container_config(const InstanceContext& ctx, const std::string& callback_url,
                      const DockerPlacement& placement) {
    const FunctionSpec& spec = *ctx.spec;
    const ContainerSpec& container = spec.container();
    std::map<std::string, std::string> ours{{"UNIFAAS_CALLBACK", callback_url},
                                            {"UNIFAAS_FUNCTION", spec.name},
                                            {"UNIFAAS_INSTANCE", ctx.instance_id},
                                            {"PORT", std::to_string(spec.port)}};
    json env = json::array();
    for (const auto& [key, value] : ours) {
        env.push_back(key + "=" + value);
    }
    for (const auto& [key, value] : spec.env) {
        if (ours.count(key) == 0) {  // the daemon's own variables win
            env.push_back(key + "=" + value);
        }
    }
    auto memory = static_cast<std::int64_t>(container.memory_mib) * 1024 * 1024;
    json host{{"Memory", memory}, {"MemorySwap", memory}, {"NetworkMode", "bridge"}};
    if (container.runtime) {
        host["Runtime"] = *container.runtime;
    }
    if (!placement.cgroup_parent.empty()) {
        host["CgroupParent"] = placement.cgroup_parent;
    }
    if (placement.journald) {
        // The driver turns label keys into fields: unifaas.function -> UNIFAAS_FUNCTION.
        host["LogConfig"] = {
            {"Type", "journald"},
            {"Config",
             {{"labels", std::string(docker::kFunctionLabel) + "," + docker::kInstanceLabel},
              {"tag", "unifaas-" + spec.name}}}};
    }
    return json{{"Image", container.image},
                {"Cmd", {callback_url}},
                {"Env", env},
                {"Labels",
                 {{docker::kFunctionLabel, spec.name}, {docker::kInstanceLabel, ctx.instance_id}}},
                {"HostConfig", host}};
}

// Until release(), removes the container (and stops following it) on scope exit.
class ContainerGuard {
  public:
    ContainerGuard(const DockerClient& client, ExitWatcher& watcher, std::string id)
        : client_(client), watcher_(watcher), id_(std::move(id)) {}
    ~ContainerGuard() {
        if (id_.empty()) {
            return;
        }
        watcher_.forget(id_);
        try {
            client_.remove_container(id_);
        } catch (const std::exception& e) {
            spdlog::warn(
                "docker: cannot remove container {} after a failed start (retried once "
                "the engine answers): {}",
                id_.substr(0, 12), e.what());
            watcher_.remove_later(id_);
        }
    }
    ContainerGuard(const ContainerGuard&) = delete;
    ContainerGuard& operator=(const ContainerGuard&) = delete;
    void release() { id_.clear(); }

  private:
    const DockerClient& client_;
    ExitWatcher& watcher_;
    std::string id_;
};

class DockerInstance : public Instance {
  public:
    DockerInstance(std::shared_ptr<DockerClient> client, std::shared_ptr<ExitWatcher> watcher,
                   std::string id, std::string ip, std::uint16_t port, std::string unit)
        : client_(std::move(client)),
          watcher_(std::move(watcher)),
          id_(std::move(id)),
          ip_(std::move(ip)),
          port_(port),
          unit_(std::move(unit)) {}

    ~DockerInstance() override {
        watcher_->forget(id_);  // first, so our own removal is not reported as an exit
        try {
            client_->remove_container(id_);
        } catch (const std::exception& e) {
            spdlog::warn("docker: cannot remove container {} (retried once the engine answers): {}",
                         id_.substr(0, 12), e.what());
            watcher_->remove_later(id_);
        }
    }

    std::string address() const override { return ip_; }
    std::uint16_t port() const override { return port_; }
    std::string describe() const override { return "container " + id_.substr(0, 12); }
    std::string unit() const override { return unit_; }
    std::string output_tail() const override {
        try {
            return client_->logs_tail(id_, kTailLines);
        } catch (const std::exception& e) {
            return std::string("(logs unavailable: ") + e.what() + ")";
        }
    }

  private:
    std::shared_ptr<DockerClient> client_;
    std::shared_ptr<ExitWatcher> watcher_;
    std::string id_;
    std::string ip_;
    std::uint16_t port_;
    std::string unit_;
};

std::string logs_or_note(const DockerClient& client, const std::string& id) {
    try {
        std::string logs = trim_right(client.logs_tail(id, kTailLines));
        return logs.empty() ? "(no output)" : logs;
    } catch (const std::exception& e) {
        return std::string("(logs unavailable: ") + e.what() + ")";
    }
}

SandboxError exited_before_ready(const DockerClient& client, const std::string& id, int status) {
    return SandboxError(502, "container exited before it was ready (status " +
                                 std::to_string(status) + "): " + logs_or_note(client, id));
}

double ms_since(Clock::time_point start) {
    return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

}  // namespace

std::string choose_docker_socket(const std::string& configured, const char* docker_host) {
    constexpr std::string_view kUnix = "unix://";
    if (configured != kDefaultDockerSocket || docker_host == nullptr) {
        return configured;
    }
    std::string_view host(docker_host);
    if (host.substr(0, kUnix.size()) == kUnix && host.size() > kUnix.size()) {
        return std::string(host.substr(kUnix.size()));
    }
    return configured;
}

std::string docker_cgroup_parent(const std::string& cgroup_driver, const std::string& slice) {
    if (cgroup_driver == "systemd") {
        return slice;
    }
    if (cgroup_driver == "cgroupfs") {
        return "/" + slice;  // a relative path would be taken below the engine's own cgroup
    }
    return {};
}

std::string docker_container_unit(const std::string& cgroup_driver,
                                  const std::string& cgroup_parent, const std::string& id) {
    if (cgroup_parent.empty()) {
        return {};
    }
    return cgroup_driver == "systemd" ? "docker-" + id + ".scope" : cgroup_parent + "/" + id;
}

DockerBackend::DockerBackend(std::string socket_path, std::uint16_t callback_port)
    : socket_path_(choose_docker_socket(socket_path, std::getenv("DOCKER_HOST"))),
      callback_port_(callback_port),
      client_(std::make_shared<DockerClient>(socket_path_)),
      watcher_(std::make_shared<ExitWatcher>(client_)) {
    const char* docker_host = std::getenv("DOCKER_HOST");
    if (docker_host && *docker_host && std::string_view(docker_host).substr(0, 7) != "unix://") {
        spdlog::warn("docker: DOCKER_HOST={} ignored: only unix:// sockets are supported",
                     docker_host);
    }
}

DockerBackend::~DockerBackend() {
    watcher_->stop();
}

void DockerBackend::set_cgroup_parent(std::string slice) {
    std::lock_guard lock(placement_mutex_);
    slice_ = std::move(slice);
    placement_.reset();
}

void DockerBackend::set_journald_logs(bool on) {
    std::lock_guard lock(placement_mutex_);
    journald_logs_ = on;
    placement_.reset();
}

// Asked once the engine answers; until then containers start with the engine's defaults.
DockerPlacement DockerBackend::placement() {
    std::lock_guard lock(placement_mutex_);
    if (placement_ || (slice_.empty() && !journald_logs_)) {
        return placement_.value_or(DockerPlacement{});
    }
    json info;
    try {
        info = client_->info();
    } catch (const std::exception& e) {
        spdlog::debug("docker: cannot ask the engine for its cgroup driver and log drivers: {}",
                      e.what());
        return {};
    }
    DockerPlacement p;
    p.cgroup_driver = info.value("CgroupDriver", "");
    if (!slice_.empty()) {
        p.cgroup_parent = docker_cgroup_parent(p.cgroup_driver, slice_);
        if (p.cgroup_parent.empty()) {
            spdlog::warn(
                "docker: cgroup driver \"{}\": containers stay in the engine's cgroups, "
                "not in {}",
                p.cgroup_driver, slice_);
        }
    }
    if (journald_logs_) {
        auto drivers = info.value("Plugins", json::object()).value("Log", json::array());
        p.journald = std::find(drivers.begin(), drivers.end(), "journald") != drivers.end();
        if (!p.journald) {
            spdlog::info(
                "docker: the engine has no journald log driver: container output stays "
                "in the engine's logs");
        }
    }
    spdlog::debug("docker: cgroup driver {}, cgroup parent \"{}\", journald logs {}",
                  p.cgroup_driver, p.cgroup_parent, p.journald);
    placement_ = p;
    return p;
}

void DockerBackend::ensure_watching() {
    watcher_->ensure_started();
    if (watcher_->wait_connected(std::chrono::milliseconds(0))) {
        return;
    }
    try {
        client_->ping();
    } catch (const EngineUnreachable& e) {
        throw SandboxError(503, unreachable_text(socket_path_, e.what()));
    } catch (const EngineError& e) {
        throw SandboxError(503, unreachable_text(socket_path_, e.what()));
    }
    if (!watcher_->wait_connected(kSubscribeTimeout)) {
        throw SandboxError(503,
                           "docker engine at " + socket_path_ +
                               " does not deliver container events: " + watcher_->last_error());
    }
}

std::string DockerBackend::callback_host() {
    std::lock_guard lock(gateway_mutex_);
    if (gateway_.empty()) {
        try {
            gateway_ = client_->network_gateway("bridge");
        } catch (const EngineUnreachable& e) {
            throw SandboxError(503, unreachable_text(socket_path_, e.what()));
        } catch (const EngineError& e) {
            throw SandboxError(502,
                               "cannot find the callback address on docker network "
                               "\"bridge\": " +
                                   std::string(e.what()));
        }
        spdlog::debug("docker: containers call back to {}:{}", gateway_, callback_port_);
    }
    return gateway_;
}

// A container reports the gateway it really got; later starts use it if it differs.
void DockerBackend::note_gateway(const std::string& gateway) {
    std::lock_guard lock(gateway_mutex_);
    if (!gateway.empty() && gateway != gateway_) {
        spdlog::warn("docker: bridge gateway is {}, not {}; using it for later callbacks", gateway,
                     gateway_);
        gateway_ = gateway;
    }
}

std::unique_ptr<Instance> DockerBackend::start(const InstanceContext& ctx) {
    const FunctionSpec& spec = *ctx.spec;
    if (!spec.is_container()) {
        throw SandboxError(500, "function \"" + spec.name + "\" is not a container function");
    }
    const ContainerSpec& container = spec.container();
    auto begin = Clock::now();

    ensure_watching();
    DockerPlacement where = placement();
    std::string url =
        "http://" + callback_host() + ":" + std::to_string(callback_port_) + ctx.callback_path;
    std::string name = "unifaas-" + spec.name + "-" + ctx.instance_id;
    std::string id = engine_call(socket_path_, container, [&] {
        // An engine that stops while creating may have made the container without our learning
        // its id: remove it by name once the engine is back (after the next resubscription).
        try {
            return client_->create_container(name, container_config(ctx, url, where));
        } catch (const docker::EngineUnreachable&) {
            watcher_->remove_later(name);
            throw;
        } catch (const docker::EngineError& e) {
            if (e.status() >= 500) {
                watcher_->remove_later(name);
            }
            throw;
        }
    });
    ContainerGuard guard(*client_, *watcher_, id);
    watcher_->watch(id, ctx.on_exit);
    auto created = Clock::now();

    engine_call(socket_path_, container, [&] { client_->start_container(id); });
    auto info =
        engine_call(socket_path_, container, [&] { return client_->inspect_container(id); });
    if (!info.state.running) {
        throw exited_before_ready(*client_, id, info.state.exit_code);
    }
    if (auto status = watcher_->finish_start(id)) {
        throw exited_before_ready(*client_, id, *status);
    }
    if (info.ip.empty()) {
        throw SandboxError(502, "container " + id.substr(0, 12) + " got no IP address");
    }
    note_gateway(info.gateway);
    guard.release();

    spdlog::debug("docker: {} instance {}: container {} at {} (create {:.1f} ms, start {:.1f} ms)",
                  spec.name, ctx.instance_id, id.substr(0, 12), info.ip,
                  std::chrono::duration<double, std::milli>(created - begin).count(),
                  ms_since(created));
    return std::make_unique<DockerInstance>(
        client_, watcher_, id, info.ip, spec.port,
        docker_container_unit(where.cgroup_driver, where.cgroup_parent, id));
}

unsigned DockerBackend::remove_leftovers() {
    std::vector<docker::ContainerSummary> containers;
    try {
        containers = client_->list_containers(docker::kInstanceLabel);
    } catch (const std::exception& e) {
        spdlog::warn("docker: cannot list leftover containers at {}: {}", socket_path_, e.what());
        return 0;
    }
    unsigned removed = 0;
    for (const auto& container : containers) {
        if (watcher_->follows(container.id)) {
            continue;  // one of ours, alive
        }
        try {
            if (client_->remove_container(container.id)) {
                ++removed;
                spdlog::info("docker: removed leftover container {} ({})", container.name,
                             container.id.substr(0, 12));
            }
        } catch (const std::exception& e) {
            spdlog::warn("docker: cannot remove leftover container {}: {}", container.name,
                         e.what());
        }
    }
    return removed;
}

}  // namespace unifaas
