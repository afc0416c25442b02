#include "sandbox/oci_shim.h"

#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <system_error>

#include <fmt/format.h>

namespace unifaas {

namespace fs = std::filesystem;

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

std::vector<std::string> shim_argv(const std::string& shim,
                                   const std::vector<std::string>& create_argv,
                                   const std::filesystem::path& pid_file) {
    std::vector<std::string> argv = {shim, pid_file.string(), "--"};
    argv.insert(argv.end(), create_argv.begin(), create_argv.end());
    return argv;
}

}  // namespace

OciShim::Channel OciShim::socket_pair() {
    int pair[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) != 0) {
        throw std::system_error(errno, std::generic_category(), "socketpair");
    }
    return Channel{UniqueFd(pair[0]), UniqueFd(pair[1])};
}

std::string oci_shim_executable() {
    std::error_code ec;
    fs::path dir = fs::read_symlink("/proc/self/exe", ec).parent_path();
    if (ec) {
        return {};
    }
    // Next to the daemon in a build tree; installed, in <prefix>/libexec/unifaas.
    for (const fs::path& candidate :
         {dir / kOciShimName, dir.parent_path() / "libexec" / "unifaas" / kOciShimName}) {
        if (::access(candidate.c_str(), X_OK) == 0) {
            return candidate.string();
        }
    }
    return {};
}

OciShim::OciShim(const std::string& shim, const std::vector<std::string>& create_argv,
                 const fs::path& pid_file, const fs::path& output)
    : child_(shim_argv(shim, create_argv, pid_file), output, {}, false, {}, channel_.theirs.get()) {
    channel_.theirs.reset();  // the shim has its copy (fd 3)
}

OciShim::~OciShim() = default;  // the shim is killed and reaped, then the channel closed

pid_t OciShim::read_pid() {
    std::string line;
    char c = 0;
    for (;;) {
        ssize_t n = ::read(channel_.ours.get(), &c, 1);
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
    if (::send(channel_.ours.get(), &go, 1, MSG_NOSIGNAL) != 1) {
        return 0;  // the shim ended
    }
    pid_t init = read_pid();
    channel_.ours.reset();
    return init;
}

}  // namespace unifaas
