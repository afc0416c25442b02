// Snapshot cold starts through the whole daemon: real QEMU (microvm, TCG here) boots a template of
// the hello guest, saves it, and later cold starts restore clones of it (RAM mapped copy-on-write
// from the template's file, a new identity pushed over the guest restore protocol). Taps live in
// the suite's private network namespace; templates in a temporary snapshot-dir.
#include <gtest/gtest.h>
#include <poll.h>
#include <sys/inotify.h>
#include <sys/mount.h>
#include <unistd.h>
#include <nlohmann/json.hpp>

#include <chrono>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <future>
#include <iostream>
#include <set>

#include "guest_netns_fixture.h"

namespace unifaas::test {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

std::string sha256(const fs::path& file) {
    std::string out = run_command("sha256sum '" + file.string() + "'");
    return out.substr(0, out.find(' '));
}

double now_realtime() {
    timespec ts{};
    clock_gettime(CLOCK_REALTIME, &ts);
    return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) / 1e9;
}

class SnapshotTest : public GuestVmTest {
  protected:
    SnapshotTest() : GuestVmTest("snt") {}

    void TearDown() override {
        stop_daemon();
        if (!tmpfs_.empty()) {
            ::umount2(tmpfs_.c_str(), MNT_DETACH);
        }
        EXPECT_TRUE(templates_partial().empty()) << "partial templates left";
        GuestVmTest::TearDown();
    }

    std::set<std::string> templates_partial() {
        std::set<std::string> names;
        std::error_code ec;
        for (const auto& e : fs::directory_iterator(snapshots(), ec)) {
            if (e.path().filename().string().rfind(".partial-", 0) == 0) {
                names.insert(e.path().filename());
            }
        }
        return names;
    }

    fs::path snapshots() const { return dir_ / "snapshots"; }

    // A hello microVM with [vm] snapshot = true (see GuestVmTest::add_vm).
    std::string write_vm(const std::string& base, HelloVm vm) {
        vm.snapshot = true;
        return add_vm(base, vm);
    }

    // A runtime-dir kept across a restart (a crash test); "" = a fresh one.
    void start_daemon(const fs::path& runtime_dir = {}) {
        GuestVmTest::start_daemon("snapshot-dir = \"" + snapshots().string() + "\"\n", runtime_dir);
    }

    std::string metric(const std::string& line_start) {
        auto res = get("/metrics");
        if (!res) {
            return {};
        }
        std::istringstream lines(res->body);
        std::string line;
        while (std::getline(lines, line)) {
            if (line.rfind(line_start, 0) == 0) {
                return line.substr(line_start.size());
            }
        }
        return {};
    }

    fs::path tmpfs_;  // a small tmpfs mounted on the snapshot dir, unmounted in TearDown
};

// Waits (inotify) until a file named `name` is created in a partial template directory of `dir`
// (watched from before the build starts); returns that directory, "" on timeout.
class PartialTemplateWatch {
  public:
    explicit PartialTemplateWatch(const fs::path& dir) : dir_(dir) {
        fd_ = inotify_init1(IN_CLOEXEC | IN_NONBLOCK);
        inotify_add_watch(fd_, dir.c_str(), IN_CREATE | IN_DELETE);
    }
    ~PartialTemplateWatch() { close(fd_); }

    fs::path wait_for(const std::string& name, std::chrono::seconds timeout) {
        auto deadline = std::chrono::steady_clock::now() + timeout;
        for (;;) {
            for (const auto& e : fs::directory_iterator(dir_)) {
                std::string entry = e.path().filename();
                if (entry.rfind(".partial-", 0) != 0) {
                    continue;
                }
                if (watched_.insert(entry).second) {
                    inotify_add_watch(fd_, e.path().c_str(), IN_CREATE);
                }
                if (fs::exists(e.path() / name)) {
                    return e.path();
                }
            }
            auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
                deadline - std::chrono::steady_clock::now());
            if (left.count() <= 0) {
                return {};
            }
            pollfd p{fd_, POLLIN, 0};
            if (poll(&p, 1, static_cast<int>(left.count())) > 0) {
                char buf[4096];
                while (read(fd_, buf, sizeof(buf)) > 0) {
                }
            }
        }
    }

    // Waits until `count` partial template directories have been removed (in all) since the
    // watch began; whether they were.
    bool wait_removed(unsigned count, std::chrono::seconds timeout) {
        auto deadline = std::chrono::steady_clock::now() + timeout;
        while (removed_ < count) {
            auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
                deadline - std::chrono::steady_clock::now());
            pollfd p{fd_, POLLIN, 0};
            if (left.count() <= 0 || poll(&p, 1, static_cast<int>(left.count())) <= 0) {
                return false;
            }
            alignas(inotify_event) char buf[4096];
            ssize_t n;
            while ((n = read(fd_, buf, sizeof(buf))) > 0) {
                for (char* at = buf; at < buf + n;) {
                    auto* ev = reinterpret_cast<inotify_event*>(at);
                    if ((ev->mask & IN_DELETE) && ev->len > 0 &&
                        std::string(ev->name).rfind(".partial-", 0) == 0) {
                        ++removed_;
                    }
                    at += sizeof(inotify_event) + ev->len;
                }
            }
        }
        return true;
    }

  private:
    fs::path dir_;
    int fd_ = -1;
    std::set<std::string> watched_;
    unsigned removed_ = 0;
};

TEST_F(SnapshotTest, ThreeConcurrentClonesOfOneTemplateEachHaveTheirOwnIdentity) {
    auto fn =
        write_vm("clones", {.top = "max-instances = 4\nqueue-timeout = 60\nboot-timeout = 60"});
    start_daemon();
    // The first cold start boots; the template is built beside it.
    auto res = get("/invoke/" + fn + "/hello");
    ASSERT_TRUE(res) << daemon_->log();
    ASSERT_EQ(res->status, 200) << res->body;
    std::string tpl = wait_new_template(snapshots(), {}, 120s);
    ASSERT_FALSE(tpl.empty()) << "no template was saved\n" << daemon_->log();
    fs::path memory = snapshots() / tpl / "memory";
    std::string memory_hash = sha256(memory);
    ASSERT_EQ(memory_hash.size(), 64u);

    // Four requests that each hold an instance: one takes the booted one, three start clones.
    auto started = std::chrono::steady_clock::now();
    std::vector<std::future<int>> calls;
    for (int i = 0; i < 4; ++i) {
        calls.push_back(std::async(std::launch::async, [&] {
            auto r = daemon_->client().Get("/invoke/" + fn + "/sleep?ms=1500");
            return r ? r->status : -1;
        }));
    }
    for (auto& c : calls) {
        EXPECT_EQ(c.get(), 200) << daemon_->log();
    }
    std::cout << "[ timing ] 3 restores + 1.5 s requests: "
              << std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count()
              << " s\n";

    auto list = instances(fn);
    std::set<std::string> addresses, uuids;
    unsigned restored = 0;
    for (const auto& i : list) {
        addresses.insert(i["address"].get<std::string>());
        if (i["start"] != "restore") {
            continue;
        }
        ++restored;
        EXPECT_EQ(i["state"], "ready");
        // Each clone answers on its own address (the test runs in the daemon's namespace).
        httplib::Client direct(i["address"].get<std::string>(), 8080);
        direct.set_read_timeout(10s);
        auto uuid = direct.Get("/uuid");
        ASSERT_TRUE(uuid) << i.dump();
        EXPECT_EQ(uuid->status, 200);
        uuids.insert(uuid->body);
    }
    EXPECT_EQ(restored, 3u) << get("/status")->body << daemon_->log();
    EXPECT_EQ(addresses.size(), list.size()) << "two instances share an address";
    EXPECT_EQ(uuids.size(), restored) << "clones drew the same random UUID";
    EXPECT_EQ(metric("unifaas_cold_starts_total{function=\"" + fn + "\",kind=\"restore\"} "), "3");
    EXPECT_EQ(metric("unifaas_cold_starts_total{function=\"" + fn + "\",kind=\"boot\"} "), "1");
    EXPECT_EQ(metric("unifaas_restore_duration_seconds_count{function=\"" + fn + "\"} "), "3");

    EXPECT_EQ(daemon_->terminate(), 0) << daemon_->log();
    EXPECT_EQ(sha256(memory), memory_hash) << "a clone wrote to the template's memory file";
}

TEST_F(SnapshotTest, SingleUseRestoresAndEditsOrANewKernelMakeANewTemplate) {
    fs::path kernel = dir_ / "vmlinux";
    fs::copy_file(kGuest / "kernel" / "vmlinux", kernel);
    auto fn = write_vm("edits", {.top = "single-use = true\nboot-timeout = 60", .kernel = kernel});
    start_daemon();
    ASSERT_EQ(get("/invoke/" + fn + "/hello")->status, 200) << daemon_->log();
    std::string first = wait_new_template(snapshots(), {}, 120s);
    ASSERT_FALSE(first.empty()) << daemon_->log();

    // single-use: every request is a cold start, now a restore. The clone's clock was set from
    // the host's when it was restored (the template's stopped when it was saved). A TCG guest's
    // clock falls behind on a loaded host, so it is read right after the restore.
    auto res = get("/invoke/" + fn + "/time");
    ASSERT_TRUE(res);
    EXPECT_EQ(res->status, 200) << res->body;
    EXPECT_NEAR(std::stod(res->body), now_realtime(), 1.0) << "clone clock off";
    EXPECT_EQ(metric("unifaas_cold_starts_total{function=\"" + fn + "\",kind=\"restore\"} "), "1")
        << daemon_->log();

    // An edit of function.toml: the next cold start boots and a new template replaces the old.
    std::ofstream(registry_ / fn / "function.toml", std::ios::app) << "# edited\n";
    ASSERT_EQ(get("/invoke/" + fn + "/hello")->status, 200);
    EXPECT_EQ(metric("unifaas_cold_starts_total{function=\"" + fn + "\",kind=\"boot\"} "), "2");
    std::string second = wait_new_template(snapshots(), {first}, 120s);
    ASSERT_FALSE(second.empty()) << daemon_->log();

    // A touched kernel: the same.
    fs::last_write_time(kernel, fs::file_time_type::clock::now());
    ASSERT_EQ(get("/invoke/" + fn + "/hello")->status, 200);
    EXPECT_EQ(metric("unifaas_cold_starts_total{function=\"" + fn + "\",kind=\"boot\"} "), "3");
    std::string third = wait_new_template(snapshots(), {first, second}, 120s);
    ASSERT_FALSE(third.empty()) << daemon_->log();
    EXPECT_EQ(templates_in(snapshots()), std::set<std::string>{third})
        << "replaced templates are deleted";
}

TEST_F(SnapshotTest, Q35MachineRestoresToo) {
    auto fn = write_vm("q35", {.top = "single-use = true\nboot-timeout = 90",
                               .kernel = kGuest / "kernel" / "bzImage",
                               .hypervisor = "type = \"qemu\""});
    start_daemon();
    ASSERT_EQ(get("/invoke/" + fn + "/hello")->status, 200) << daemon_->log();
    ASSERT_FALSE(wait_new_template(snapshots(), {}, 180s).empty()) << daemon_->log();
    auto res = get("/invoke/" + fn + "/uuid");
    ASSERT_TRUE(res);
    EXPECT_EQ(res->status, 200) << res->body;
    EXPECT_EQ(metric("unifaas_cold_starts_total{function=\"" + fn + "\",kind=\"restore\"} "), "1")
        << daemon_->log();
}

TEST_F(SnapshotTest, GuestWithoutRestoreListenerFallsBackToBoot) {
    // unifaas.restore=off: the guest never answers the restore message.
    auto fn = write_vm("deaf", {.top = "single-use = true\nboot-timeout = 60",
                                .cmdline_extra = "unifaas.restore=off"});
    start_daemon();
    ASSERT_EQ(get("/invoke/" + fn + "/hello")->status, 200) << daemon_->log();
    ASSERT_FALSE(wait_new_template(snapshots(), {}, 120s).empty()) << daemon_->log();
    auto res = get("/invoke/" + fn + "/hello");
    ASSERT_TRUE(res);
    EXPECT_EQ(res->status, 200) << res->body;
    EXPECT_EQ(metric("unifaas_cold_starts_total{function=\"" + fn + "\",kind=\"boot\"} "), "2");
    EXPECT_NE(daemon_->log().find("booting instead"), std::string::npos) << daemon_->log();
}

// kill -9 of the daemon while it saves a template (its device state being written into the
// partial directory): the restarted daemon removes the partial template, uses nothing of it,
// boots, builds a new template and restores from that; nothing of the crash is left.
TEST_F(SnapshotTest, KillDuringTemplateSaveLeavesAUsableStateAfterRestart) {
    auto fn = write_vm("crash", {.top = "single-use = true\nboot-timeout = 60"});
    const fs::path runtime = dir_ / "run";
    start_daemon(runtime);
    PartialTemplateWatch watch(snapshots());
    auto first = std::async(std::launch::async, [&] {
        auto r = daemon_->client().Get("/invoke/" + fn + "/hello");
        return r ? r->status : -1;
    });
    fs::path saving = watch.wait_for("state", 120s);
    ASSERT_FALSE(saving.empty()) << "the template never started saving\n" << daemon_->log();
    daemon_->kill9();
    first.wait();
    EXPECT_TRUE(fs::exists(saving)) << "the save had finished before the kill";
    EXPECT_TRUE(templates_in(snapshots()).empty()) << "a template was complete before the kill";

    start_daemon(runtime);
    EXPECT_FALSE(fs::exists(saving)) << "the partial template survived the restart";
    EXPECT_TRUE(templates_partial().empty());
    EXPECT_NE(daemon_->log().find("removed the partial template"), std::string::npos)
        << daemon_->log();
    fs::path work = runtime / "instances";
    EXPECT_TRUE(!fs::exists(work) || fs::is_empty(work)) << "the crash's working dirs are left";
    EXPECT_EQ(qemu_processes(marker_).size(), 0u) << "qemu outlived the killed daemon";

    ASSERT_EQ(get("/invoke/" + fn + "/hello")->status, 200) << daemon_->log();
    EXPECT_EQ(metric("unifaas_cold_starts_total{function=\"" + fn + "\",kind=\"boot\"} "), "1");
    ASSERT_FALSE(wait_new_template(snapshots(), {}, 120s).empty()) << daemon_->log();
    auto res = get("/invoke/" + fn + "/uuid");
    ASSERT_TRUE(res);
    EXPECT_EQ(res->status, 200) << res->body;
    EXPECT_EQ(metric("unifaas_cold_starts_total{function=\"" + fn + "\",kind=\"restore\"} "), "1")
        << daemon_->log();
}

// The snapshot dir is full (a 4 MiB tmpfs mounted on it): the template's RAM file cannot be
// written, the template is skipped and logged, nothing half-written stays, cold starts keep
// booting, and a build that failed twice is not tried again.
TEST_F(SnapshotTest, FullSnapshotDiskSkipsTheTemplateAndColdStartsKeepBooting) {
    auto fn = write_vm("full", {.top = "single-use = true\nboot-timeout = 60"});
    fs::create_directories(snapshots());
    ASSERT_EQ(::mount("tmpfs", snapshots().c_str(), "tmpfs", MS_NOSUID | MS_NODEV, "size=4m"), 0)
        << std::strerror(errno);
    tmpfs_ = snapshots();
    start_daemon();
    PartialTemplateWatch watch(snapshots());
    for (int i = 1; i <= 3; ++i) {
        auto res = get("/invoke/" + fn + "/hello");
        ASSERT_TRUE(res);
        EXPECT_EQ(res->status, 200) << res->body << daemon_->log();
        EXPECT_EQ(metric("unifaas_cold_starts_total{function=\"" + fn + "\",kind=\"boot\"} "),
                  std::to_string(i));
        if (i < 3) {
            // Each of the first two cold starts tries a template; it fails on the full disk and
            // its partial directory is removed.
            EXPECT_TRUE(watch.wait_removed(static_cast<unsigned>(i), 120s)) << daemon_->log();
        }
        EXPECT_TRUE(templates_in(snapshots()).empty()) << "a template on a full disk";
        EXPECT_TRUE(templates_partial().empty()) << "a half-written template was left";
    }
    EXPECT_EQ(metric("unifaas_cold_starts_total{function=\"" + fn + "\",kind=\"restore\"} "), "0");
    std::string log = daemon_->log();
    std::size_t builds = 0;
    for (auto at = log.find("not built"); at != std::string::npos;
         at = log.find("not built", at + 1)) {
        ++builds;
    }
    EXPECT_EQ(builds, 2u) << "a failing template build is retried once, then left\n" << log;
    std::cout << "[ cause    ] " << log.substr(log.find("not built"), 160) << "\n";
}

}  // namespace
}  // namespace unifaas::test
