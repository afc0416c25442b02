// LinkEvents: awaits network interfaces disappearing, from rtnetlink link notifications (no
// polling). Acts in the calling thread's network namespace.
#pragma once

#include <chrono>
#include <functional>
#include <string>
#include <vector>

namespace unifaas::test {

class LinkEvents {
  public:
    LinkEvents();  // subscribes before the action whose effect is awaited
    ~LinkEvents();
    LinkEvents(const LinkEvents&) = delete;
    LinkEvents& operator=(const LinkEvents&) = delete;

    // True once `name` does not exist (now, or after a deletion notification within timeout).
    bool wait_gone(const std::string& name, std::chrono::milliseconds timeout);
    // True once `name` exists (now, or after a creation notification within timeout).
    bool wait_exists(const std::string& name, std::chrono::milliseconds timeout);
    // True once `name` exists and is up (for a tap of the daemon's pool: persistent, addressed).
    bool wait_up(const std::string& name, std::chrono::milliseconds timeout);

  private:
    bool wait_for(const std::string& name, bool present, std::chrono::milliseconds timeout);
    bool wait_until(const std::function<bool()>& done, std::chrono::milliseconds timeout);
    int fd_;
};

// Interfaces of the calling thread's namespace whose name starts with `prefix`.
std::vector<std::string> interfaces_with_prefix(const std::string& prefix);

}  // namespace unifaas::test
