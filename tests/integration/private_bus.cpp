#include "private_bus.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <system_error>

namespace unifaas::test {

namespace fs = std::filesystem;

namespace {

[[noreturn]] void fail(const std::string& what) {
    throw std::system_error(errno, std::generic_category(), what);
}

// Reads both pipes until both are closed.
void drain(int out_fd, int err_fd, std::string& out, std::string& err) {
    pollfd fds[2] = {{out_fd, POLLIN, 0}, {err_fd, POLLIN, 0}};
    std::string* sinks[2] = {&out, &err};
    int open_fds = 2;
    while (open_fds > 0) {
        if (poll(fds, 2, -1) < 0) {
            if (errno == EINTR) {
                continue;
            }
            fail("poll");
        }
        for (int i = 0; i < 2; ++i) {
            if (fds[i].fd < 0 || fds[i].revents == 0) {
                continue;
            }
            char buf[4096];
            ssize_t n = read(fds[i].fd, buf, sizeof(buf));
            if (n > 0) {
                sinks[i]->append(buf, static_cast<std::size_t>(n));
            } else if (n == 0 || errno != EINTR) {
                close(fds[i].fd);
                fds[i].fd = -1;
                --open_fds;
            }
        }
    }
}

// Waits for a process that is not our child (dbus-daemon --fork reparents it) to exit.
bool wait_gone(pid_t pid, int timeout_ms) {
    int fd = static_cast<int>(syscall(SYS_pidfd_open, pid, 0));
    if (fd < 0) {
        return errno == ESRCH;
    }
    pollfd p{fd, POLLIN, 0};
    int r = poll(&p, 1, timeout_ms);
    close(fd);
    return r > 0;
}

}  // namespace

CommandResult run_command(const std::vector<std::string>& argv) {
    int out[2], err[2];
    if (pipe2(out, O_CLOEXEC) != 0 || pipe2(err, O_CLOEXEC) != 0) {
        fail("pipe2");
    }
    std::vector<char*> args;
    for (const auto& a : argv) {
        args.push_back(const_cast<char*>(a.c_str()));
    }
    args.push_back(nullptr);
    pid_t pid = fork();
    if (pid < 0) {
        fail("fork");
    }
    if (pid == 0) {
        int null = open("/dev/null", O_RDONLY);
        dup2(null, 0);
        dup2(out[1], 1);
        dup2(err[1], 2);
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, nullptr);
        execvp(args[0], args.data());
        _exit(127);
    }
    close(out[1]);
    close(err[1]);
    CommandResult result;
    drain(out[0], err[0], result.out, result.err);
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    result.status = WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status);
    return result;
}

PrivateBus::PrivateBus() {
    char tmpl[] = "/tmp/unifaas-bus-XXXXXX";
    if (!mkdtemp(tmpl)) {
        fail("mkdtemp");
    }
    dir_ = tmpl;
    chmod(dir_.c_str(), 0755);  // clients running as nobody reach the socket
    write_config(dir_ / "bus.conf");
    auto r = run_command({"dbus-daemon", "--config-file=" + (dir_ / "bus.conf").string(),
                          "--print-address=1", "--print-pid=1", "--fork"});
    std::istringstream lines(r.out);
    std::string address, pid;
    std::getline(lines, address);
    std::getline(lines, pid);
    if (r.status != 0 || address.empty() || pid.empty()) {
        fs::remove_all(dir_);
        throw std::runtime_error("dbus-daemon did not start (status " + std::to_string(r.status) +
                                 "): " + r.out + r.err);
    }
    pid_ = std::stoi(pid);
    address_ = address.substr(0, address.find(','));  // without ",guid=…"
}

PrivateBus::~PrivateBus() {
    stop();
}

void PrivateBus::stop() noexcept {
    if (pid_ > 0) {
        ::kill(pid_, SIGTERM);
        if (!wait_gone(pid_, 5000)) {
            ::kill(pid_, SIGKILL);
            wait_gone(pid_, 5000);
        }
        pid_ = -1;
    }
    std::error_code ec;
    fs::remove_all(dir_, ec);
}

void PrivateBus::write_config(const fs::path& file) const {
    std::ofstream conf(file);
    conf << R"(<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path=)"
         << (dir_ / "system_bus_socket").string() << R"(</listen>
  <auth>EXTERNAL</auth>
  <!-- The stock system bus's default policy: connect, talk to the bus, nothing else. -->
  <policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus.Introspectable"/>
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus.Properties"/>
    <deny send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"
          send_member="UpdateActivationEnvironment"/>
  </policy>
  <policy user="root">
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus.Monitoring"/>
  </policy>
  <!-- The policy under test, as installed to /usr/share/dbus-1/system.d. -->
  <include>)"
         << UNIFAAS_SOURCE_DIR << R"(/dbus/org.unifaas.conf</include>
</busconfig>
)";
    if (!conf) {
        throw std::runtime_error("cannot write " + file.string());
    }
}

}  // namespace unifaas::test
