// ChildProcess: a hypervisor process (qemu, firecracker) owned by an instance; ExitWatcher: one
// epoll thread that notices any watched child's exit at once through its pidfd (no polling).
#pragma once

#include <sys/types.h>

#include <condition_variable>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
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
    // With `held`, the child waits before exec until release() (or the ChildProcess's end): the
    // caller can move it into a cgroup first, so nothing it forks starts outside.
    // A non-empty `cwd` is the child's working directory (relative paths it is given resolve
    // there). `pass_fd` (when >= 0) is the child's fd 3, inherited across exec (the caller
    // keeps and closes its own copy; every other descriptor is CLOEXEC).
    // The child is a clone sharing the daemon's memory until exec (as posix_spawn does, but
    // able to wait at the gate): starting it costs no copy of the daemon's page tables.
    ChildProcess(const std::vector<std::string>& argv, const std::filesystem::path& output,
                 const std::vector<std::string>& extra_env = {}, bool held = false,
                 const std::filesystem::path& cwd = {}, int pass_fd = -1);
    ~ChildProcess();  // SIGKILL if still running, then reaps
    ChildProcess(const ChildProcess&) = delete;
    ChildProcess& operator=(const ChildProcess&) = delete;

    pid_t pid() const { return pid_; }
    // Lets a held child exec.
    void release();
    int pidfd() const { return pidfd_; }
    void signal(int sig) const;
    // Human description of how it ended ("exited with status 1", "killed by signal 9"), without
    // reaping; empty while it runs.
    std::string exit_description() const;
    // Waits for the process to end and reaps it; returns its exit status, or 128 + the signal
    // that killed it.
    int wait();

  private:
    pid_t pid_ = -1;
    int pidfd_ = -1;
    int gate_fd_ = -1;    // write end of the held child's gate pipe
    int exec_pipe_ = -1;  // a held child's exec result, read at release()
    std::string exe_;
    struct Spawn;
    std::unique_ptr<Spawn> spawn_;  // until the child has exec'd: what it reads, its stack

    void check_exec(int exec_pipe, const std::string& exe);
    void open_pidfd();
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

// Runs a command to its end with stdout and stderr appended to `output`; returns its exit status
// (128 + signal when killed). Throws std::system_error when it cannot be started.
int run_command(const std::vector<std::string>& argv, const std::filesystem::path& output);

// The full path of an executable: `name` itself when it contains a '/', else its PATH match.
// Empty when not found or not executable.
std::string find_executable(const std::string& name);

}  // namespace unifaas
