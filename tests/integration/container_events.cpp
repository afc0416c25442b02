#include "container_events.h"

#include <algorithm>

namespace unifaas::test {

ContainerEvents::ContainerEvents(const std::string& socket_path)
    : stream_(socket_path, {{"type", {"container"}}, {"label", {"unifaas.instance"}}}) {
    thread_ = std::thread([this] {
        try {
            stream_.run(
                "",
                [this] {
                    std::lock_guard lk(mu_);
                    connected_ = true;
                    cv_.notify_all();
                },
                [this](const nlohmann::json& event) {
                    std::lock_guard lk(mu_);
                    actions_.push_back(event.value("Action", event.value("status", "")));
                    cv_.notify_all();
                });
        } catch (const std::exception&) {
        }
        std::lock_guard lk(mu_);
        connected_ = true;  // never leave the constructor waiting
        cv_.notify_all();
    });
    std::unique_lock lk(mu_);
    cv_.wait_for(lk, std::chrono::seconds(10), [this] { return connected_; });
}

ContainerEvents::~ContainerEvents() {
    stream_.cancel();
    thread_.join();
}

std::size_t ContainerEvents::count(const std::string& action) {
    std::lock_guard lk(mu_);
    return static_cast<std::size_t>(std::count(actions_.begin(), actions_.end(), action));
}

bool ContainerEvents::wait_for(const std::string& action, std::size_t count,
                               std::chrono::milliseconds timeout) {
    std::unique_lock lk(mu_);
    return cv_.wait_for(lk, timeout, [&] {
        return static_cast<std::size_t>(std::count(actions_.begin(), actions_.end(), action)) >=
               count;
    });
}

}  // namespace unifaas::test
