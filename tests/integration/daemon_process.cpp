#include "daemon_process.h"

#include "gateway/listening_server.h"
#include "util/unique_fd.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <system_error>
#include <thread>

namespace unifaas::test {

namespace fs = std::filesystem;

namespace {

[[noreturn]] void fail(const std::string& what) {
    throw std::system_error(errno, std::generic_category(), what);
}

// A datagram socket the daemon reports READY=1 to (sd_notify protocol).
int notify_socket(const fs::path& path) {
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        fail("socket");
    }
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
    if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
        fail("bind " + path.string());
    }
    return fd;
}

// Formats n into buf without allocating (used between fork and exec).
void format_pid(char* buf, pid_t n) {
    char tmp[16];
    int i = 0;
    do {
        tmp[i++] = static_cast<char>('0' + n % 10);
        n /= 10;
    } while (n > 0);
    while (i > 0) {
        *buf++ = tmp[--i];
    }
    *buf = '\0';
}

}  // namespace

std::pair<int, int> listen_ephemeral(const std::string& addr) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        fail("socket");
    }
    sockaddr_in sin{};
    sin.sin_family = AF_INET;
    inet_pton(AF_INET, addr.c_str(), &sin.sin_addr);
    if (bind(fd, reinterpret_cast<sockaddr*>(&sin), sizeof(sin)) != 0 || listen(fd, 128) != 0) {
        fail("listen " + addr);
    }
    socklen_t len = sizeof(sin);
    getsockname(fd, reinterpret_cast<sockaddr*>(&sin), &len);
    return {fd, ntohs(sin.sin_port)};
}

DaemonProcess::DaemonProcess(Options options) : options_(std::move(options)) {
    char tmpl[] = "/tmp/unifaas-daemon-XXXXXX";
    if (!mkdtemp(tmpl)) {
        fail("mkdtemp");
    }
    dir_ = tmpl;
    fs::create_directories(runtime_dir());
    {
        std::ofstream cfg(dir_ / "unifaas.toml");
        cfg << "registry = \"" << options_.registry.string() << "\"\n"
            << "docker-socket = \"" << options_.docker_socket << "\"\n"
            << "runtime-dir = \"" << runtime_dir().string() << "\"\n"
            << "shutdown-grace = 5\n"
            << options_.extra_config << "\n";
        // Tests stop daemons often; a test of draining sets its own delay.
        if (options_.extra_config.find("drain-delay") == std::string::npos) {
            cfg << "drain-delay = 0\n";
        }
    }
    auto [http_fd, http_port] = options_.http_fd >= 0
                                    ? std::pair{fcntl(options_.http_fd, F_DUPFD_CLOEXEC, 3),
                                                static_cast<int>(local_port(options_.http_fd))}
                                    : listen_ephemeral("127.0.0.1");
    auto [cb_fd, cb_port] = listen_ephemeral("0.0.0.0");
    UniqueFd http(http_fd), cb(cb_fd);
    http_port_ = http_port;
    callback_port_ = cb_port;
    UniqueFd notify(notify_socket(dir_ / "notify"));

    std::vector<std::string> args = {UNIFAAS_DAEMON_PATH, "--config",
                                     (dir_ / "unifaas.toml").string(), "--log-level", "debug"};
    args.insert(args.end(), options_.extra_args.begin(), options_.extra_args.end());
    std::vector<std::string> env_strings;
    for (char** e = environ; *e; ++e) {
        if (std::strncmp(*e, "LISTEN_", 7) != 0 && std::strncmp(*e, "NOTIFY_SOCKET=", 14) != 0) {
            env_strings.emplace_back(*e);
        }
    }
    env_strings.push_back("LISTEN_FDS=2");
    env_strings.push_back("LISTEN_FDNAMES=http:callback");
    env_strings.push_back("NOTIFY_SOCKET=" + (dir_ / "notify").string());
    env_strings.push_back("LISTEN_PID=0000000000000000");  // filled in by the child
    std::vector<char*> argv, envp;
    for (auto& a : args) {
        argv.push_back(a.data());
    }
    argv.push_back(nullptr);
    for (auto& e : env_strings) {
        envp.push_back(e.data());
    }
    envp.push_back(nullptr);
    char* listen_pid = env_strings.back().data() + std::strlen("LISTEN_PID=");
    std::string log_path = (dir_ / "daemon.log").string();

    pid_ = fork();
    if (pid_ < 0) {
        fail("fork");
    }
    if (pid_ == 0) {
        int log = open(log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        dup2(log, 1);
        dup2(log, 2);
        dup2(http.get(), 3);
        dup2(cb.get(), 4);
        format_pid(listen_pid, getpid());
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, nullptr);
        execve(argv[0], argv.data(), envp.data());
        _exit(127);
    }

    // Wait for READY=1 or the daemon's exit, whichever comes first.
    UniqueFd exited(static_cast<int>(syscall(SYS_pidfd_open, pid_, 0)));
    auto deadline = std::chrono::steady_clock::now() + options_.ready_timeout;
    for (;;) {
        auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
            deadline - std::chrono::steady_clock::now());
        pollfd p[2] = {{notify.get(), POLLIN, 0}, {exited.get(), POLLIN, 0}};
        if (left.count() <= 0 || poll(p, 2, static_cast<int>(left.count())) == 0) {
            std::string log = this->log();
            kill9();
            throw std::runtime_error("daemon not ready in time; log:\n" + log);
        }
        if (p[1].revents) {
            wait_exit(std::chrono::seconds(1));
            throw std::runtime_error("daemon exited before ready; log:\n" + log());
        }
        char buf[4096];
        ssize_t len = recv(notify.get(), buf, sizeof(buf) - 1, 0);
        if (len > 0) {
            buf[len] = '\0';
            if (std::strstr(buf, "READY=1")) {
                return;
            }
        }
    }
}

DaemonProcess::~DaemonProcess() {
    if (pid_ > 0) {
        terminate();
    }
    std::error_code ec;
    fs::remove_all(dir_, ec);
}

httplib::Client DaemonProcess::client(std::chrono::seconds read_timeout) const {
    httplib::Client c("127.0.0.1", http_port_);
    c.set_read_timeout(read_timeout);
    c.set_keep_alive(true);
    return c;
}

int DaemonProcess::wait_exit(std::chrono::seconds timeout) {
    // waitpid has no timeout: a watchdog thread kills the daemon if it overstays.
    std::mutex mu;
    std::condition_variable cv;
    bool done = false;
    pid_t pid = pid_;
    std::thread watchdog([&] {
        std::unique_lock lk(mu);
        if (!cv.wait_for(lk, timeout, [&] { return done; })) {
            ::kill(pid, SIGKILL);
        }
    });
    int status = 0;
    waitpid(pid, &status, 0);
    {
        std::lock_guard lk(mu);
        done = true;
    }
    cv.notify_all();
    watchdog.join();
    pid_ = -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status);
}

int DaemonProcess::terminate(std::chrono::seconds timeout) {
    if (pid_ <= 0) {
        return -1;
    }
    ::kill(pid_, SIGTERM);
    return wait_exit(timeout);
}

void DaemonProcess::kill9() {
    if (pid_ <= 0) {
        return;
    }
    ::kill(pid_, SIGKILL);
    wait_exit(std::chrono::seconds(10));
}

std::string DaemonProcess::log() const {
    std::ifstream in(dir_ / "daemon.log");
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

}  // namespace unifaas::test
