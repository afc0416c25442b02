// ChildProcess: a hypervisor process (qemu, firecracker) owned by an instance; ExitWatcher: one
// epoll thread that notices any watched child's exit at once through its pidfd (no polling).
#pragma once

#include <sys/types.h>

#include <condition_variable>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

namespace unifaas {

class ChildProcess {
  public:
    // Starts argv[0] (a path, or a name looked up in PATH) with stdout and stderr appended to
    // `output`, stdin from /dev/null, in a new session. The child is killed if the daemon dies
    // (PR_SET_PDEATHSIG), so a crash leaves no hypervisor running. Throws std::system_error
    // naming argv[0].
    // `extra_env` ("NAME=value") is added to the daemon's environment.
    ChildProcess(const std::vector<std::string>& argv, const std::filesystem::path& output,
                 const std::vector<std::string>& extra_env = {});
    ~ChildProcess();  // SIGKILL if still running, then reaps
    ChildProcess(const ChildProcess&) = delete;
    ChildProcess& operator=(const ChildProcess&) = delete;

    pid_t pid() const { return pid_; }
    int pidfd() const { return pidfd_; }
    void signal(int sig) const;
    // Human description of how it ended ("exited with status 1", "killed by signal 9"), without
    // reaping; empty while it runs.
    std::string exit_description() const;

  private:
    pid_t pid_ = -1;
    int pidfd_ = -1;
};

class ExitWatcher {
  public:
    using Id = std::uint64_t;

    ExitWatcher();
    ~ExitWatcher();
    ExitWatcher(const ExitWatcher&) = delete;
    ExitWatcher& operator=(const ExitWatcher&) = delete;

    // Calls on_exit once, on the watcher's thread, when the process behind pidfd exits.
    Id watch(int pidfd, std::function<void()> on_exit);
    // After unwatch() returns, on_exit is neither running nor will it run.
    void unwatch(Id id);

  private:
    void run();

    int epoll_fd_ = -1;
    int wake_fd_ = -1;  // eventfd: stop
    std::mutex mu_;
    std::condition_variable idle_;
    Id next_id_ = 1;
    Id running_ = 0;  // id whose callback runs now
    std::unordered_map<Id, std::pair<int, std::function<void()>>> watches_;
    std::thread thread_;
};

// The full path of an executable: `name` itself when it contains a '/', else its PATH match.
// Empty when not found or not executable.
std::string find_executable(const std::string& name);

}  // namespace unifaas
