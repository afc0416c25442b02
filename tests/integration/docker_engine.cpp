#include "docker_engine.h"

#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <spawn.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <deque>
#include <fstream>
#include <iostream>
#include <sstream>
#include <stdexcept>
#include <system_error>
#include <thread>

extern char** environ;

namespace unifaas::test {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

namespace {

constexpr const char* kNetnsPrefix = "unifaas-it-";

std::runtime_error errno_error(const std::string& what) {
    return std::runtime_error(what + ": " + std::strerror(errno));
}

// Runs a command to completion (stdout/stderr shared with the test); returns its exit status.
int run_command(const std::vector<std::string>& args) {
    std::vector<char*> argv;
    for (const auto& arg : args) {
        argv.push_back(const_cast<char*>(arg.c_str()));
    }
    argv.push_back(nullptr);
    pid_t pid = -1;
    int rc = posix_spawnp(&pid, argv[0], nullptr, nullptr, argv.data(), environ);
    if (rc != 0) {
        throw std::runtime_error("cannot run " + args[0] + ": " + std::strerror(rc));
    }
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

void must_run(const std::vector<std::string>& args) {
    if (int rc = run_command(args); rc != 0) {
        std::string line;
        for (const auto& arg : args) {
            line += (line.empty() ? "" : " ") + arg;
        }
        throw std::runtime_error("`" + line + "` failed with status " + std::to_string(rc));
    }
}

// Namespaces "unifaas-it-<pid>" whose process is gone were left by a crashed run.
void delete_stale_namespaces() {
    std::error_code ec;
    for (const auto& entry : fs::directory_iterator("/run/netns", ec)) {
        std::string name = entry.path().filename().string();
        if (name.rfind(kNetnsPrefix, 0) != 0) {
            continue;
        }
        pid_t pid = static_cast<pid_t>(std::atoi(name.c_str() + std::strlen(kNetnsPrefix)));
        if (pid > 0 && kill(pid, 0) != 0 && errno == ESRCH) {
            std::cerr << "docker_engine: deleting stale network namespace " << name << "\n";
            run_command({"ip", "netns", "del", name});
        }
    }
}

fs::path make_temp_dir() {
    std::string pattern = (fs::temp_directory_path() / "unifaas-it-XXXXXX").string();
    if (mkdtemp(pattern.data()) == nullptr) {
        throw errno_error("mkdtemp " + pattern);
    }
    return pattern;
}

void write_file(const fs::path& path, const std::string& text) {
    std::ofstream out(path);
    out << text;
    if (!out) {
        throw std::runtime_error("cannot write " + path.string());
    }
}

bool hugetlb_needs_v1_mount() {
    std::ifstream controllers("/sys/fs/cgroup/unified/cgroup.controllers");
    std::string word;
    while (controllers >> word) {
        if (word == "hugetlb") {
            return true;
        }
    }
    return false;
}

// Mounts left under `dir` once its dockerd is gone: a dockerd (20.10) stopped while it starts a
// container may exit with that container's overlay still mounted, and the next dockerd then fails
// to remove that container ("unlinkat .../merged: device or resource busy"; seen in the engine
// test that stops it mid-load). They are named on stderr and detached.
void unmount_leftovers(const fs::path& dir) {
    std::vector<std::string> mounts;
    std::ifstream in("/proc/self/mountinfo");
    std::string prefix = dir.string() + "/";
    for (std::string line; std::getline(in, line);) {
        std::istringstream fields(line);
        std::string id, parent, dev, root, point;
        fields >> id >> parent >> dev >> root >> point;
        if (point.rfind(prefix, 0) == 0) {
            mounts.push_back(point);
        }
    }
    std::sort(mounts.rbegin(), mounts.rend());  // deeper ones first
    for (const auto& point : mounts) {
        std::cerr << "docker_engine: dockerd left " << point << " mounted; detaching it\n";
        if (umount2(point.c_str(), MNT_DETACH) != 0) {
            std::cerr << "docker_engine: cannot unmount " << point << ": " << std::strerror(errno)
                      << "\n";
        }
    }
}

}  // namespace

PrivateDockerEngine::PrivateDockerEngine() : PrivateDockerEngine(Options{}) {}

PrivateDockerEngine::PrivateDockerEngine(Options options) : options_(std::move(options)) {
    if (options_.image_tarball.empty()) {
        options_.image_tarball = fs::path(UNIFAAS_BINARY_DIR) / "examples" / "hello-rootfs.tar";
    }
    netns_ = kNetnsPrefix + std::to_string(getpid());
    try {
        delete_stale_namespaces();
        create_netns();
        dir_ = make_temp_dir();
        start_dockerd();
        wait_until_ready();
        import_image();
    } catch (...) {
        teardown();
        throw;
    }
}

PrivateDockerEngine::~PrivateDockerEngine() {
    teardown();
}

void PrivateDockerEngine::create_netns() {
    must_run({"ip", "netns", "add", netns_});
    netns_created_ = true;
    must_run({"ip", "-n", netns_, "link", "set", "lo", "up"});
}

void PrivateDockerEngine::start_dockerd() {
    fs::create_directories(dir_ / "data");
    fs::create_directories(dir_ / "exec");
    std::string config = "{\"log-level\": \"info\"";
    if (access("/usr/bin/crun", X_OK) == 0) {
        config += ", \"runtimes\": {\"crun\": {\"path\": \"/usr/bin/crun\"}}";
    }
    config += "}\n";
    write_file(dir_ / "daemon.json", config);

    std::vector<std::string> args = {"nsenter",
                                     "--net=" + netns_path(),
                                     "dockerd",
                                     "--config-file=" + (dir_ / "daemon.json").string(),
                                     "--data-root=" + (dir_ / "data").string(),
                                     "--exec-root=" + (dir_ / "exec").string(),
                                     "--pidfile=" + (dir_ / "docker.pid").string(),
                                     "--host=unix://" + socket_path()};
    std::vector<char*> argv;
    for (auto& arg : args) {
        argv.push_back(arg.data());
    }
    argv.push_back(nullptr);
    int log = open((dir_ / "dockerd.log").c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    int null = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (log < 0 || null < 0) {
        throw errno_error("open dockerd.log");
    }
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid == 0) {
        // Only async-signal-safe calls until exec. dockerd gets SIGTERM if the test dies.
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        if (getppid() != parent) {
            _exit(127);
        }
        setsid();
        dup2(null, STDIN_FILENO);
        dup2(log, STDOUT_FILENO);
        dup2(log, STDERR_FILENO);
        execvp(argv[0], argv.data());
        _exit(127);
    }
    int fork_errno = errno;
    close(log);
    close(null);
    if (pid < 0) {
        errno = fork_errno;
        throw errno_error("fork for dockerd");
    }
    dockerd_pid_ = pid;
}

void PrivateDockerEngine::wait_until_ready() {
    // dockerd has no readiness notification: poll /_ping (usually ready in a second, but a first
    // start has taken 10-30 s).
    auto deadline = std::chrono::steady_clock::now() + options_.ready_timeout;
    docker::DockerClient engine(socket_path());
    std::string last_error = "not started";
    while (std::chrono::steady_clock::now() < deadline) {
        int status = 0;
        if (waitpid(dockerd_pid_, &status, WNOHANG) == dockerd_pid_) {
            dockerd_pid_ = -1;
            throw std::runtime_error("dockerd exited during startup:\n" + dockerd_log_tail());
        }
        try {
            engine.ping();
            return;
        } catch (const std::exception& e) {
            last_error = e.what();
        }
        std::this_thread::sleep_for(50ms);
    }
    throw std::runtime_error("dockerd did not answer /_ping within " +
                             std::to_string(options_.ready_timeout.count()) + " s (" + last_error +
                             "):\n" + dockerd_log_tail());
}

void PrivateDockerEngine::restart_dockerd() {
    stop_dockerd();
    start_dockerd();
    wait_until_ready();
}

void PrivateDockerEngine::import_image() {
    if (!fs::exists(options_.image_tarball)) {
        throw std::runtime_error(options_.image_tarball.string() +
                                 " is missing: build the example_images target first");
    }
    must_run({fs::path(UNIFAAS_SOURCE_DIR) / "examples" / "import-image.sh", socket_path(),
              options_.image_tarball.string(), options_.image_name});
}

void PrivateDockerEngine::enter_netns() {
    if (original_netns_fd_ < 0) {
        original_netns_fd_ = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
    }
    int fd = open(netns_path().c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        throw errno_error("open " + netns_path());
    }
    int rc = setns(fd, CLONE_NEWNET);
    int setns_errno = errno;
    close(fd);
    if (rc != 0) {
        errno = setns_errno;
        throw errno_error("setns " + netns_path());
    }
}

std::vector<std::string> PrivateDockerEngine::unifaas_containers() const {
    std::vector<std::string> out;
    for (const auto& container : client().list_containers("unifaas.instance")) {
        out.push_back(container.name + " (" + container.id.substr(0, 12) + ", " + container.state +
                      ")");
    }
    return out;
}

std::string PrivateDockerEngine::bridge_gateway() const {
    return client().network_gateway("bridge");
}

bool PrivateDockerEngine::enable_crun() {
    if (access("/usr/bin/crun", X_OK) != 0) {
        return false;
    }
    // crun refuses hybrid cgroups while a controller is left on v2; move hugetlb to v1.
    if (hugetlb_needs_v1_mount() && !fs::exists("/sys/fs/cgroup/hugetlb/cgroup.procs")) {
        fs::create_directories("/sys/fs/cgroup/hugetlb");
        if (mount("cgroup", "/sys/fs/cgroup/hugetlb", "cgroup", 0, "hugetlb") != 0) {
            std::cerr << "docker_engine: cannot mount the hugetlb cgroup: " << std::strerror(errno)
                      << "\n";
            return false;
        }
    }
    return true;
}

std::string PrivateDockerEngine::dockerd_log_tail(std::size_t lines) const {
    std::ifstream in(dir_ / "dockerd.log");
    std::deque<std::string> tail;
    for (std::string line; std::getline(in, line);) {
        tail.push_back(line);
        if (tail.size() > lines) {
            tail.pop_front();
        }
    }
    std::string out;
    for (const auto& line : tail) {
        out += line + "\n";
    }
    return out;
}

void PrivateDockerEngine::remove_all_containers() noexcept {
    try {
        docker::DockerClient engine(socket_path());
        for (const auto& container : engine.list_containers("")) {
            engine.remove_container(container.id);
        }
    } catch (const std::exception& e) {
        std::cerr << "docker_engine: cannot remove containers: " << e.what() << "\n";
    }
}

void PrivateDockerEngine::stop_dockerd() noexcept {
    if (dockerd_pid_ <= 0) {
        return;
    }
    // dockerd stops its containerd and cleans its mounts; give it a while, then insist.
    int pidfd = static_cast<int>(syscall(SYS_pidfd_open, dockerd_pid_, 0));
    kill(dockerd_pid_, SIGTERM);
    if (pidfd >= 0) {
        pollfd exited{pidfd, POLLIN, 0};
        if (poll(&exited, 1, 30'000) == 0) {
            std::cerr << "docker_engine: dockerd ignored SIGTERM for 30 s; killing it\n";
            kill(dockerd_pid_, SIGKILL);
        }
        close(pidfd);
    }
    int status = 0;
    while (waitpid(dockerd_pid_, &status, 0) < 0 && errno == EINTR) {
    }
    dockerd_pid_ = -1;
    // What an operator would do before starting it again: without this, the next dockerd
    // cannot remove a container whose overlay the last one left mounted.
    unmount_leftovers(dir_);
}

void PrivateDockerEngine::teardown() noexcept {
    if (dockerd_pid_ > 0) {
        remove_all_containers();
        stop_dockerd();
    }
    if (original_netns_fd_ >= 0) {
        setns(original_netns_fd_, CLONE_NEWNET);
        close(original_netns_fd_);
        original_netns_fd_ = -1;
    }
    if (!dir_.empty()) {
        unmount_leftovers(dir_);
        std::error_code ec;
        fs::remove_all(dir_, ec);
        if (ec) {
            std::cerr << "docker_engine: cannot remove " << dir_ << ": " << ec.message() << "\n";
        }
        dir_.clear();
    }
    if (netns_created_) {
        try {
            run_command({"ip", "netns", "del", netns_});
        } catch (const std::exception& e) {
            std::cerr << "docker_engine: " << e.what() << "\n";
        }
        netns_created_ = false;
    }
}

}  // namespace unifaas::test
