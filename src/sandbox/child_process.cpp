#include "sandbox/child_process.h"

#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <pthread.h>

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

namespace {

constexpr std::size_t kCloneStack = 64 * 1024;

// What the child needs until it has exec'd. The child shares the daemon's memory (CLONE_VM: no
// copy of the daemon's page tables, which made fork() + exec cost milliseconds per start), so
// all of it stays alive and unchanged until the exec result is known.
struct SpawnPlan {
    std::string exe;
    std::vector<std::string> arg_strings;
    std::vector<std::string> env_strings;
    std::vector<char*> args;
    std::vector<char*> envp;
    int out = -1;
    int null = -1;
    int exec_pipe = -1;  // write end, CLOEXEC: an exec error is written here
    int gate = -1;       // read end of the held child's gate, or -1
    std::string cwd;     // working directory before exec, or empty
    int pass = -1;       // becomes fd 3 (without CLOEXEC), or -1
    pid_t parent = 0;
    // The spawning thread runs SCHED_BATCH for itself (prefer_batch_scheduling): the child does
    // not.
    bool normal_scheduling = false;
};

// Runs in the child on its own stack with every signal blocked, and calls only system calls:
// nothing here may touch the daemon's heap or locks.
int spawn_child(void* arg) {
    auto* plan = static_cast<SpawnPlan*>(arg);
    // Handlers are the daemon's code: back to the default before anything is unblocked (exec
    // resets caught signals anyway; an ignored SIGPIPE would stay ignored).
    for (int sig = 1; sig < NSIG; ++sig) {
        struct sigaction sa {};
        // glibc's own signals (32, 33) are refused: skipped, so no call fails and writes errno,
        // which belongs to the daemon's thread here.
        bool reserved = sig >= 32 && sig < SIGRTMIN;
        if (sig == SIGKILL || sig == SIGSTOP || reserved || sigaction(sig, nullptr, &sa) != 0) {
            continue;
        }
        if (sa.sa_handler != SIG_DFL) {
            sa = {};
            sa.sa_handler = SIG_DFL;
            sigaction(sig, &sa, nullptr);
        }
    }
    dup2(plan->null, 0);
    dup2(plan->out, 1);
    dup2(plan->out, 2);
    if (plan->pass == 3) {
        fcntl(3, F_SETFD, 0);
    } else if (plan->pass >= 0) {
        dup2(plan->pass, 3);  // the copy has no CLOEXEC
    }
    if (plan->normal_scheduling) {
        sched_param param{};
        sched_setscheduler(0, SCHED_OTHER, &param);
    }
    setsid();
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != plan->parent) {
        _exit(127);  // the daemon died before prctl()
    }
    if (plan->gate >= 0) {
        char go = 0;
        if (read(plan->gate, &go, 1) != 1) {
            _exit(127);  // the daemon gave up on this start
        }
    }
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    if (plan->cwd.empty() || chdir(plan->cwd.c_str()) == 0) {
        execve(plan->exe.c_str(), plan->args.data(), plan->envp.data());
    }
    int err = errno;
    (void)!write(plan->exec_pipe, &err, sizeof(err));
    _exit(127);
}

}  // namespace

// The plan is read by the child at any time until its exec: once cloned, the parent changes
// nothing in it (closing its copies of the child's pipe ends leaves the numbers in place).
struct ChildProcess::Spawn {
    SpawnPlan plan;
    void* stack = MAP_FAILED;
    bool cloned = false;  // the parent has closed the child's ends (exec_pipe, gate) itself
    ~Spawn() {
        for (int fd : {plan.out, plan.null}) {
            if (fd >= 0) {
                close(fd);
            }
        }
        if (!cloned) {
            for (int fd : {plan.exec_pipe, plan.gate}) {
                if (fd >= 0) {
                    close(fd);
                }
            }
        }
        if (stack != MAP_FAILED) {
            munmap(stack, kCloneStack);
        }
    }
};

ChildProcess::ChildProcess(const std::vector<std::string>& argv,
                           const std::filesystem::path& output,
                           const std::vector<std::string>& extra_env, bool held,
                           const std::filesystem::path& cwd, int pass_fd)
    : spawn_(std::make_unique<Spawn>()) {
    SpawnPlan& plan = spawn_->plan;
    plan.cwd = cwd.string();
    plan.pass = pass_fd;
    plan.exe = find_executable(argv.at(0));
    exe_ = plan.exe;
    if (plan.exe.empty()) {
        errno = ENOENT;
        throw_errno("cannot run " + argv[0]);
    }
    plan.out = open(output.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
    if (plan.out < 0) {
        throw_errno("cannot open " + output.string());
    }
    plan.null = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (plan.null < 0) {
        throw_errno("cannot open /dev/null");
    }
    plan.arg_strings = argv;
    for (auto& a : plan.arg_strings) {
        plan.args.push_back(a.data());
    }
    plan.args.push_back(nullptr);
    for (char** e = environ; *e; ++e) {
        plan.env_strings.emplace_back(*e);
    }
    plan.env_strings.insert(plan.env_strings.end(), extra_env.begin(), extra_env.end());
    for (auto& e : plan.env_strings) {
        plan.envp.push_back(e.data());
    }
    plan.envp.push_back(nullptr);
    spawn_->stack = mmap(nullptr, kCloneStack, PROT_READ | PROT_WRITE,
                         MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
    if (spawn_->stack == MAP_FAILED) {
        throw_errno("mmap");
    }
    // Errors between clone and exec come back through a CLOEXEC pipe.
    int pipefd[2];
    if (pipe2(pipefd, O_CLOEXEC) != 0) {
        throw_errno("pipe");
    }
    plan.exec_pipe = pipefd[1];
    int exec_read = pipefd[0];
    int gate_write = -1;
    if (held) {
        int gate[2];
        if (pipe2(gate, O_CLOEXEC) != 0) {
            close(exec_read);
            throw_errno("pipe");
        }
        plan.gate = gate[0];
        gate_write = gate[1];
    }
    plan.parent = getpid();
    // SCHED_RESET_ON_FORK passes on no real-time policy but does pass on SCHED_BATCH.
    plan.normal_scheduling = sched_getscheduler(0) == (SCHED_BATCH | SCHED_RESET_ON_FORK);
    // Not held: CLONE_VFORK, this thread waits until the child has exec'd (or failed to). Held:
    // the child waits at its gate and this thread goes on; the plan stays until release().
    sigset_t all;
    sigset_t old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int flags = CLONE_VM | SIGCHLD | (held ? 0 : CLONE_VFORK);
    pid_ = clone(spawn_child, static_cast<char*>(spawn_->stack) + kCloneStack, flags, &plan);
    int clone_errno = errno;
    pthread_sigmask(SIG_SETMASK, &old, nullptr);
    if (pid_ < 0) {
        close(exec_read);
        if (gate_write >= 0) {
            close(gate_write);
        }
        errno = clone_errno;
        throw_errno("clone");
    }
    spawn_->cloned = true;
    close(plan.exec_pipe);
    if (held) {
        close(plan.gate);
        gate_fd_ = gate_write;
        exec_pipe_ = exec_read;  // the exec result comes after release()
    } else {
        check_exec(exec_read, plan.exe);
        spawn_.reset();
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
    spawn_.reset();  // exec'd (or failed): the child no longer uses the plan or its stack
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
    spawn_.reset();  // a held child that never exec'd is gone: its stack may go
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
