// microVM functions through the whole daemon: real QEMU (microvm machine, TCG here) booting the
// guest image from guest/, taps in the test's private network namespace. VM boots cost about 2 s
// of a core each, so each test boots at most one.
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <nlohmann/json.hpp>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <future>
#include <regex>
#include <thread>

#include "guest_netns_fixture.h"
#include "link_events.h"

namespace unifaas::test {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

// Waits for a process to exit through its pidfd.
bool wait_process_exit(pid_t pid, std::chrono::milliseconds timeout) {
    int fd = static_cast<int>(syscall(SYS_pidfd_open, pid, 0));
    if (fd < 0) {
        return errno == ESRCH;
    }
    pollfd p{fd, POLLIN, 0};
    bool exited = poll(&p, 1, static_cast<int>(timeout.count())) > 0;
    close(fd);
    return exited;
}

pid_t qemu_pid_of(const nlohmann::json& instance) {
    std::smatch m;
    std::string sandbox = instance["sandbox"];
    if (std::regex_search(sandbox, m, std::regex(R"(qemu pid (\d+))"))) {
        return std::stoi(m[1]);
    }
    return -1;
}

class MicroVmTest : public GuestVmTest {
  protected:
    MicroVmTest() : GuestVmTest("vmt") {}

    // A microVM running the hello example (see GuestVmTest::add_vm).
    std::string add_vm(const std::string& base, const std::string& top = "",
                       const std::string& cmdline_extra = "") {
        return GuestVmTest::add_vm(base, {.top = top, .cmdline_extra = cmdline_extra});
    }
};

TEST_F(MicroVmTest, ColdStartWarmRequestsSlotsAndSigtermRemovesTaps) {
    auto fn = add_vm("hello", "concurrent-requests = 2\nmax-instances = 1\nqueue-timeout = 30");
    start_daemon();
    auto started = std::chrono::steady_clock::now();
    auto res = get("/invoke/" + fn + "/hello");
    ASSERT_TRUE(res) << daemon_->log();
    EXPECT_EQ(res->status, 200) << res->body;
    EXPECT_EQ(res->body, "hello from unifaas\n");
    std::cout << "[ timing ] microvm cold start through unifaas: "
              << std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count()
              << " s\n";
    auto list = instances(fn);
    ASSERT_EQ(list.size(), 1u);
    std::string address = list[0]["address"];
    EXPECT_EQ(address.rfind("10.100.", 0), 0u) << address;

    res = daemon_->client().Post("/invoke/" + fn + "/echo/x/y?q=1", "vm-body", "text/plain");
    ASSERT_TRUE(res);
    EXPECT_NE(res->body.find("path: /echo/x/y"), std::string::npos) << res->body;
    EXPECT_NE(res->body.find("query: q=1"), std::string::npos) << res->body;
    EXPECT_NE(res->body.find("body: vm-body"), std::string::npos) << res->body;

    // Two slots on the one instance: three 700 ms requests need two rounds.
    auto t0 = std::chrono::steady_clock::now();
    std::vector<std::future<int>> calls;
    for (int i = 0; i < 3; ++i) {
        calls.push_back(std::async(std::launch::async, [&] {
            auto r = daemon_->client().Get("/invoke/" + fn + "/sleep?ms=700");
            return r ? r->status : -1;
        }));
    }
    for (auto& c : calls) {
        EXPECT_EQ(c.get(), 200);
    }
    EXPECT_GE(std::chrono::steady_clock::now() - t0, 1400ms);
    EXPECT_EQ(instances(fn).size(), 1u);
    EXPECT_FALSE(taps().empty());

    EXPECT_EQ(daemon_->terminate(), 0) << daemon_->log();
    EXPECT_TRUE(taps().empty()) << "SIGTERM left taps";
    EXPECT_TRUE(workdirs_empty());
}

TEST_F(MicroVmTest, SingleUseStopsTheVmAndItsTapDisappears) {
    auto fn = add_vm("once", "single-use = true");
    start_daemon("tap-prealloc = 0");
    LinkEvents links;
    auto res = get("/invoke/" + fn + "/hello");
    ASSERT_TRUE(res);
    EXPECT_EQ(res->status, 200) << res->body;
    auto pids = qemu_processes(marker_);
    for (pid_t pid : pids) {
        EXPECT_TRUE(wait_process_exit(pid, 20s)) << "single-use VM still running";
    }
    EXPECT_TRUE(links.wait_gone("faas0", 20s)) << "its tap is still there";
    EXPECT_TRUE(instances(fn).empty());
    EXPECT_TRUE(workdirs_empty());
}

TEST_F(MicroVmTest, KeepaliveExpiryStopsTheVm) {
    auto fn = add_vm("brief", "keepalive = 1");
    start_daemon();
    ASSERT_EQ(get("/invoke/" + fn + "/hello")->status, 200);
    auto answered = std::chrono::steady_clock::now();
    auto list = instances(fn);
    ASSERT_EQ(list.size(), 1u) << get("/status")->body;
    EXPECT_TRUE(wait_process_exit(qemu_pid_of(list[0]), 20s));
    EXPECT_GE(std::chrono::steady_clock::now() - answered, 900ms);
    EXPECT_TRUE(instances(fn).empty());
}

TEST_F(MicroVmTest, KilledQemuFailsItsRequest502AndReleasesEverything) {
    auto fn = add_vm("victim");
    start_daemon("tap-prealloc = 0");
    ASSERT_EQ(get("/invoke/" + fn + "/hello")->status, 200);
    auto list = instances(fn);
    ASSERT_EQ(list.size(), 1u) << get("/status")->body;
    pid_t pid = qemu_pid_of(list[0]);
    ASSERT_GT(pid, 0);
    auto slow = std::async(std::launch::async, [&] {
        auto r = daemon_->client().Get("/invoke/" + fn + "/sleep?ms=30000");
        return r ? std::pair{r->status, r->body} : std::pair{-1, std::string()};
    });
    // The request is in the guest once the instance shows a slot in use. Nothing announces
    // that, so the daemon's state is read until it shows (bounded).
    auto deadline = std::chrono::steady_clock::now() + 10s;
    while (instances(fn)[0]["in_use"] != 1 && std::chrono::steady_clock::now() < deadline) {
        std::this_thread::sleep_for(10ms);
    }
    ASSERT_EQ(instances(fn)[0]["in_use"], 1);
    LinkEvents links;
    auto killed_at = std::chrono::steady_clock::now();
    ::kill(pid, SIGKILL);
    auto [status, body] = slow.get();
    EXPECT_EQ(status, 502) << body;
    EXPECT_NE(body.find(fn), std::string::npos) << body;
    EXPECT_NE(body.find("stopped while serving"), std::string::npos) << body;
    // Failed because the instance died, not after waiting out the guest's 30 s or a timeout.
    EXPECT_LT(std::chrono::steady_clock::now() - killed_at, 15s) << body;
    EXPECT_TRUE(links.wait_gone("faas0", 20s)) << "the dead VM's tap is still there";
    EXPECT_TRUE(instances(fn).empty());
    EXPECT_TRUE(workdirs_empty());
    // The next request boots a fresh VM.
    EXPECT_EQ(get("/invoke/" + fn + "/hello")->status, 200);
}

TEST_F(MicroVmTest, GuestThatNeverCallsBackGets504WithItsConsole) {
    auto fn = add_vm("mute", "boot-timeout = 4", "unifaas.env=HELLO_NO_CALLBACK=1");
    start_daemon("tap-prealloc = 0");
    auto res = get("/invoke/" + fn + "/hello");
    ASSERT_TRUE(res);
    EXPECT_EQ(res->status, 504);
    EXPECT_NE(res->body.find("boot-timeout"), std::string::npos) << res->body;
    EXPECT_NE(res->body.find("unifaas-init"), std::string::npos)
        << "no console tail: " << res->body;
    EXPECT_TRUE(instances(fn).empty());
    LinkEvents links;
    EXPECT_TRUE(links.wait_gone("faas0", 20s));
    EXPECT_TRUE(qemu_processes(marker_).empty());
    EXPECT_TRUE(workdirs_empty());
}

TEST_F(MicroVmTest, MissingKernelOrImageIsAClearError) {
    std::string name = "nokernel-" + marker_;
    fs::create_directories(registry_ / name);
    std::ofstream(registry_ / name / "function.toml")
        << "[vm]\nkernel = \"/nonexistent/vmlinux\"\nimage = \"/nonexistent/rootfs.ext4\"\n"
        << "hypervisor = { type = \"microvm\" }\n";
    start_daemon();
    auto res = get("/invoke/" + name + "/hello");
    ASSERT_TRUE(res);
    EXPECT_EQ(res->status, 500);
    EXPECT_NE(res->body.find("/nonexistent/vmlinux"), std::string::npos) << res->body;
    EXPECT_NE(res->body.find("vm.kernel"), std::string::npos) << res->body;
}

TEST_F(MicroVmTest, TinySubnetExhaustionAnswers503) {
    auto first = add_vm("first");
    auto second = add_vm("second");
    start_daemon("subnet = \"10.100.0.0/30\"\ntap-prealloc = 0");
    ASSERT_EQ(get("/invoke/" + first + "/hello")->status, 200);  // holds the only /30
    auto res = get("/invoke/" + second + "/hello");
    ASSERT_TRUE(res);
    EXPECT_EQ(res->status, 503) << res->body;
    EXPECT_NE(res->body.find("exhausted"), std::string::npos) << res->body;
    EXPECT_EQ(get("/invoke/" + first + "/hello")->status, 200) << "daemon stopped serving";
}

TEST_F(MicroVmTest, Kill9ThenRestartRemovesStaleTapsAndCleanupTapsRemovesAll) {
    add_vm("idle");
    {
        LinkEvents links;
        start_daemon("tap-prealloc = 2");
        // Up, not only there: a tap is made persistent and addressed before it is brought up;
        // a kill -9 before that would take a half-made tap with the daemon.
        ASSERT_TRUE(links.wait_up("faas1", 10s)) << "the tap pool was not filled";
    }
    daemon_->kill9();
    EXPECT_EQ(taps().size(), 2u) << "a crashed daemon cannot clean up";
    start_daemon("tap-prealloc = 0");
    EXPECT_TRUE(taps().empty()) << "restart kept stale taps";
    EXPECT_NE(daemon_->log().find("stale"), std::string::npos) << daemon_->log();
    daemon_->kill9();

    // Leave taps behind again, then remove them with --cleanup-taps.
    {
        LinkEvents links;
        start_daemon("tap-prealloc = 3");
        ASSERT_TRUE(links.wait_up("faas2", 10s));
    }
    daemon_->kill9();
    ASSERT_EQ(taps().size(), 3u);
    std::string out = run_command(std::string(UNIFAAS_DAEMON_PATH) + " --cleanup-taps 2>&1");
    EXPECT_NE(out.find("removed 3 taps"), std::string::npos) << out;
    EXPECT_TRUE(taps().empty());
    EXPECT_NE(out.find("table inet unifaas"), std::string::npos) << out;
    EXPECT_EQ(nft_list("table"), "");
}

// The guest firewall as the daemon drives it: one map element per running VM (its tap under the
// function's policy), removed when the VM stops; the table stays through a crash (guests left
// running stay shut in), is rebuilt empty at restart and removed at stop (TearDown).
TEST_F(MicroVmTest, FirewallElementPerVmTableRebuiltAfterKill9RemovedAtStop) {
    auto fn = add_vm("fw", "[network]\nallow-invoke = true");
    auto once = add_vm("once", "single-use = true");
    start_daemon("tap-prealloc = 0");
    EXPECT_NE(nft_list("table").find("chain callback_invoke"), std::string::npos);
    EXPECT_EQ(nft_list("map").find("\"faas"), std::string::npos) << nft_list("map");

    ASSERT_EQ(get("/invoke/" + fn + "/hello")->status, 200);
    EXPECT_NE(nft_list("map").find("\"faas0\" : jump callback_invoke"), std::string::npos)
        << nft_list("map");
    daemon_->kill9();
    EXPECT_NE(nft_list("map").find("\"faas0\""), std::string::npos)
        << "the table went with the crashed daemon";

    start_daemon("tap-prealloc = 0");
    EXPECT_EQ(nft_list("map").find("\"faas"), std::string::npos)
        << "restart kept stale elements: " << nft_list("map");
    ASSERT_EQ(get("/invoke/" + once + "/hello")->status, 200);
    // The single-use VM is stopped right after its response; its element goes with its tap.
    bool removed = false;
    for (int i = 0; i < 200 && !removed; ++i) {
        removed = nft_list("map").find("\"faas") == std::string::npos && taps().empty();
        if (!removed) {
            std::this_thread::sleep_for(50ms);
        }
    }
    EXPECT_TRUE(removed) << nft_list("map");
}

}  // namespace
}  // namespace unifaas::test
