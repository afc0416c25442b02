#include "sandbox/oci_shim.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string_view>
#include <system_error>
#include <utility>

#include <fmt/format.h>

namespace unifaas {

namespace {

constexpr int kChannelFd = 3;  // the shim's end of the socket pair

// ---- the shim process -------------------------------------------------------------------------

[[noreturn]] void fail(const char* what) {
    std::fprintf(stderr, "unifaas oci shim: %s: %s\n", what, std::strerror(errno));
    _exit(125);
}

bool write_pid(int fd, pid_t pid) {
    char line[32];
    int n = std::snprintf(line, sizeof line, "%d\n", static_cast<int>(pid));
    return ::send(fd, line, static_cast<std::size_t>(n), MSG_NOSIGNAL) == n;
}

// Ends the shim as `status` (from waitpid) ended its child: the same exit code, or killed by
// the same signal. The shim is not dumpable, so a SIGSEGV or SIGABRT leaves no core of it.
[[noreturn]] void end_as(int status) {
    if (WIFEXITED(status)) {
        _exit(WEXITSTATUS(status));
    }
    int sig = WTERMSIG(status);
    struct sigaction dfl {};
    dfl.sa_handler = SIG_DFL;
    sigaction(sig, &dfl, nullptr);
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, sig);
    sigprocmask(SIG_UNBLOCK, &set, nullptr);
    ::kill(::getpid(), sig);
    _exit(128 + sig);  // a signal that does not end a process by default
}

pid_t wait_for(pid_t pid, int& status) {
    pid_t got;
    while ((got = ::waitpid(pid, &status, 0)) < 0 && errno == EINTR) {
    }
    return got;
}

// The held runtime: runs when the daemon has put it where it belongs (its scope).
[[noreturn]] void run_create(char** argv, int gate, pid_t shim) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    char go = 0;
    if (::getppid() != shim || ::read(gate, &go, 1) != 1) {
        _exit(125);  // the shim or the daemon gave up on this create
    }
    ::execv(argv[0], argv);
    std::fprintf(stderr, "unifaas oci shim: cannot run %s: %s\n", argv[0], std::strerror(errno));
    _exit(127);
}

pid_t read_pid_file(const char* path) {
    FILE* file = std::fopen(path, "re");
    if (file == nullptr) {
        return 0;
    }
    int pid = 0;
    if (std::fscanf(file, "%d", &pid) != 1) {
        pid = 0;
    }
    std::fclose(file);
    return pid;
}

}  // namespace

int oci_shim_main(int argc, char** argv) {
    if (argc < 5 || std::string_view(argv[3]) != "--" || fcntl(kChannelFd, F_GETFD) < 0) {
        std::fprintf(stderr,
                     "usage (the daemon's own): unifaas --oci-shim PID-FILE -- RUNTIME ARGS... "
                     "with a socket as fd 3\n");
        return 2;
    }
    const char* pid_file = argv[2];
    char** create_argv = argv + 4;
    // Only 0-2 and the channel are ours; the channel is not the runtime's.
    ::close_range(kChannelFd + 1, ~0U, 0);
    fcntl(kChannelFd, F_SETFD, FD_CLOEXEC);
    if (prctl(PR_SET_CHILD_SUBREAPER, 1) != 0 || prctl(PR_SET_DUMPABLE, 0) != 0) {
        fail("prctl");
    }
    int gate[2];
    if (::pipe2(gate, O_CLOEXEC) != 0) {
        fail("pipe");
    }
    pid_t shim = ::getpid();
    pid_t create = ::fork();
    if (create < 0) {
        fail("fork");
    }
    if (create == 0) {
        ::close(gate[1]);
        run_create(create_argv, gate[0], shim);
    }
    ::close(gate[0]);
    char go = 0;
    if (!write_pid(kChannelFd, create) || ::read(kChannelFd, &go, 1) != 1) {
        _exit(125);  // the daemon is gone or gave up: create never runs (its gate closes)
    }
    if (::write(gate[1], &go, 1) != 1) {
        fail("gate");
    }
    ::close(gate[1]);
    int status = 0;
    if (wait_for(create, status) != create) {
        fail("waitpid");
    }
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        end_as(status);  // create failed: its stderr is in the output already
    }
    pid_t init = read_pid_file(pid_file);
    siginfo_t info{};
    if (init <= 0 ||
        ::waitid(P_PID, static_cast<id_t>(init), &info, WEXITED | WNOHANG | WNOWAIT) != 0) {
        std::fprintf(stderr, "unifaas oci shim: the container's init (pid file %s) is not ours\n",
                     pid_file);
        _exit(125);
    }
    if (!write_pid(kChannelFd, init)) {
        _exit(125);
    }
    ::close(kChannelFd);
    for (;;) {
        pid_t got = wait_for(-1, status);
        if (got == init) {
            end_as(status);
        }
        if (got < 0) {
            fail("waitpid");  // ECHILD: the init was reaped by nobody else, cannot happen
        }
    }
}

// ---- the daemon's side ------------------------------------------------------------------------

std::string oci_exit_reason(int status, std::uint64_t memory_mib) {
    // A signal-killed container makes `crun run` exit with 128 + signal; a shim is killed by it.
    if (status == 128 + SIGKILL) {
        return fmt::format("killed by SIGKILL, most likely out of memory (limit {} MiB)",
                           memory_mib);
    }
    if (status > 128) {
        return fmt::format("killed by signal {} ({})", status - 128, strsignal(status - 128));
    }
    return fmt::format("exited with status {}", status);
}

std::string oci_exit_text(pid_t child, std::uint64_t memory_mib) {
    siginfo_t info{};
    if (child <= 0 ||
        ::waitid(P_PID, static_cast<id_t>(child), &info, WEXITED | WNOHANG | WNOWAIT) != 0 ||
        info.si_pid == 0) {
        return "exited";
    }
    if (info.si_code == CLD_EXITED) {
        return oci_exit_reason(info.si_status, memory_mib);
    }
    return oci_exit_reason(128 + info.si_status, memory_mib);
}

namespace {

std::vector<std::string> shim_argv(const std::vector<std::string>& create_argv,
                                   const std::filesystem::path& pid_file) {
    std::vector<std::string> argv = {"/proc/self/exe", kOciShimFlag, pid_file.string(), "--"};
    argv.insert(argv.end(), create_argv.begin(), create_argv.end());
    return argv;
}

}  // namespace

OciShim::Channel::Channel() {
    int pair[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) != 0) {
        throw std::system_error(errno, std::generic_category(), "socketpair");
    }
    ours = pair[0];
    theirs = pair[1];
}

OciShim::Channel::~Channel() {
    for (int fd : {ours, theirs}) {
        if (fd >= 0) {
            ::close(fd);
        }
    }
}

OciShim::OciShim(const std::vector<std::string>& create_argv, const std::filesystem::path& pid_file,
                 const std::filesystem::path& output)
    : child_(shim_argv(create_argv, pid_file), output, {}, false, {}, channel_.theirs) {
    ::close(std::exchange(channel_.theirs, -1));  // the shim has its copy (fd 3)
}

OciShim::~OciShim() = default;  // the shim is killed and reaped, then the channel closed

pid_t OciShim::read_pid() {
    std::string line;
    char c = 0;
    for (;;) {
        ssize_t n = ::read(channel_.ours, &c, 1);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n != 1) {
            return 0;  // the shim ended
        }
        if (c == '\n') {
            break;
        }
        line += c;
    }
    try {
        return static_cast<pid_t>(std::stoi(line));
    } catch (const std::exception&) {
        return 0;
    }
}

pid_t OciShim::create_pid() {
    return read_pid();
}

pid_t OciShim::run_create() {
    char go = 1;
    if (::send(channel_.ours, &go, 1, MSG_NOSIGNAL) != 1) {
        return 0;  // the shim ended
    }
    pid_t init = read_pid();
    ::close(std::exchange(channel_.ours, -1));
    return init;
}

}  // namespace unifaas
