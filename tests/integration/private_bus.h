// PrivateBus: a dbus-daemon of the test's own, configured like the system bus (type system,
// EXTERNAL auth, the stock default policy) on a unix socket in a temporary directory, with the
// repository's dbus/org.unifaas.conf included so that the real policy is what gets tested.
// Stopped (and its directory removed) by the destructor. Needs root only to be useful to other
// users (the directory is made reachable for `nobody`).
#pragma once

#include <sys/types.h>

#include <filesystem>
#include <string>
#include <vector>

namespace unifaas::test {

class PrivateBus {
  public:
    PrivateBus();  // throws std::runtime_error with dbus-daemon's output
    ~PrivateBus();
    PrivateBus(const PrivateBus&) = delete;
    PrivateBus& operator=(const PrivateBus&) = delete;

    // "unix:path=/tmp/unifaas-bus-XXXXXX/system_bus_socket"
    const std::string& address() const { return address_; }
    pid_t pid() const { return pid_; }

  private:
    void write_config(const std::filesystem::path& file) const;
    void stop() noexcept;

    std::filesystem::path dir_;
    std::string address_;
    pid_t pid_ = -1;
};

struct CommandResult {
    int status = -1;  // exit status, or -signal
    std::string out;
    std::string err;
};

// Runs argv[0] (searched in PATH) with stdin from /dev/null; waits for it and returns its exit
// status and output.
CommandResult run_command(const std::vector<std::string>& argv);

}  // namespace unifaas::test
