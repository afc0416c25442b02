// What the integration suites with guests share: the guest images, the hello microVM's
// function.toml, looks at the suite's private network namespace (taps) and at qemu processes,
// /status instances, snapshot template directories, and GuestVmTest, the fixture of the suites
// whose daemon runs QEMU microVMs (TCG) in that namespace.
//
// The test process already lives in the suite's namespace (main.cpp enters it before any test),
// so every command and look here is inside it.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <filesystem>
#include <functional>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "daemon_process.h"

namespace unifaas::test {

// The guest images built by guest/: kernel/vmlinux, kernel/bzImage, hello-initramfs.cpio.gz.
inline const std::filesystem::path kGuest = std::filesystem::path(UNIFAAS_BINARY_DIR) / "guest";

// The standard output of `/bin/sh -c cmd` ("" when it cannot be run).
std::string run_command(const std::string& cmd);

// Taps named faasN in the suite's namespace, as `ip -o link show` lists them.
std::vector<std::string> taps();

// `nft list <what> inet unifaas` ("map": the map "guests") in the suite's namespace; "" when
// there is no such object.
std::string nft_list(const std::string& what);

// The pids of /proc for which `matches(/proc/<pid>)` holds.
std::vector<pid_t> processes_where(
    const std::function<bool(const std::filesystem::path&)>& matches);

// /proc/<pid>/<file> read whole (cmdline, environ: NUL-separated); "" when unreadable.
std::string proc_file(const std::filesystem::path& proc_dir, const char* file);

// qemu processes whose command line holds `marker` (a test's VM function names carry it).
std::vector<pid_t> qemu_processes(const std::string& marker);

// "<prefix><pid>x<5 digits>": a marker for one test's function names, so that its qemu
// processes can be told apart from other suites' and other helpers'.
std::string unique_marker(const std::string& prefix);

// Polls `done` every 20 ms until it holds (true) or `timeout` passes (false): a bounded wait for
// a state nothing announces.
bool eventually(const std::function<bool()>& done, std::chrono::milliseconds timeout);

// The "instances" of `function` in the daemon's /status; an empty array when it does not answer
// or has no such function.
nlohmann::json function_instances(const DaemonProcess& daemon, const std::string& function);

// A microVM function running the hello guest from its initramfs (QEMU's microvm machine by
// default), its function.toml made by hello_vm_toml.
struct HelloVm {
    std::string top = "";            // top-level keys (before [vm])
    bool snapshot = false;           // [vm] snapshot = true
    std::string cmdline_extra = "";  // appended to the kernel command line
    std::filesystem::path kernel = kGuest / "kernel" / "vmlinux";
    std::string hypervisor = "type = \"microvm\", pic = false, pit = false";  // { ... } inline
};
std::string hello_vm_toml(const HelloVm& vm);

// The complete snapshot templates (not ".partial-*") in a snapshot dir.
std::set<std::string> templates_in(const std::filesystem::path& dir);

// Waits (inotify, no polling) until `dir` holds a complete template not in `known`; returns its
// name, "" on timeout.
std::string wait_new_template(const std::filesystem::path& dir, const std::set<std::string>& known,
                              std::chrono::seconds timeout);

// A daemon running hello microVMs under TCG, with a registry in a temporary directory. SetUp
// checks the guest images are built and no tap is left by an earlier test; TearDown stops the
// daemon (exit status 0) and checks it left no working directory, tap, nftables table or qemu
// process of this test's marker.
class GuestVmTest : public ::testing::Test {
  protected:
    // marker_prefix: a few letters naming the suite ("vmt"); it starts marker_ and the temporary
    // directory's name.
    explicit GuestVmTest(std::string marker_prefix) : prefix_(std::move(marker_prefix)) {}

    void SetUp() override;
    void TearDown() override;

    // Writes the function "<base>-<marker_>" and returns that name.
    std::string add_vm(const std::string& base, const HelloVm& vm = {});

    // A daemon on registry_ with accel = "tcg" and `extra_config`; runtime_dir: "" for a fresh
    // one, a directory for one kept across a restart.
    void start_daemon(const std::string& extra_config = "",
                      const std::filesystem::path& runtime_dir = {});
    // Stops a running daemon (exit status 0, no working directory left) and drops it.
    void stop_daemon();

    httplib::Result get(const std::string& path) { return daemon_->client().Get(path); }
    nlohmann::json instances(const std::string& function) {
        return function_instances(*daemon_, function);
    }
    bool workdirs_empty() const;

    std::filesystem::path dir_;       // removed by TearDown
    std::filesystem::path registry_;  // dir_/registry
    std::string marker_;
    std::unique_ptr<DaemonProcess> daemon_;

  private:
    std::string prefix_;
};

}  // namespace unifaas::test
