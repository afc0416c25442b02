// A private system bus (dbus-daemon) and a stand-in for systemd's manager on it, for testing
// the daemon's D-Bus conversation with systemd without systemd as PID 1: it owns
// org.freedesktop.systemd1, answers StartTransientUnit / StopUnit / GetUnit the way systemd does
// (job object paths, JobRemoved signals after the reply, NoSuchUnit errors), exposes the
// org.freedesktop.systemd1.Scope accounting properties of its units and records what it was
// asked. It starts no scopes and moves no processes: the nspawn end-to-end test covers that.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <systemd/sd-bus.h>
#include <systemd/sd-event.h>

namespace unifaas::test {

// dbus-daemon with a system-bus configuration on a unix socket of its own where everything is
// allowed (unlike PrivateBus, whose stock policy would not let a test own systemd's name).
class PermissiveBus {
  public:
    PermissiveBus();  // throws std::runtime_error
    ~PermissiveBus();
    PermissiveBus(const PermissiveBus&) = delete;
    PermissiveBus& operator=(const PermissiveBus&) = delete;

    const std::string& address() const { return address_; }  // "unix:path=..."

  private:
    std::string dir_;
    std::string address_;
    pid_t pid_ = -1;
};

class FakeSystemd {
  public:
    struct StartCall {
        std::string unit;
        std::string mode;
        std::map<std::string, std::string> properties;  // "PIDs" -> "au:1234", "Slice" -> "s:.."
        std::string aux_signature;                      // of the 4th argument
        std::size_t aux_count = 0;
    };
    struct StopCall {
        std::string unit;
        std::string mode;
    };
    struct Behaviour {
        std::string job_result = "done";
        std::chrono::milliseconds job_delay{0};  // JobRemoved this long after the reply
        bool send_job_removed = true;
        bool job_removed_before_reply = false;
        std::uint64_t memory_current = 123456789;
        std::uint64_t cpu_usage_nsec = 987654321;
        std::uint64_t tasks_current = 7;
    };

    explicit FakeSystemd(const std::string& bus_address);
    FakeSystemd(const std::string& bus_address, Behaviour behaviour);
    ~FakeSystemd();
    FakeSystemd(const FakeSystemd&) = delete;
    FakeSystemd& operator=(const FakeSystemd&) = delete;

    std::vector<StartCall> starts() const;
    std::vector<StopCall> stops() const;
    std::vector<std::string> units() const;  // loaded now
    // Waits until `n` StopUnit calls arrived.
    bool wait_for_stops(std::size_t n, std::chrono::milliseconds timeout);
    // Drops a unit as systemd's garbage collection would (its scope became empty).
    void collect(const std::string& unit);

  private:
    struct Unit;
    static int start_transient_unit(sd_bus_message* m, void* userdata, sd_bus_error* error);
    static int stop_unit(sd_bus_message* m, void* userdata, sd_bus_error* error);
    static int get_unit(sd_bus_message* m, void* userdata, sd_bus_error* error);
    static int get_version(sd_bus* bus, const char* path, const char* interface,
                           const char* property, sd_bus_message* reply, void* userdata,
                           sd_bus_error* error);
    static int get_counter(sd_bus* bus, const char* path, const char* interface,
                           const char* property, sd_bus_message* reply, void* userdata,
                           sd_bus_error* error);
    void emit_job_removed(std::uint32_t id, const std::string& job, const std::string& unit,
                          const std::string& result);
    std::string new_job(std::string& path_out);

    Behaviour behaviour_;
    sd_event* event_ = nullptr;
    sd_bus* bus_ = nullptr;
    int stop_fd_ = -1;
    std::uint32_t next_job_ = 1;

    mutable std::mutex mu_;
    std::condition_variable cv_;
    std::vector<StartCall> starts_;
    std::vector<StopCall> stops_;
    std::map<std::string, std::unique_ptr<Unit>> units_;
    std::thread thread_;
};

}  // namespace unifaas::test
