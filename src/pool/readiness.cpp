#include "pool/readiness.h"

#include "util/random.h"

namespace unifaas {

namespace {

// A callback through a dual-stack socket comes from "::ffff:10.100.0.2": compare as IPv4.
std::string_view without_v4_mapping(std::string_view address) {
    constexpr std::string_view kMapped = "::ffff:";
    if (address.size() > kMapped.size() && address.substr(0, kMapped.size()) == kMapped &&
        address.find('.') != std::string_view::npos) {
        address.remove_prefix(kMapped.size());
    }
    return address;
}

}  // namespace

std::string Readiness::issue() {
    std::string token = random_hex(16);
    std::lock_guard lk(mu_);
    entries_.emplace(token, Entry{});
    return token;
}

void Readiness::expect(const std::string& token, std::string address,
                       std::function<void()> on_ready) {
    {
        std::lock_guard lk(mu_);
        auto it = entries_.find(token);
        if (it == entries_.end()) {
            return;
        }
        it->second.address = std::move(address);
        it->second.on_ready = std::move(on_ready);
    }
    cv_.notify_all();
}

void Readiness::forget(const std::string& token) {
    {
        std::lock_guard lk(mu_);
        entries_.erase(token);
    }
    cv_.notify_all();
}

Readiness::Outcome Readiness::signal(const std::string& token, const std::string& source,
                                     std::chrono::milliseconds wait) {
    std::function<void()> on_ready;
    {
        std::unique_lock lk(mu_);
        auto known = [&] {
            auto it = entries_.find(token);
            return it == entries_.end() || !it->second.address.empty();
        };
        cv_.wait_for(lk, wait, known);
        auto it = entries_.find(token);
        if (it == entries_.end()) {
            return Outcome::UnknownToken;
        }
        if (it->second.address.empty() ||
            without_v4_mapping(it->second.address) != without_v4_mapping(source)) {
            return Outcome::WrongSource;
        }
        on_ready = std::move(it->second.on_ready);
        entries_.erase(it);
    }
    if (on_ready) {
        on_ready();
    }
    return Outcome::Ready;
}

std::size_t Readiness::pending() const {
    std::lock_guard lk(mu_);
    return entries_.size();
}

}  // namespace unifaas
