#include "guest_netns_fixture.h"

#include <poll.h>
#include <stdlib.h>
#include <sys/inotify.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <iterator>
#include <regex>
#include <sstream>
#include <thread>

#include "docker_engine.h"

namespace unifaas::test {

namespace fs = std::filesystem;

std::string run_command(const std::string& cmd) {
    std::string out;
    FILE* p = popen(cmd.c_str(), "r");
    if (!p) {
        return out;
    }
    char buf[4096];
    while (std::size_t n = fread(buf, 1, sizeof(buf), p)) {
        out.append(buf, n);
    }
    pclose(p);
    return out;
}

std::vector<std::string> taps() {
    std::string out = run_command("ip -n " + engine().netns_name() + " -o link show");
    std::vector<std::string> names;
    std::regex re(R"(^\d+: (faas\d+)[:@])");
    std::istringstream lines(out);
    std::string line;
    while (std::getline(lines, line)) {
        std::smatch m;
        if (std::regex_search(line, m, re)) {
            names.push_back(m[1]);
        }
    }
    return names;
}

std::string nft_list(const std::string& what) {
    return run_command("nsenter --net=" + engine().netns_path() + " nft list " + what +
                       " inet unifaas" + (what == "map" ? " guests" : "") + " 2>/dev/null");
}

std::vector<pid_t> processes_where(const std::function<bool(const fs::path&)>& matches) {
    std::vector<pid_t> pids;
    for (const auto& entry : fs::directory_iterator("/proc")) {
        std::string name = entry.path().filename();
        if (name.find_first_not_of("0123456789") == std::string::npos && matches(entry.path())) {
            pids.push_back(std::stoi(name));
        }
    }
    return pids;
}

std::string proc_file(const fs::path& proc_dir, const char* file) {
    std::ifstream in(proc_dir / file, std::ios::binary);
    return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

std::vector<pid_t> qemu_processes(const std::string& marker) {
    return processes_where([&](const fs::path& proc) {
        std::string cmdline = proc_file(proc, "cmdline");
        return cmdline.find("qemu-system") != std::string::npos &&
               cmdline.find(marker) != std::string::npos;
    });
}

std::string unique_marker(const std::string& prefix) {
    return prefix + std::to_string(getpid()) + "x" +
           std::to_string(std::chrono::steady_clock::now().time_since_epoch().count() % 100000);
}

nlohmann::json function_instances(const DaemonProcess& daemon, const std::string& function) {
    auto res = daemon.client().Get("/status");
    if (!res) {
        return nlohmann::json::array();
    }
    auto status = nlohmann::json::parse(res->body);  // (outlives the loop)
    for (auto& f : status["functions"]) {
        if (f["name"] == function) {
            return f["instances"];
        }
    }
    return nlohmann::json::array();
}

bool eventually(const std::function<bool()>& done, std::chrono::milliseconds timeout) {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    while (!done()) {
        if (std::chrono::steady_clock::now() > deadline) {
            return false;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return true;
}

std::string hello_vm_toml(const HelloVm& vm) {
    return vm.top + "\n[vm]\nkernel = \"" + vm.kernel.string() + "\"\ninitrd = \"" +
           (kGuest / "hello-initramfs.cpio.gz").string() + "\"\nmemory = 128\n" +
           (vm.snapshot ? "snapshot = true\n" : "") +
           "cmdline = \"console=ttyS0 reboot=t panic=-1 cryptomgr.notests quiet "
           "unifaas.ip=%ip unifaas.gw=%gateway unifaas.mask=%netmask unifaas.callback=%callback" +
           (vm.cmdline_extra.empty() ? "" : " " + vm.cmdline_extra) + "\"\nhypervisor = { " +
           vm.hypervisor + " }\n";
}

std::set<std::string> templates_in(const fs::path& dir) {
    std::set<std::string> names;
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(dir, ec)) {
        if (e.path().filename().string().rfind(".partial-", 0) != 0) {
            names.insert(e.path().filename());
        }
    }
    return names;
}

std::string wait_new_template(const fs::path& dir, const std::set<std::string>& known,
                              std::chrono::seconds timeout) {
    int fd = inotify_init1(IN_CLOEXEC | IN_NONBLOCK);
    inotify_add_watch(fd, dir.c_str(), IN_MOVED_TO | IN_CREATE);
    auto deadline = std::chrono::steady_clock::now() + timeout;
    std::string found;
    for (;;) {
        for (const auto& name : templates_in(dir)) {
            if (known.count(name) == 0) {
                found = name;
            }
        }
        auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
            deadline - std::chrono::steady_clock::now());
        if (!found.empty() || left.count() <= 0) {
            break;
        }
        pollfd p{fd, POLLIN, 0};
        if (poll(&p, 1, static_cast<int>(left.count())) > 0) {
            char buf[4096];
            while (read(fd, buf, sizeof(buf)) > 0) {
            }
        }
    }
    close(fd);
    return found;
}

void GuestVmTest::SetUp() {
    ASSERT_TRUE(fs::exists(kGuest / "kernel" / "vmlinux")) << "guest images not built";
    std::string tmpl = "/tmp/unifaas-" + prefix_ + "-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
    registry_ = dir_ / "registry";
    fs::create_directories(registry_);
    marker_ = unique_marker(prefix_);
    ASSERT_TRUE(taps().empty()) << "taps left by an earlier test";
}

void GuestVmTest::TearDown() {
    stop_daemon();
    EXPECT_TRUE(taps().empty()) << "taps leaked";
    EXPECT_EQ(nft_list("table"), "") << "nftables table inet unifaas leaked";
    EXPECT_TRUE(qemu_processes(marker_).empty()) << "qemu processes leaked";
    if (!dir_.empty()) {
        fs::remove_all(dir_);
    }
}

std::string GuestVmTest::add_vm(const std::string& base, const HelloVm& vm) {
    std::string name = base + "-" + marker_;
    fs::create_directories(registry_ / name);
    std::ofstream(registry_ / name / "function.toml") << hello_vm_toml(vm);
    return name;
}

void GuestVmTest::start_daemon(const std::string& extra_config, const fs::path& runtime_dir) {
    DaemonProcess::Options o;
    o.registry = registry_;
    o.docker_socket = engine().socket_path();
    o.runtime_dir = runtime_dir;
    o.extra_config = "accel = \"tcg\"\n" + extra_config;
    daemon_ = std::make_unique<DaemonProcess>(o);
}

void GuestVmTest::stop_daemon() {
    if (daemon_ && daemon_->running()) {
        EXPECT_EQ(daemon_->terminate(), 0) << daemon_->log();
        EXPECT_TRUE(workdirs_empty()) << "instance working directories leaked";
    }
    daemon_.reset();
}

bool GuestVmTest::workdirs_empty() const {
    fs::path dir = daemon_->runtime_dir() / "instances";
    return !fs::exists(dir) || fs::is_empty(dir);
}

}  // namespace unifaas::test
