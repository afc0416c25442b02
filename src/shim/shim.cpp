#include "shim/shim.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string_view>

namespace unifaas {

namespace {

constexpr int kChannelFd = 3;  // the shim's end of the socket pair

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
    if (argc < 4 || std::string_view(argv[2]) != "--" || fcntl(kChannelFd, F_GETFD) < 0) {
        std::fprintf(stderr,
                     "usage (the daemon's own): unifaas-oci-shim PID-FILE -- RUNTIME ARGS... "
                     "with a socket as fd 3\n");
        return 2;
    }
    const char* pid_file = argv[1];
    char** create_argv = argv + 3;
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
            fail("waitpid");  // ECHILD: no child left, impossible while the init lives
        }
    }
}

}  // namespace unifaas
