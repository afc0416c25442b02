#include "bus/bus_service.h"

#include <poll.h>
#include <spdlog/spdlog.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <stdexcept>
#include <system_error>

namespace unifaas {

namespace {

std::string system_bus_address() {
    const char* address = std::getenv("DBUS_SYSTEM_BUS_ADDRESS");
    return address && *address ? address : "unix:path=/run/dbus/system_bus_socket";
}

}  // namespace

BusService::BusService(Config config, FunctionTable& functions, Registry& registry,
                       Network* network, AccountingSource accounting, ReloadFn reload)
    : config_(std::move(config)),
      functions_(functions),
      registry_(registry),
      network_(network),
      accounting_(std::move(accounting)),
      reload_(std::move(reload)) {
    wake_fd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (wake_fd_ < 0) {
        throw std::system_error(errno, std::generic_category(), "eventfd");
    }
}

BusService::~BusService() {
    stop();
    if (drain_) {
        drain_->set_listener({});
    }
    close(wake_fd_);
}

void BusService::set_drain_switch(DrainSwitch* drain) {
    drain_ = drain;
    drain_->set_listener([this](NodeState) {
        draining_changed_ = true;
        wake();
    });
}

void BusService::start(ObserverRelay* events) {
    std::unique_ptr<sdbus::IConnection> connection;
    try {
        connection = sdbus::createSystemBusConnection();
    } catch (const sdbus::Error& e) {
        throw std::runtime_error("cannot connect to the system bus at " + system_bus_address() +
                                 ": " + e.getMessage());
    }
    start(std::move(connection), events);
}

void BusService::start(std::unique_ptr<sdbus::IConnection> connection, ObserverRelay* events) {
    if (connection_) {
        throw std::logic_error("BusService::start called twice");
    }
    try {
        publish(std::move(connection), events);
    } catch (...) {
        stop();
        throw;
    }
}

void BusService::publish(std::unique_ptr<sdbus::IConnection> connection, ObserverRelay* events) {
    connection_ = std::move(connection);
    manager_ = std::make_unique<ManagerObject>(
        *connection_,
        ManagerObject::Context{
            config_, functions_, registry_, network_, reload_, [this] { apply_events(true); },
            [this] { return static_cast<std::uint32_t>(instances_.size()); }, drain_});
    {
        std::lock_guard lk(mu_);
        accepting_ = true;
    }
    if (events) {
        relay_ = events;
        relay_->attach(this);
    }
    // Instances already live get their objects now; events queued since are applied after these
    // (a start seen twice updates the object, a stop removes it).
    for (const auto& pool : functions_.snapshot()) {
        for (const auto& inst : pool.instances) {
            add_instance(inst, false);
        }
    }
    try {
        connection_->requestName(kBusName);
    } catch (const sdbus::Error& e) {
        throw std::runtime_error(std::string("cannot own the name ") + kBusName +
                                 " on the system bus at " + system_bus_address() + ": " +
                                 e.getMessage());
    }
    name_owned_ = true;
    thread_ = std::thread([this] { run(); });
}

void BusService::stop() noexcept {
    if (relay_) {
        relay_->attach(nullptr);  // returns once no event is being forwarded to this
        relay_ = nullptr;
    }
    {
        std::lock_guard lk(mu_);
        accepting_ = false;  // what is queued still goes out (e.g. instances stopped at shutdown)
    }
    if (thread_.joinable()) {
        stopping_ = true;
        wake();
        thread_.join();
    }
    {
        std::lock_guard lk(mu_);
        lifecycle_.clear();
        changes_.clear();
    }
    if (name_owned_) {
        try {
            connection_->releaseName(kBusName);
        } catch (const std::exception& e) {
            spdlog::debug("D-Bus: releasing {}: {}", kBusName, e.what());
        }
        name_owned_ = false;
    }
    instances_.clear();
    manager_.reset();
    connection_.reset();
}

void BusService::run() {
    try {
        for (;;) {
            while (connection_->processPendingRequest()) {
            }
            bool stopping = stopping_;
            auto changes_wait = apply_events(stopping);
            if (stopping) {
                break;  // after the last events (stop() queues no more once it is set)
            }
            wait_for_work(changes_wait);
        }
    } catch (const std::exception& e) {
        spdlog::error("D-Bus interface stopped: {}", e.what());
    }
    std::lock_guard lk(mu_);
    accepting_ = false;
    lifecycle_.clear();
    changes_.clear();
}

// Sleeps until the bus has something (incoming messages, room for outgoing ones, a timeout), the
// pools queued events or the service is stopping.
void BusService::wait_for_work(std::optional<std::chrono::milliseconds> changes_due) {
    auto bus = connection_->getEventLoopPollData();
    pollfd fds[2] = {{bus.fd, bus.events, 0}, {wake_fd_, POLLIN, 0}};
    int timeout = bus.getPollTimeout();
    if (changes_due && (timeout < 0 || changes_due->count() < timeout)) {
        timeout = static_cast<int>(changes_due->count());
    }
    if (poll(fds, 2, timeout) < 0 && errno != EINTR) {
        throw std::system_error(errno, std::generic_category(), "poll");
    }
    if (fds[1].revents & POLLIN) {
        std::uint64_t count;
        [[maybe_unused]] auto n = read(wake_fd_, &count, sizeof(count));
    }
}

void BusService::wake() {
    std::uint64_t one = 1;
    [[maybe_unused]] auto n = write(wake_fd_, &one, sizeof(one));
}

void BusService::instance_started(const InstanceSnapshot& s) {
    queue_lifecycle(Lifecycle{true, s, {}});
}

void BusService::instance_stopped(const InstanceSnapshot& s, const std::string& reason) {
    queue_lifecycle(Lifecycle{false, s, reason});
}

void BusService::instance_changed(const InstanceSnapshot& s) {
    std::lock_guard lk(mu_);
    if (!accepting_) {
        return;
    }
    bool first = changes_.empty();  // later ones are published with it, when due
    changes_.insert_or_assign(s.id, s);
    if (first && !woken_) {
        woken_ = true;
        wake();
    }
}

void BusService::queue_lifecycle(Lifecycle event) {
    std::lock_guard lk(mu_);
    if (!accepting_) {
        return;
    }
    lifecycle_.push_back(std::move(event));
    if (!woken_) {
        woken_ = true;
        wake();
    }
}

std::optional<std::chrono::milliseconds> BusService::apply_events(bool all) {
    std::deque<Lifecycle> lifecycle;
    std::unordered_map<std::string, InstanceSnapshot> changes;
    std::optional<std::chrono::milliseconds> changes_wait;
    {
        std::lock_guard lk(mu_);
        lifecycle.swap(lifecycle_);
        woken_ = false;
        auto now = std::chrono::steady_clock::now();
        if (all || now >= changes_due_) {
            if (!changes_.empty()) {
                changes.swap(changes_);
                changes_due_ = now + kChangesInterval;
            }
        } else if (!changes_.empty()) {
            changes_wait = std::chrono::ceil<std::chrono::milliseconds>(changes_due_ - now);
        }
    }
    if (draining_changed_.exchange(false)) {
        manager_->draining_changed();
    }
    for (const auto& event : lifecycle) {
        if (event.started) {
            add_instance(event.snapshot, true);
        } else {
            remove_instance(event.snapshot, event.reason);
        }
    }
    // Newest state of each instance; instances stopped meanwhile have no object any more.
    for (const auto& [id, snapshot] : changes) {
        if (auto it = instances_.find(id); it != instances_.end()) {
            it->second->update(snapshot);
        }
    }
    return changes_wait;
}

void BusService::add_instance(const InstanceSnapshot& s, bool announce) {
    if (auto it = instances_.find(s.id); it != instances_.end()) {
        it->second->update(s);
        return;
    }
    if (!InstanceObject::valid_id(s.id)) {
        spdlog::warn("D-Bus: instance id \"{}\" is not 12 hex digits: no object for it", s.id);
        return;
    }
    instances_.emplace(s.id, std::make_unique<InstanceObject>(*connection_, s, accounting_));
    if (announce) {
        manager_->emitInstanceStarted(s.id, s.function, InstanceObject::path_for(s.id));
        manager_->instance_count_changed();
    }
}

void BusService::remove_instance(const InstanceSnapshot& s, const std::string& reason) {
    auto it = instances_.find(s.id);
    if (it == instances_.end()) {
        return;  // never published (started and stopped before the service ran)
    }
    instances_.erase(it);
    manager_->emitInstanceStopped(s.id, s.function, reason);
    manager_->instance_count_changed();
}

}  // namespace unifaas
