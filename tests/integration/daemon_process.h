// DaemonProcess: runs the real unifaas binary for a test, the way systemd would: listening
// sockets passed with LISTEN_FDS (http + callback), readiness awaited on NOTIFY_SOCKET.
#pragma once

#include <httplib.h>
#include <sys/types.h>

#include <chrono>
#include <filesystem>
#include <string>
#include <vector>

namespace unifaas::test {

class DaemonProcess {
  public:
    struct Options {
        std::filesystem::path registry;
        std::string docker_socket;
        std::string extra_config;  // appended to the generated unifaas.toml
        std::vector<std::string> extra_args;
        std::chrono::seconds ready_timeout{60};
        // A listening socket for invocations made by the test (e.g. in another network
        // namespace); the daemon gets a dup of it. -1: one on 127.0.0.1 is made here.
        int http_fd = -1;
        // runtime-dir; "" = a fresh one removed with the process (a restart test passes the
        // same directory twice).
        std::filesystem::path runtime_dir;
    };

    explicit DaemonProcess(Options options);  // starts and waits for READY=1; throws with the log
    ~DaemonProcess();                         // SIGTERM and wait, if still running
    DaemonProcess(const DaemonProcess&) = delete;
    DaemonProcess& operator=(const DaemonProcess&) = delete;

    pid_t pid() const { return pid_; }
    int http_port() const { return http_port_; }
    int callback_port() const { return callback_port_; }
    httplib::Client client(std::chrono::seconds read_timeout = std::chrono::seconds(60)) const;

    // Sends SIGTERM and waits (up to `timeout`); returns the exit status (or -signal).
    int terminate(std::chrono::seconds timeout = std::chrono::seconds(60));
    // SIGKILL, as a crash would.
    void kill9();
    bool running() const { return pid_ > 0; }
    std::string log() const;
    // The daemon's runtime-dir (instances' working files live under it).
    std::filesystem::path runtime_dir() const {
        return options_.runtime_dir.empty() ? dir_ / "run" : options_.runtime_dir;
    }
    std::filesystem::path config_file() const { return dir_ / "unifaas.toml"; }

  private:
    int wait_exit(std::chrono::seconds timeout);

    Options options_;
    std::filesystem::path dir_;
    pid_t pid_ = -1;
    int http_port_ = 0;
    int callback_port_ = 0;
};

// Binds a TCP listener on addr:0; returns {fd, port}.
std::pair<int, int> listen_ephemeral(const std::string& addr);

}  // namespace unifaas::test
