// Readiness: maps unguessable callback tokens to booting instances. An instance announces it is
// ready with GET/POST /ready/<token> from its own address; anything else is refused and changes
// nothing.
#pragma once

#include <chrono>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <string>
#include <unordered_map>

#include "sandbox/vm_common.h"

namespace unifaas {

class Readiness : public CallbackRegistry {
  public:
    enum class Outcome { Ready, UnknownToken, WrongSource };

    // A new token (128 random bits, hex) for an instance whose address is not yet known.
    std::string issue() override;
    // The instance's address is known: a callback from it runs on_ready once.
    void expect(const std::string& token, std::string address,
                std::function<void()> on_ready) override;
    // The instance is gone; its token stops working.
    void forget(const std::string& token) override;

    // A callback arrived from `source`. When it comes before the backend knows the instance's
    // address (a container may call back before inspect returns), waits up to `wait` for it.
    Outcome signal(const std::string& token, const std::string& source,
                   std::chrono::milliseconds wait);

    std::size_t pending() const;

  private:
    struct Entry {
        std::string address;  // empty until expect()
        std::function<void()> on_ready;
    };

    mutable std::mutex mu_;
    std::condition_variable cv_;
    std::unordered_map<std::string, Entry> entries_;
};

}  // namespace unifaas
