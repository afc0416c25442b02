#include "systemd/notify.h"

#include <systemd/sd-daemon.h>
#include <time.h>

#include <algorithm>

#include <fmt/format.h>

namespace unifaas {

namespace {

std::string plural(unsigned n, const char* word) {
    return fmt::format("{} {}{}", n, word, n == 1 ? "" : "s");
}

bool booting(InstanceState state) {
    return state == InstanceState::Starting || state == InstanceState::Booting;
}

std::uint64_t monotonic_usec() {
    timespec ts{};
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return static_cast<std::uint64_t>(ts.tv_sec) * 1000000 +
           static_cast<std::uint64_t>(ts.tv_nsec) / 1000;
}

void sd_send(const std::string& message) {
    sd_notify(0, message.c_str());
}

}  // namespace

std::string format_status(const ServiceCounts& c) {
    std::string text = plural(c.functions, "function");
    if (c.broken > 0) {
        text += fmt::format(" ({} with errors)", c.broken);
    }
    text += ", " + plural(c.instances, "instance");
    if (c.booting > 0) {
        text += fmt::format(" ({} booting)", c.booting);
    }
    return text;
}

std::optional<std::chrono::microseconds> watchdog_interval() {
    std::uint64_t usec = 0;
    if (sd_watchdog_enabled(0, &usec) > 0 && usec > 0) {
        return std::chrono::microseconds(usec);
    }
    return std::nullopt;
}

ServiceNotifier::ServiceNotifier() : ServiceNotifier(&sd_send, watchdog_interval()) {}

ServiceNotifier::ServiceNotifier(Send send, std::optional<std::chrono::microseconds> watchdog)
    : send_(std::move(send)) {
    if (watchdog) {
        // Half the interval, as sd_watchdog_enabled(3) recommends.
        watchdog_every_ = std::max<Clock::duration>(*watchdog / 2, std::chrono::milliseconds(1));
        next_watchdog_ = Clock::now();
    }
    thread_ = std::thread([this] { run(); });
}

ServiceNotifier::~ServiceNotifier() {
    {
        std::lock_guard lock(mu_);
        stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
}

void ServiceNotifier::ready(unsigned functions, unsigned broken) {
    {
        std::lock_guard lock(mu_);
        functions_ = functions;
        broken_ = broken;
        announced_ = true;
    }
    send_with_status("READY=1\n");
}

void ServiceNotifier::reloading() {
    std::lock_guard sending(send_mu_);
    send_(fmt::format("RELOADING=1\nMONOTONIC_USEC={}\nSTATUS=reloading the registry",
                      monotonic_usec()));
}

void ServiceNotifier::reloaded(unsigned functions, unsigned broken) {
    ready(functions, broken);
}

void ServiceNotifier::stopping() {
    send_with_status("STOPPING=1\n");
}

// The status is read when the message goes out, under send_mu_: messages leave in the order
// they were made, so the last STATUS the manager sees is the current one.
void ServiceNotifier::send_with_status(const std::string& prefix) {
    std::lock_guard sending(send_mu_);
    std::string message;
    {
        std::lock_guard lock(mu_);
        dirty_ = false;
        next_status_ = Clock::now() + kStatusInterval;
        message = prefix + status_locked();
    }
    send_(message);
}

ServiceCounts ServiceNotifier::counts() const {
    std::lock_guard lock(mu_);
    return counts_locked();
}

void ServiceNotifier::instance_started(const InstanceSnapshot& s) {
    set_state(s.id, s.state);
}

void ServiceNotifier::instance_changed(const InstanceSnapshot& s) {
    set_state(s.id, s.state);
}

void ServiceNotifier::instance_stopped(const InstanceSnapshot& s, const std::string& /*reason*/) {
    bool changed;
    {
        std::lock_guard lock(mu_);
        changed = instances_.erase(s.id) > 0;
        dirty_ = dirty_ || changed;
    }
    if (changed) {
        cv_.notify_one();
    }
}

void ServiceNotifier::set_state(const std::string& id, InstanceState state) {
    if (state == InstanceState::Stopping) {
        return;  // instance_stopped follows
    }
    bool changed;
    {
        std::lock_guard lock(mu_);
        auto [it, inserted] = instances_.try_emplace(id, state);
        // Only what the STATUS line shows counts as a change (not slot use or requests).
        changed = inserted || booting(it->second) != booting(state);
        it->second = state;
        dirty_ = dirty_ || changed;
    }
    if (changed) {
        cv_.notify_one();
    }
}

ServiceCounts ServiceNotifier::counts_locked() const {
    ServiceCounts c;
    c.functions = functions_;
    c.broken = broken_;
    c.instances = static_cast<unsigned>(instances_.size());
    c.booting = static_cast<unsigned>(std::count_if(
        instances_.begin(), instances_.end(), [](const auto& kv) { return booting(kv.second); }));
    return c;
}

std::string ServiceNotifier::status_locked() const {
    return "STATUS=" + format_status(counts_locked());
}

// Sleeps until a watchdog ping is due or a status change may be sent (at most one per
// kStatusInterval); with neither, it waits for a change without any timeout.
void ServiceNotifier::run() {
    std::unique_lock lock(mu_);
    while (!stop_) {
        auto now = Clock::now();
        if (watchdog_every_ && now >= next_watchdog_) {
            next_watchdog_ = now + *watchdog_every_;
            lock.unlock();
            send_("WATCHDOG=1");
            lock.lock();
            continue;
        }
        if (dirty_ && announced_ && now >= next_status_) {
            lock.unlock();
            send_with_status("");
            lock.lock();
            continue;
        }
        std::optional<Clock::time_point> wake;
        if (watchdog_every_) {
            wake = next_watchdog_;
        }
        if (dirty_ && announced_) {
            wake = wake ? std::min(*wake, next_status_) : next_status_;
        }
        if (wake) {
            cv_.wait_until(lock, *wake);
        } else {
            cv_.wait(lock);
        }
    }
}

}  // namespace unifaas
