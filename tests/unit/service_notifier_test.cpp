// ServiceNotifier against a real NOTIFY_SOCKET (a datagram socket of the test, as systemd's):
// READY with STATUS, STATUS kept current and rate-limited, RELOADING with MONOTONIC_USEC,
// STOPPING, WATCHDOG=1 only when WATCHDOG_USEC/WATCHDOG_PID ask for it.
#include "systemd/notify.h"

#include <gtest/gtest.h>
#include <poll.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <vector>

namespace unifaas {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

// Sets variables for the test's duration and restores them.
class Env {
  public:
    void set(const char* name, const std::string& value) {
        remember(name);
        setenv(name, value.c_str(), 1);
    }
    void unset(const char* name) {
        remember(name);
        unsetenv(name);
    }
    ~Env() {
        for (auto& [name, old] : saved_) {
            if (old) {
                setenv(name.c_str(), old->c_str(), 1);
            } else {
                unsetenv(name.c_str());
            }
        }
    }

  private:
    void remember(const char* name) {
        const char* v = getenv(name);
        saved_.emplace_back(name, v ? std::optional<std::string>(v) : std::nullopt);
    }
    std::vector<std::pair<std::string, std::optional<std::string>>> saved_;
};

// The service manager's end: a datagram socket at $NOTIFY_SOCKET.
class NotifySocket {
  public:
    NotifySocket() {
        char tmpl[] = "/tmp/unifaas-notify-XXXXXX";
        dir_ = mkdtemp(tmpl);
        path_ = dir_ + "/notify";
        fd_ = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        sockaddr_un addr{};
        addr.sun_family = AF_UNIX;
        std::strncpy(addr.sun_path, path_.c_str(), sizeof(addr.sun_path) - 1);
        if (bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
            ADD_FAILURE() << "bind " << path_ << ": " << std::strerror(errno);
        }
        env_.set("NOTIFY_SOCKET", path_);
        env_.unset("WATCHDOG_USEC");
        env_.unset("WATCHDOG_PID");
    }
    ~NotifySocket() {
        close(fd_);
        std::filesystem::remove_all(dir_);
    }
    Env& env() { return env_; }

    // The next message, or nullopt after `timeout`.
    std::optional<std::string> next(std::chrono::milliseconds timeout = 3000ms) {
        pollfd p{fd_, POLLIN, 0};
        if (poll(&p, 1, static_cast<int>(timeout.count())) <= 0) {
            return std::nullopt;
        }
        char buf[4096];
        ssize_t n = recv(fd_, buf, sizeof(buf), 0);
        return n < 0 ? std::nullopt : std::optional<std::string>(std::string(buf, n));
    }

    // Messages until one equals `wanted` (that one included); fails after `timeout`.
    std::vector<std::string> until(const std::string& wanted,
                                   std::chrono::milliseconds timeout = 3000ms) {
        std::vector<std::string> seen;
        auto deadline = Clock::now() + timeout;
        while (Clock::now() < deadline) {
            auto m = next(
                std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()));
            if (!m) {
                break;
            }
            seen.push_back(*m);
            if (*m == wanted) {
                return seen;
            }
        }
        ADD_FAILURE() << "no message \"" << wanted << "\" within " << timeout.count() << " ms; got "
                      << seen.size();
        return seen;
    }

  private:
    Env env_;
    std::string dir_;
    std::string path_;
    int fd_ = -1;
};

InstanceSnapshot instance(const std::string& id, InstanceState state) {
    InstanceSnapshot s;
    s.id = id;
    s.function = "hello";
    s.state = state;
    return s;
}

TEST(ServiceNotifier, ReadyCarriesTheFirstStatus) {
    NotifySocket manager;
    ServiceNotifier notifier;
    notifier.ready(3, 1);
    EXPECT_EQ(manager.next(), "READY=1\nSTATUS=3 functions (1 with errors), 0 instances");
}

TEST(ServiceNotifier, StatusFollowsInstancesAtMostTwiceASecond) {
    NotifySocket manager;
    ServiceNotifier notifier;
    notifier.ready(1, 0);
    ASSERT_TRUE(manager.next());

    auto begin = Clock::now();
    for (int i = 0; i < 40; ++i) {
        notifier.instance_started(instance("id" + std::to_string(i), InstanceState::Starting));
    }
    auto seen = manager.until("STATUS=1 function, 40 instances (40 booting)");
    EXPECT_LE(seen.size(), 2u);  // the burst is merged
    EXPECT_GE(Clock::now() - begin, 400ms) << "sooner than the rate limit allows after READY";

    for (int i = 0; i < 40; ++i) {
        notifier.instance_changed(instance("id" + std::to_string(i), InstanceState::Booting));
    }
    // Starting -> Booting shows nothing new: no message.
    EXPECT_EQ(manager.next(700ms), std::nullopt);

    for (int i = 0; i < 40; ++i) {
        notifier.instance_changed(instance("id" + std::to_string(i), InstanceState::Ready));
    }
    manager.until("STATUS=1 function, 40 instances", 2000ms);  // no "(N booting)"
}

TEST(ServiceNotifier, StoppedInstancesLeaveTheCount) {
    NotifySocket manager;
    ServiceNotifier notifier;
    notifier.instance_started(instance("a", InstanceState::Starting));
    notifier.instance_started(instance("b", InstanceState::Starting));
    notifier.instance_changed(instance("b", InstanceState::Ready));
    notifier.ready(2, 0);
    EXPECT_EQ(manager.next(), "READY=1\nSTATUS=2 functions, 2 instances (1 booting)");
    notifier.instance_changed(instance("a", InstanceState::Stopping));
    notifier.instance_stopped(instance("a", InstanceState::Stopping), "boot timeout");
    EXPECT_EQ(manager.next(), "STATUS=2 functions, 1 instance");
    EXPECT_EQ(notifier.counts().instances, 1u);
}

TEST(ServiceNotifier, ReloadAndStop) {
    NotifySocket manager;
    ServiceNotifier notifier;
    notifier.ready(1, 0);
    ASSERT_TRUE(manager.next());

    timespec ts{};
    clock_gettime(CLOCK_MONOTONIC, &ts);
    std::uint64_t before = ts.tv_sec * 1000000ull + ts.tv_nsec / 1000;
    notifier.reloading();
    auto reloading = manager.next();
    ASSERT_TRUE(reloading);
    ASSERT_EQ(reloading->rfind("RELOADING=1\nMONOTONIC_USEC=", 0), 0u) << *reloading;
    std::uint64_t usec =
        std::stoull(reloading->substr(std::strlen("RELOADING=1\nMONOTONIC_USEC=")));
    EXPECT_GE(usec, before);
    EXPECT_LT(usec, before + 5000000);

    notifier.reloaded(2, 0);
    EXPECT_EQ(manager.next(), "READY=1\nSTATUS=2 functions, 0 instances");
    notifier.stopping();
    EXPECT_EQ(manager.next(), "STOPPING=1\nSTATUS=2 functions, 0 instances");
}

TEST(ServiceNotifier, NoWatchdogUnlessAsked) {
    NotifySocket manager;
    ServiceNotifier notifier;
    EXPECT_EQ(manager.next(500ms), std::nullopt);  // and nothing else while idle either
}

TEST(ServiceNotifier, WatchdogEveryHalfInterval) {
    NotifySocket manager;
    manager.env().set("WATCHDOG_USEC", "200000");
    manager.env().set("WATCHDOG_PID", std::to_string(getpid()));
    auto begin = Clock::now();
    {
        ServiceNotifier notifier;
        int pings = 0;
        while (Clock::now() - begin < 1000ms) {
            auto m = manager.next(300ms);
            ASSERT_TRUE(m) << "the watchdog went quiet";
            EXPECT_EQ(*m, "WATCHDOG=1");
            ++pings;
        }
        EXPECT_GE(pings, 6);  // every 100 ms (slack for a loaded machine)
        EXPECT_LE(pings, 13);
    }
    EXPECT_EQ(manager.next(300ms), std::nullopt);  // stopped with the notifier
}

TEST(ServiceNotifier, WatchdogForAnotherPidIsNotOurs) {
    NotifySocket manager;
    manager.env().set("WATCHDOG_USEC", "100000");
    manager.env().set("WATCHDOG_PID", std::to_string(getpid() + 1));
    ServiceNotifier notifier;
    EXPECT_EQ(manager.next(400ms), std::nullopt);
}

TEST(ServiceNotifier, WithoutNotifySocketNothingBreaks) {
    Env env;
    env.unset("NOTIFY_SOCKET");
    ServiceNotifier notifier;
    notifier.ready(1, 0);
    notifier.instance_started(instance("a", InstanceState::Starting));
    notifier.reloading();
    notifier.reloaded(1, 0);
    notifier.stopping();
    EXPECT_EQ(notifier.counts().instances, 1u);
}

}  // namespace
}  // namespace unifaas
