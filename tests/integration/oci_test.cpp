// engine = "oci" functions through the whole daemon: real crun running the example's static
// rootfs (build/examples/hello-rootfs), network namespaces and veths made by the daemon inside
// the suite's private network namespace.
#include <httplib.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <future>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "docker_engine.h"
#include "guest_netns_fixture.h"
#include "link_events.h"
#include "registry_fixture.h"

namespace unifaas::test {

PrivateDockerEngine& engine();

namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

const fs::path kRootfs = fs::path(UNIFAAS_BINARY_DIR) / "examples" / "hello-rootfs";

// Processes whose root directory is the example rootfs: the containers of these tests. The
// root is compared by inode (stat through /proc/<pid>/root): its path as readlink shows it is
// "/" once the runtime has pivoted into a mount namespace of its own.
std::vector<pid_t> hello_processes() {
    struct stat rootfs {};
    if (stat(kRootfs.c_str(), &rootfs) != 0) {
        return {};
    }
    return processes_where([&](const fs::path& proc) {
        struct stat root {};
        return stat((proc / "root").c_str(), &root) == 0 && root.st_dev == rootfs.st_dev &&
               root.st_ino == rootfs.st_ino;
    });
}

// Spare shims (unifaas-oci-shim) of the daemon whose runtime dir is `run` (their argv
// names the bundle's pid file under it); zombies have no command line and do not count.
std::vector<pid_t> shim_processes(const fs::path& run) {
    std::string argv_start = std::string("unifaas-oci-shim") + '\0' + run.string() + "/";
    return processes_where([&](const fs::path& proc) {
        return proc_file(proc, "cmdline").find(argv_start) != std::string::npos;
    });
}

// The scheduling policy of a process or thread (/proc/.../stat field 41), -1 when unreadable.
int policy_of(const fs::path& proc) {
    std::string stat = proc_file(proc, "stat");
    std::size_t at = stat.rfind(')');
    if (at == std::string::npos) {
        return -1;
    }
    std::istringstream fields(stat.substr(at + 2));  // field 3 on
    std::string field;
    for (int i = 3; i <= 41 && fields >> field; ++i) {
    }
    return fields ? std::stoi(field) : -1;
}

class OciTest : public RegistryTest {
  protected:
    // Stops the daemon and checks what it made is gone before its runtime dir is removed.
    void TearDown() override {
        if (daemon_ && daemon_->running()) {
            EXPECT_EQ(daemon_->terminate(), 0) << daemon_->log();
            expect_nothing_left(daemon_->runtime_dir());
        }
        RegistryTest::TearDown();
        if (!fixed_run_.empty()) {
            fs::remove_all(fixed_run_);
        }
    }

    // Tests of the `crun run` path have no spares (they count containers and exit statuses);
    // those of spares turn them on.
    void start_daemon(const std::string& extra = "oci-spare-memory = 0") {
        RegistryTest::start_daemon(extra);
    }
    void start_daemon_with_spares() { start_daemon("oci-spare-memory = 256"); }

    // A daemon on a runtime dir that outlives it (for a restart after kill -9).
    void start_daemon_in(const fs::path& run, const std::string& extra = "oci-spare-memory = 0") {
        fixed_run_ = run;
        DaemonProcess::Options o;
        o.registry = registry_;
        o.docker_socket = engine().socket_path();
        o.runtime_dir = run;
        o.extra_config = extra;
        daemon_ = std::make_unique<DaemonProcess>(o);
    }

    // Containers in the runtime's state root (a spare, or an instance's), by instance id.
    std::set<std::string> containers() const {
        std::set<std::string> ids;
        std::error_code ec;
        for (const auto& entry : fs::directory_iterator(daemon_->runtime_dir() / "oci", ec)) {
            std::string name = entry.path().filename();
            if (name.rfind("unifaas-", 0) == 0) {
                ids.insert(name.substr(8));
            }
        }
        return ids;
    }
    // Created containers not started, in the daemon's list: the spares. Created = crun create wrote
    // the init's pid file (the state directory appears earlier); not started = its exec.fifo is
    // still there (starting unlinks it, as crun start does).
    std::set<std::string> spares() {
        std::string log = daemon_->log();
        std::set<std::string> ids;
        for (const auto& id : containers()) {
            // Created is not yet handed to the daemon's spare list: its debug line says so.
            if (init_pid(id) > 0 &&
                fs::exists(daemon_->runtime_dir() / "oci" / ("unifaas-" + id) / "exec.fifo") &&
                log.find("spare container " + id + " ready") != std::string::npos) {
                ids.insert(id);
            }
        }
        for (const auto& instance : instances_of_all()) {
            ids.erase(instance);
        }
        return ids;
    }
    pid_t init_pid(const std::string& id) const {
        std::ifstream file(daemon_->runtime_dir() / "instances" / id / "init.pid");
        pid_t pid = 0;
        file >> pid;
        return pid;
    }
    std::set<std::string> instances_of_all() {
        std::set<std::string> ids;
        auto res = get("/status");
        if (res) {
            for (auto& f : nlohmann::json::parse(res->body)["functions"]) {
                for (auto& i : f["instances"]) {
                    ids.insert(i["id"].get<std::string>());
                }
            }
        }
        return ids;
    }
    // Waits for exactly one spare (bounded) and returns its id ("" when none came).
    std::string one_spare(std::chrono::milliseconds timeout = 15s) {
        std::string id;
        eventually(
            [&] {
                auto s = spares();
                id = s.size() == 1 ? *s.begin() : "";
                return !id.empty();
            },
            timeout);
        return id;
    }
    std::string metrics() {
        auto res = get("/metrics");
        return res ? res->body : "";
    }

    void expect_nothing_left(const fs::path& run) {
        EXPECT_TRUE(interfaces_with_prefix("faasv").empty()) << "veths leaked";
        EXPECT_TRUE(empty_or_missing(run / "netns")) << "namespaces leaked";
        EXPECT_TRUE(empty_or_missing(run / "oci")) << "runtime state leaked";
        EXPECT_TRUE(empty_or_missing(run / "instances")) << "bundles leaked";
        EXPECT_TRUE(hello_processes().empty()) << "container processes leaked";
        EXPECT_TRUE(shim_processes(run).empty()) << "spare shims leaked";
    }

    static bool empty_or_missing(const fs::path& dir) {
        return !fs::exists(dir) || fs::is_empty(dir);
    }

    void add_oci(const std::string& name, const std::string& top = "",
                 const std::string& container_extra = "") {
        write_function(name, top + "\n[container]\nengine = \"oci\"\nimage = \"" +
                                 kRootfs.string() + "\"\nentrypoint = [\"/hello\"]\nmemory = 64\n" +
                                 container_extra + "\n");
    }

    httplib::Result get(const std::string& path) { return daemon_->client().Get(path); }

    fs::path fixed_run_;

    nlohmann::json instances(const std::string& function) {
        return function_instances(*daemon_, function);
    }
};

TEST_F(OciTest, ColdStartThenWarmOnOneInstanceWithItsOwnVeth) {
    ASSERT_TRUE(fs::exists(kRootfs / "hello")) << "example_images not built";
    add_oci("ocihello", "concurrent-requests = 2");
    start_daemon();
    auto cold = get("/invoke/ocihello/echo/x?y=1");
    ASSERT_TRUE(cold);
    ASSERT_EQ(cold->status, 200) << cold->body << daemon_->log();
    auto list = instances("ocihello");
    ASSERT_EQ(list.size(), 1u);
    std::string id = list[0]["id"];
    EXPECT_NE(cold->body.find("instance: " + id), std::string::npos) << cold->body;
    std::string address = list[0]["address"];
    EXPECT_EQ(address.rfind("10.100.", 0), 0u) << address;
    // The host end of its veth is a plain interface here, addressed with the /30's first address.
    auto veths = interfaces_with_prefix("faasv");
    ASSERT_FALSE(veths.empty());
    for (int i = 0; i < 5; ++i) {
        auto warm = get("/invoke/ocihello/hello");
        ASSERT_TRUE(warm);
        EXPECT_EQ(warm->status, 200);
    }
    EXPECT_EQ(instances("ocihello").size(), 1u) << "warm requests started another instance";
    // Its runtime is crun with a private state root, and its bundle has a read-only root.
    auto bundle = daemon_->runtime_dir() / "instances" / id / "config.json";
    ASSERT_TRUE(fs::exists(bundle));
    auto config = nlohmann::json::parse(std::ifstream(bundle));
    EXPECT_EQ(config["root"]["readonly"], true);
    EXPECT_EQ(config["process"]["args"][0], "/hello");
    EXPECT_TRUE(config["annotations"].contains("run.oci.seccomp_bpf_data"));
    EXPECT_TRUE(fs::exists(daemon_->runtime_dir() / "oci" / ("unifaas-" + id)));
    // crun installed the precompiled filter: the function runs under seccomp (mode 2).
    auto pids = hello_processes();
    ASSERT_EQ(pids.size(), 1u);
    std::ifstream status("/proc/" + std::to_string(pids[0]) + "/status");
    std::string line;
    std::string seccomp;
    while (std::getline(status, line)) {
        if (line.rfind("Seccomp:", 0) == 0) {
            seccomp = line;
        }
    }
    EXPECT_EQ(seccomp, "Seccomp:\t2");
    // The daemon's invocation loops run SCHED_BATCH (http-scheduling's default); the function
    // crun started does not.
    EXPECT_EQ(policy_of("/proc/" + std::to_string(pids[0])), SCHED_OTHER);
    int loops = 0;
    for (const auto& task :
         fs::directory_iterator("/proc/" + std::to_string(daemon_->pid()) + "/task")) {
        if (proc_file(task.path(), "comm").rfind("http-", 0) == 0) {
            ++loops;
            EXPECT_EQ(policy_of(task.path()), SCHED_BATCH) << task.path();
        }
    }
    EXPECT_GT(loops, 0) << "no http-N thread in the daemon";
}

TEST_F(OciTest, SingleUseAndKeepaliveStopTheContainer) {
    add_oci("ocionce", "single-use = true");
    add_oci("ocibrief", "keepalive = 1");
    start_daemon();
    for (int i = 0; i < 3; ++i) {
        auto res = get("/invoke/ocionce/hello");
        ASSERT_TRUE(res);
        EXPECT_EQ(res->status, 200) << res->body;
    }
    EXPECT_TRUE(eventually([&] { return instances("ocionce").empty(); }, 10s));
    ASSERT_EQ(get("/invoke/ocibrief/hello")->status, 200);
    auto answered = std::chrono::steady_clock::now();
    EXPECT_TRUE(eventually([&] { return instances("ocibrief").empty(); }, 10s));
    EXPECT_GE(std::chrono::steady_clock::now() - answered, 900ms);
    EXPECT_TRUE(eventually([] { return hello_processes().empty(); }, 10s));
}

TEST_F(OciTest, TwentyConcurrentColdStartsGetDistinctAddresses) {
    add_oci("ociburst", "max-instances = 20\nkeepalive = 30");
    start_daemon();
    std::vector<std::future<std::pair<int, std::string>>> calls;
    for (int i = 0; i < 20; ++i) {
        calls.push_back(std::async(std::launch::async, [&] {
            auto r = daemon_->client().Get("/invoke/ociburst/sleep?ms=1500");
            return r ? std::pair{r->status, r->body} : std::pair{-1, std::string()};
        }));
    }
    for (auto& call : calls) {
        auto [status, body] = call.get();
        EXPECT_EQ(status, 200) << body;
    }
    auto list = instances("ociburst");
    EXPECT_EQ(list.size(), 20u);
    std::set<std::string> addresses;
    for (const auto& instance : list) {
        addresses.insert(instance["address"].get<std::string>());
    }
    EXPECT_EQ(addresses.size(), list.size()) << "two containers share an address";
}

// The burst: 100 simultaneous single-use invocations, at most 10 containers at a time.
// Every one is answered by a container of its own; afterwards nothing is left (TearDown).
// About 5 s on an idle 2-core machine.
TEST_F(OciTest, BurstOf100SingleUseWithTenInstancesAllAnswered) {
    add_oci("ocionceburst", "single-use = true\nmax-instances = 10\nqueue-timeout = 120");
    start_daemon();
    std::vector<std::future<std::pair<int, std::string>>> calls;
    for (int i = 0; i < 100; ++i) {
        calls.push_back(std::async(std::launch::async, [&] {
            auto r = daemon_->client(150s).Get("/invoke/ocionceburst/hello");
            return r ? std::pair{r->status, r->body} : std::pair{-1, std::string()};
        }));
    }
    int answered = 0;
    for (auto& call : calls) {
        auto [status, body] = call.get();
        EXPECT_EQ(status, 200) << body;
        answered += status == 200 ? 1 : 0;
    }
    EXPECT_EQ(answered, 100);
    auto metrics = get("/metrics");
    ASSERT_TRUE(metrics);
    EXPECT_NE(metrics->body.find(
                  "unifaas_cold_starts_total{function=\"ocionceburst\",kind=\"boot\"} 100\n"),
              std::string::npos)
        << "not one container per invocation";
    EXPECT_TRUE(eventually([&] { return instances("ocionceburst").empty(); }, 30s));
}

// runtime = "runc": the same function through runc (its own cgroupfs handling, the seccomp
// filter as a runtime-spec section instead of crun's precompiled annotation).
TEST_F(OciTest, RuncRunsTheSameFunction) {
    if (std::system("runc --version >/dev/null 2>&1") != 0) {
        GTEST_SKIP() << "runc is not installed (tests/lib/install-deps.sh installs it)";
    }
    add_oci("ocirunc", "single-use = true", "runtime = \"runc\"");
    start_daemon();
    auto call = std::async(std::launch::async, [&] {
        auto r = daemon_->client().Get("/invoke/ocirunc/sleep?ms=2000");
        return r ? std::pair{r->status, r->body} : std::pair{-1, std::string()};
    });
    // While the request sleeps in the container: runc's instance, with the filter as a section.
    EXPECT_TRUE(eventually([] { return !hello_processes().empty(); }, 10s));
    auto list = instances("ocirunc");
    ASSERT_EQ(list.size(), 1u);
    std::string id = list[0]["id"];
    EXPECT_NE(list[0]["sandbox"].get<std::string>().find("runc pid"), std::string::npos)
        << list[0].dump();
    auto config = nlohmann::json::parse(
        std::ifstream(daemon_->runtime_dir() / "instances" / id / "config.json"));
    EXPECT_FALSE(config.contains("annotations"));
    EXPECT_EQ(config["linux"]["seccomp"]["defaultAction"], "SCMP_ACT_ALLOW");
    auto [status, body] = call.get();
    EXPECT_EQ(status, 200) << body << daemon_->log();
    EXPECT_TRUE(eventually([&] { return instances("ocirunc").empty(); }, 10s));
    EXPECT_TRUE(eventually([] { return hello_processes().empty(); }, 10s));
}

// Started by `crun run` (spares off) or from a spare (its shim ends as the init ended): the same
// 502 texts (exit code, signal, OOM), with the last output lines; a used spare is replaced.
class OciExitTest : public OciTest, public ::testing::WithParamInterface<bool> {};

TEST_P(OciExitTest, EarlyExitCrashAndOomAnswer502NamingTheCause) {
    const bool from_spare = GetParam();
    add_oci("ociquits", "[env]\nHELLO_EXIT_BEFORE_READY = \"1\"\n");
    add_oci("ocihog", "[env]\nHELLO_ALLOCATE_MIB = \"256\"\n");
    add_oci("ocisegv", "[env]\nHELLO_CRASH_BEFORE_READY = \"1\"\n");
    start_daemon(from_spare ? "oci-spare-memory = 256" : "oci-spare-memory = 0");
    std::set<std::string> made;
    if (from_spare) {
        ASSERT_TRUE(eventually([&] { return spares().size() == 3; }, 20s)) << daemon_->log();
        made = spares();
    }
    auto quits = get("/invoke/ociquits/hello");
    ASSERT_TRUE(quits);
    EXPECT_EQ(quits->status, 502);
    EXPECT_NE(quits->body.find("ociquits"), std::string::npos) << quits->body;
    EXPECT_NE(quits->body.find("container exited with status 3 (crun)"), std::string::npos)
        << quits->body;
    EXPECT_NE(quits->body.find("HELLO_EXIT_BEFORE_READY=1"), std::string::npos)
        << "no output lines: " << quits->body;
    auto hog = get("/invoke/ocihog/hello");
    ASSERT_TRUE(hog);
    EXPECT_EQ(hog->status, 502);
    EXPECT_NE(hog->body.find("container killed by SIGKILL, most likely out of memory (limit 64 "
                             "MiB) (crun)"),
              std::string::npos)
        << hog->body;
    auto crash = get("/invoke/ocisegv/hello");
    ASSERT_TRUE(crash);
    EXPECT_EQ(crash->status, 502);
    EXPECT_NE(crash->body.find("container killed by signal 11 (Segmentation fault) (crun)"),
              std::string::npos)
        << crash->body;
    EXPECT_NE(crash->body.find("HELLO_CRASH_BEFORE_READY=1"), std::string::npos)
        << "no output lines: " << crash->body;
    for (const char* fn : {"ociquits", "ocihog", "ocisegv"}) {
        EXPECT_TRUE(eventually([&] { return instances(fn).empty(); }, 10s)) << fn;
    }
    if (from_spare) {
        EXPECT_NE(
            metrics().find("unifaas_cold_starts_total{function=\"ociquits\",kind=\"spare\"} 1"),
            std::string::npos)
            << metrics();
        EXPECT_NE(metrics().find("unifaas_cold_starts_total{function=\"ocihog\",kind=\"spare\"} 1"),
                  std::string::npos)
            << metrics();
        EXPECT_NE(
            metrics().find("unifaas_cold_starts_total{function=\"ocisegv\",kind=\"spare\"} 1"),
            std::string::npos)
            << metrics();
        // Every used spare is replaced, by a new one.
        EXPECT_TRUE(eventually(
            [&] {
                auto now = spares();
                if (now.size() != 3) {
                    return false;
                }
                for (const auto& id : now) {
                    if (made.contains(id)) {
                        return false;
                    }
                }
                return true;
            },
            20s))
            << daemon_->log();
        EXPECT_TRUE(
            eventually([&] { return shim_processes(daemon_->runtime_dir()).size() == 3; }, 10s))
            << "one shim per spare, none of the ended instances: "
            << shim_processes(daemon_->runtime_dir()).size();
    }
    EXPECT_TRUE(eventually([&] { return containers().size() == (from_spare ? 3u : 0u); }, 10s))
        << "containers of the ended instances left";
    // TearDown: nothing left (veths, namespaces, state, bundles, processes, shims).
}

INSTANTIATE_TEST_SUITE_P(Oci, OciExitTest, ::testing::Values(false, true),
                         [](const auto& info) { return info.param ? "FromSpare" : "CrunRun"; });

TEST_F(OciTest, BadInputIsAClearErrorAndOthersKeepServing) {
    add_oci("ocinoruntime", "", "runtime = \"no-such-runtime\"");
    write_function("ocinoentry",
                   "[container]\nengine = \"oci\"\nimage = \"" + kRootfs.string() + "\"\n");
    write_function("ocibadengine", "[container]\nengine = \"rkt\"\nimage = \"x\"\n");
    add_oci("ocifine");
    start_daemon();
    auto noruntime = get("/invoke/ocinoruntime/hello");
    ASSERT_TRUE(noruntime);
    EXPECT_EQ(noruntime->status, 500);
    EXPECT_NE(noruntime->body.find("OCI runtime \"no-such-runtime\" not found"), std::string::npos)
        << noruntime->body;
    auto noentry = get("/invoke/ocinoentry/hello");
    ASSERT_TRUE(noentry);
    EXPECT_EQ(noentry->status, 500);
    EXPECT_NE(noentry->body.find("has no entrypoint"), std::string::npos) << noentry->body;
    auto badengine = get("/invoke/ocibadengine/hello");
    ASSERT_TRUE(badengine);
    EXPECT_EQ(badengine->status, 500);
    EXPECT_NE(badengine->body.find("container.engine: unknown engine \"rkt\""), std::string::npos)
        << badengine->body;
    EXPECT_EQ(get("/invoke/ocifine/hello")->status, 200);
}

TEST_F(OciTest, DockerAndOciFunctionsSideBySide) {
    add_hello("dockerhello");
    add_oci("ocihello");
    start_daemon();
    auto docker = get("/invoke/dockerhello/hello");
    auto oci = get("/invoke/ocihello/hello");
    ASSERT_TRUE(docker && oci);
    EXPECT_EQ(docker->status, 200) << docker->body;
    EXPECT_EQ(oci->status, 200) << oci->body;
    EXPECT_EQ(docker->body, oci->body);
}

// A docker-archive (`docker save` of the suite's image) is unpacked once into the cache; its
// ENTRYPOINT comes from the image config.
TEST_F(OciTest, DockerArchiveIsUnpackedOnceAndItsEntrypointUsed) {
    fs::path archive = registry_ / "hello.tar";
    run_command("docker -H unix://" + engine().socket_path() + " save -o " + archive.string() +
                " " + engine().image_name() + " 2>&1");
    ASSERT_TRUE(fs::exists(archive));
    write_function("ociarchive", "single-use = true\n[container]\nengine = \"oci\"\nimage = \"" +
                                     archive.string() + "\"\n");
    start_daemon();
    for (int i = 0; i < 2; ++i) {
        auto res = get("/invoke/ociarchive/hello");
        ASSERT_TRUE(res);
        EXPECT_EQ(res->status, 200) << res->body;
    }
    fs::path images = daemon_->runtime_dir() / "images";
    std::vector<fs::path> cached;
    for (const auto& entry : fs::directory_iterator(images)) {
        cached.push_back(entry.path());
    }
    ASSERT_EQ(cached.size(), 1u);
    EXPECT_EQ(cached[0].filename().string().rfind("sha256-", 0), 0u);
    EXPECT_TRUE(fs::exists(cached[0] / "rootfs" / "hello"));
}

TEST_F(OciTest, Kill9ThenRestartLeavesNothing) {
    add_oci("ocicrash", "concurrent-requests = 1\nmax-instances = 3");
    fs::path run = registry_.string() + "-run";
    start_daemon_in(run);
    std::vector<std::future<int>> calls;
    for (int i = 0; i < 3; ++i) {
        calls.push_back(std::async(std::launch::async, [&] {
            auto r = daemon_->client().Get("/invoke/ocicrash/sleep?ms=500");
            return r ? r->status : -1;
        }));
    }
    for (auto& call : calls) {
        EXPECT_EQ(call.get(), 200);
    }
    ASSERT_EQ(instances("ocicrash").size(), 3u);
    daemon_->kill9();
    EXPECT_FALSE(interfaces_with_prefix("faasv").empty()) << "a crashed daemon cannot clean up";
    EXPECT_FALSE(fs::is_empty(run / "oci"));
    start_daemon_in(run);
    EXPECT_NE(daemon_->log().find("left behind by an earlier run"), std::string::npos)
        << daemon_->log();
    EXPECT_TRUE(interfaces_with_prefix("faasv").empty());
    EXPECT_TRUE(empty_or_missing(run / "oci"));
    EXPECT_TRUE(empty_or_missing(run / "netns"));
    EXPECT_TRUE(eventually([] { return hello_processes().empty(); }, 10s));
}

// ---- Spares: containers created ahead, started by the daemon writing their exec.fifo ---------

// A cold start is served by the spare made at load (same instance id, the container's own
// UNIFAAS_INSTANCE), and the next spare is made afterwards.
TEST_F(OciTest, SpareServesTheColdStartAndTheNextIsMade) {
    add_oci("ocispare", "concurrent-requests = 2");
    start_daemon_with_spares();
    std::string spare = one_spare();
    ASSERT_FALSE(spare.empty()) << "no spare made at load\n" << daemon_->log();
    auto cold = get("/invoke/ocispare/echo/x");
    ASSERT_TRUE(cold);
    ASSERT_EQ(cold->status, 200) << cold->body << daemon_->log();
    EXPECT_NE(cold->body.find("instance: " + spare), std::string::npos) << cold->body;
    auto list = instances("ocispare");
    ASSERT_EQ(list.size(), 1u);
    EXPECT_EQ(list[0]["id"], spare);
    EXPECT_NE(list[0]["sandbox"].get<std::string>().find("spare"), std::string::npos)
        << list[0].dump();
    EXPECT_NE(metrics().find("unifaas_cold_starts_total{function=\"ocispare\",kind=\"spare\"} 1\n"),
              std::string::npos)
        << metrics();
    std::string next = one_spare();
    EXPECT_FALSE(next.empty()) << "no spare made after the first was used";
    EXPECT_NE(next, spare);
    // The started spare runs the function (entrypoint exec'd) under the precompiled filter.
    EXPECT_TRUE(eventually([] { return hello_processes().size() == 2; }, 10s))
        << "not the instance and the new spare's init: " << hello_processes().size();
    EXPECT_EQ(get("/invoke/ocispare/hello")->status, 200) << "warm";
    EXPECT_EQ(instances("ocispare").size(), 1u);
}

// Single-use: each request takes a spare when one is ready, and every container is gone after.
TEST_F(OciTest, SingleUseWithSparesLeavesOnlyTheNextSpare) {
    add_oci("ocisparonce", "single-use = true");
    start_daemon_with_spares();
    for (int i = 0; i < 3; ++i) {
        ASSERT_FALSE(one_spare().empty()) << daemon_->log();
        auto res = get("/invoke/ocisparonce/hello");
        ASSERT_TRUE(res);
        EXPECT_EQ(res->status, 200) << res->body;
    }
    EXPECT_NE(
        metrics().find("unifaas_cold_starts_total{function=\"ocisparonce\",kind=\"spare\"} 3\n"),
        std::string::npos)
        << metrics();
    EXPECT_TRUE(eventually([&] { return instances("ocisparonce").empty(); }, 10s));
    EXPECT_TRUE(eventually([&] { return containers().size() == 1; }, 15s))
        << "only the next spare should be left";
    // TearDown: the daemon's stop removes the spare too (veth, namespace, state, bundle, init).
}

// Spares follow the registry as it changes, without a reload: a function removed loses its
// spare, a redefined one gets a spare of its new definition, and one added gets its own before
// its first request (which it then serves). Nothing of the old spares is left.
TEST_F(OciTest, SparesFollowTheRegistryWithoutAReload) {
    add_oci("ocigone");
    add_oci("ocichanged");
    start_daemon_with_spares();
    ASSERT_TRUE(eventually([&] { return spares().size() == 2; }, 20s)) << daemon_->log();
    std::set<std::string> before = spares();
    fs::remove_all(registry_ / "ocigone");
    add_oci("ocichanged", "keepalive = 7");
    add_oci("ociadded");
    // Two spares, both made after the changes (none of the two before).
    std::set<std::string> now;
    EXPECT_TRUE(eventually(
        [&] {
            now = spares();
            return now.size() == 2 && !before.contains(*now.begin()) &&
                   !before.contains(*now.rbegin());
        },
        20s))
        << daemon_->log();
    EXPECT_TRUE(eventually([] { return hello_processes().size() == 2; }, 10s))
        << "inits of removed spares left: " << hello_processes().size();
    EXPECT_TRUE(eventually([&] { return shim_processes(daemon_->runtime_dir()).size() == 2; }, 10s))
        << "shims of removed spares left: " << shim_processes(daemon_->runtime_dir()).size();
    std::set<std::string> served;
    for (const std::string function : {"ocichanged", "ociadded"}) {
        auto res = get("/invoke/" + function + "/echo/x");
        ASSERT_TRUE(res);
        EXPECT_EQ(res->status, 200) << res->body;
        for (const auto& id : now) {
            if (res->body.find("instance: " + id) != std::string::npos) {
                served.insert(id);
            }
        }
        EXPECT_NE(metrics().find("unifaas_cold_starts_total{function=\"" + function +
                                 "\",kind=\"spare\"} 1\n"),
                  std::string::npos)
            << metrics();
    }
    EXPECT_EQ(served, now) << "each function's first request is served by its own spare";
}

// A spare whose init died before use is noticed (pidfd), removed and replaced; the cold start
// that follows is served by the replacement.
TEST_F(OciTest, SpareWhoseInitDiedIsReplaced) {
    add_oci("ocisparedies");
    start_daemon_with_spares();
    std::string spare = one_spare();
    ASSERT_FALSE(spare.empty()) << daemon_->log();
    pid_t init = init_pid(spare);
    ASSERT_GT(init, 0);
    ASSERT_EQ(::kill(init, SIGKILL), 0);
    std::string replacement;
    EXPECT_TRUE(eventually(
        [&] {
            auto now = spares();
            replacement = now.size() == 1 ? *now.begin() : "";
            return !replacement.empty() && replacement != spare;
        },
        15s))
        << daemon_->log();
    EXPECT_FALSE(fs::exists(daemon_->runtime_dir() / "instances" / spare)) << "bundle left";
    auto res = get("/invoke/ocisparedies/echo/x");
    ASSERT_TRUE(res);
    EXPECT_EQ(res->status, 200) << res->body;
    EXPECT_NE(res->body.find("instance: " + replacement), std::string::npos) << res->body;
}

// kill -9 of a daemon holding a spare and an instance started from a spare: their shims die
// with it (PR_SET_PDEATHSIG); the next start removes the rest (state, namespace, veth, init).
TEST_F(OciTest, Kill9WithASpareThenRestartLeavesNothing) {
    add_oci("ocisparecrash");
    fs::path run = registry_.string() + "-run";
    start_daemon_in(run, "oci-spare-memory = 256");
    std::string first = one_spare();
    ASSERT_FALSE(first.empty()) << daemon_->log();
    ASSERT_EQ(get("/invoke/ocisparecrash/hello")->status, 200);
    ASSERT_TRUE(eventually(
        [&] {
            std::string next = one_spare();
            return !next.empty() && next != first;
        },
        15s))
        << daemon_->log();
    EXPECT_EQ(shim_processes(run).size(), 2u) << "a shim per spare and per instance from one";
    daemon_->kill9();
    EXPECT_FALSE(hello_processes().empty()) << "a crashed daemon's spare is still there";
    EXPECT_TRUE(eventually([&] { return shim_processes(run).empty(); }, 10s))
        << "shims outlived the daemon";
    start_daemon_in(run);  // without spares: nothing new is made
    EXPECT_TRUE(interfaces_with_prefix("faasv").empty());
    EXPECT_TRUE(empty_or_missing(run / "oci"));
    EXPECT_TRUE(empty_or_missing(run / "netns"));
    EXPECT_TRUE(empty_or_missing(run / "instances"));
    EXPECT_TRUE(eventually([] { return hello_processes().empty(); }, 10s));
}

}  // namespace
}  // namespace unifaas::test
