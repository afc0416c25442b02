#include "sandbox/child_process.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <condition_variable>
#include <cstring>
#include <system_error>
#include <utility>

namespace unifaas {

namespace {

[[noreturn]] void throw_errno(const std::string& what) {
    throw std::system_error(errno, std::generic_category(), what);
}

int pidfd_open(pid_t pid) {
    return static_cast<int>(syscall(SYS_pidfd_open, pid, 0));
}

}  // namespace

std::string find_executable(const std::string& name) {
    if (name.empty()) {
        return {};
    }
    if (name.find('/') != std::string::npos) {
        return access(name.c_str(), X_OK) == 0 ? name : std::string();
    }
    const char* path = getenv("PATH");
    std::string dirs = path ? path : "/usr/local/bin:/usr/bin:/bin";
    std::size_t start = 0;
    while (start <= dirs.size()) {
        std::size_t end = dirs.find(':', start);
        if (end == std::string::npos) {
            end = dirs.size();
        }
        std::string candidate = dirs.substr(start, end - start) + "/" + name;
        if (end > start && access(candidate.c_str(), X_OK) == 0) {
            return candidate;
        }
        start = end + 1;
    }
    return {};
}

ChildProcess::ChildProcess(const std::vector<std::string>& argv,
                           const std::filesystem::path& output,
                           const std::vector<std::string>& extra_env, bool held,
                           const std::filesystem::path& cwd) {
    std::string exe = find_executable(argv.at(0));
    exe_ = exe;
    if (exe.empty()) {
        errno = ENOENT;
        throw_errno("cannot run " + argv[0]);
    }
    int out = open(output.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
    if (out < 0) {
        throw_errno("cannot open " + output.string());
    }
    std::vector<char*> args;
    for (const auto& a : argv) {
        args.push_back(const_cast<char*>(a.c_str()));
    }
    args.push_back(nullptr);
    std::vector<std::string> env_strings;
    for (char** e = environ; *e; ++e) {
        env_strings.emplace_back(*e);
    }
    env_strings.insert(env_strings.end(), extra_env.begin(), extra_env.end());
    std::vector<char*> envp;
    for (auto& e : env_strings) {
        envp.push_back(e.data());
    }
    envp.push_back(nullptr);
    // Errors between fork and exec come back through a CLOEXEC pipe.
    int pipefd[2];
    if (pipe2(pipefd, O_CLOEXEC) != 0) {
        close(out);
        throw_errno("pipe");
    }
    int gate[2] = {-1, -1};
    if (held && pipe2(gate, O_CLOEXEC) != 0) {
        close(out);
        close(pipefd[0]);
        close(pipefd[1]);
        throw_errno("pipe");
    }
    pid_t parent = getpid();
    pid_ = fork();
    if (pid_ == 0) {
        int null = open("/dev/null", O_RDONLY);
        dup2(null, 0);
        dup2(out, 1);
        dup2(out, 2);
        setsid();
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent) {
            _exit(127);  // the daemon died before prctl()
        }
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, nullptr);
        ::signal(SIGPIPE, SIG_DFL);
        if (held) {
            close(gate[1]);
            char go = 0;
            if (read(gate[0], &go, 1) != 1) {
                _exit(127);  // the daemon gave up on this start
            }
        }
        if (cwd.empty() || chdir(cwd.c_str()) == 0) {
            execve(exe.c_str(), args.data(), envp.data());
        }
        int err = errno;
        (void)!write(pipefd[1], &err, sizeof(err));
        _exit(127);
    }
    int fork_errno = errno;
    close(out);
    close(pipefd[1]);
    if (held) {
        close(gate[0]);
        gate_fd_ = gate[1];
        if (pid_ < 0) {
            close(gate_fd_);
            gate_fd_ = -1;
        }
    }
    if (pid_ < 0) {
        close(pipefd[0]);
        errno = fork_errno;
        throw_errno("fork");
    }
    if (held) {
        // The exec result comes after release(); the pidfd is needed before.
        exec_pipe_ = pipefd[0];
    } else {
        check_exec(pipefd[0], exe);
    }
    open_pidfd();
}

void ChildProcess::release() {
    if (gate_fd_ < 0) {
        return;
    }
    char go = 1;
    (void)!write(gate_fd_, &go, 1);
    close(gate_fd_);
    gate_fd_ = -1;
    int exec_pipe = std::exchange(exec_pipe_, -1);
    check_exec(exec_pipe, exe_);
}

void ChildProcess::check_exec(int exec_pipe, const std::string& exe) {
    int exec_errno = 0;
    ssize_t n = read(exec_pipe, &exec_errno, sizeof(exec_errno));
    close(exec_pipe);
    if (n == sizeof(exec_errno)) {
        waitpid(pid_, nullptr, 0);
        pid_ = -1;
        errno = exec_errno;
        throw_errno("cannot run " + exe);
    }
}

void ChildProcess::open_pidfd() {
    pidfd_ = pidfd_open(pid_);
    if (pidfd_ < 0) {
        int err = errno;
        ::kill(pid_, SIGKILL);
        waitpid(pid_, nullptr, 0);
        pid_ = -1;
        errno = err;
        throw_errno("pidfd_open");
    }
}

ChildProcess::~ChildProcess() {
    if (gate_fd_ >= 0) {
        close(gate_fd_);  // a held child exits
    }
    if (exec_pipe_ >= 0) {
        close(exec_pipe_);
    }
    if (pid_ > 0) {
        ::kill(pid_, SIGKILL);
        while (waitpid(pid_, nullptr, 0) < 0 && errno == EINTR) {
        }
    }
    if (pidfd_ >= 0) {
        close(pidfd_);
    }
}

void ChildProcess::signal(int sig) const {
    if (pid_ > 0) {
        ::kill(pid_, sig);
    }
}

std::string ChildProcess::exit_description() const {
    siginfo_t info{};
    if (waitid(P_PID, static_cast<id_t>(pid_), &info, WEXITED | WNOHANG | WNOWAIT) != 0 ||
        info.si_pid == 0) {
        return {};
    }
    if (info.si_code == CLD_EXITED) {
        return "exited with status " + std::to_string(info.si_status);
    }
    return std::string("killed by signal ") + strsignal(info.si_status);
}

int ChildProcess::wait() {
    int status = 0;
    while (waitpid(pid_, &status, 0) < 0) {
        if (errno != EINTR) {
            throw_errno("waitpid");
        }
    }
    pid_ = -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

int run_command(const std::vector<std::string>& argv, const std::filesystem::path& output) {
    return ChildProcess(argv, output).wait();
}

ExitWatcher::ExitWatcher() {
    epoll_fd_ = epoll_create1(EPOLL_CLOEXEC);
    wake_fd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (epoll_fd_ < 0 || wake_fd_ < 0) {
        throw_errno("exit watcher");
    }
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = 0;
    epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, wake_fd_, &ev);
    thread_ = std::thread([this] { run(); });
}

ExitWatcher::~ExitWatcher() {
    std::uint64_t one = 1;
    (void)!write(wake_fd_, &one, sizeof(one));
    thread_.join();
    close(wake_fd_);
    close(epoll_fd_);
}

ExitWatcher::Id ExitWatcher::watch(int pidfd, std::function<void()> on_exit) {
    std::lock_guard lk(mu_);
    Id id = next_id_++;
    watches_.emplace(id, std::pair{pidfd, std::move(on_exit)});
    epoll_event ev{};
    ev.events = EPOLLIN | EPOLLONESHOT;
    ev.data.u64 = id;
    if (epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, pidfd, &ev) != 0) {
        watches_.erase(id);
        throw_errno("epoll_ctl");
    }
    return id;
}

void ExitWatcher::unwatch(Id id) {
    std::unique_lock lk(mu_);
    auto it = watches_.find(id);
    if (it != watches_.end()) {
        epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, it->second.first, nullptr);
        watches_.erase(it);
    }
    idle_.wait(lk, [&] { return running_ != id; });
}

void ExitWatcher::run() {
    for (;;) {
        epoll_event ev[16];
        int n = epoll_wait(epoll_fd_, ev, 16, -1);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            return;
        }
        for (int i = 0; i < n; ++i) {
            Id id = ev[i].data.u64;
            if (id == 0) {
                return;  // destructor
            }
            std::function<void()> fn;
            {
                std::lock_guard lk(mu_);
                auto it = watches_.find(id);
                if (it == watches_.end()) {
                    continue;
                }
                epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, it->second.first, nullptr);
                fn = std::move(it->second.second);
                watches_.erase(it);
                running_ = id;
            }
            fn();
            std::lock_guard lk(mu_);
            running_ = 0;
            idle_.notify_all();
        }
    }
}

}  // namespace unifaas
