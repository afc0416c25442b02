// systemd integration without systemd as PID 1:
// - ScopeManager's whole D-Bus conversation against a stand-in manager on a private system bus
//   (properties, waiting for JobRemoved, failures, timeouts, concurrency, StopUnit, accounting);
// - DockerBackend's cgroup parent against the private engine (cgroupfs driver here);
// - the daemon under systemd-socket-activate with its two named sockets in an order that only
//   names can resolve, and its one-line explanation of why it runs without scopes.
// Real scopes (StartTransientUnit on systemd) are the nspawn end-to-end test's job.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <future>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <sstream>
#include <thread>

#include <gtest/gtest.h>
#include <httplib.h>

#include "daemon_process.h"
#include "docker_engine.h"
#include "fake_systemd.h"
#include "sandbox/docker_backend.h"
#include "sandbox/vm_common.h"
#include "systemd/scope_manager.h"

namespace unifaas::test {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

constexpr std::uint64_t MiB = 1024 * 1024;

// Sets an environment variable for the test's duration.
class ScopedEnv {
  public:
    ScopedEnv(const char* name, const std::string& value) : name_(name) {
        if (const char* old = std::getenv(name)) {
            old_ = old;
            had_ = true;
        }
        setenv(name, value.c_str(), 1);
    }
    ~ScopedEnv() {
        if (had_) {
            setenv(name_, old_.c_str(), 1);
        } else {
            unsetenv(name_);
        }
    }

  private:
    const char* name_;
    std::string old_;
    bool had_ = false;
};

class ScopeManagerTest : public ::testing::Test {
  protected:
    std::unique_ptr<ScopeManager> connect(std::chrono::milliseconds timeout = 5000ms) {
        ScopeManager::Options options;
        options.require_booted = false;  // the stand-in manager is not PID 1
        options.timeout = timeout;
        auto scopes = ScopeManager::connect(reason_, options);
        EXPECT_TRUE(scopes) << reason_;
        return scopes;
    }

    PermissiveBus bus_;
    ScopedEnv env_{"DBUS_SYSTEM_BUS_ADDRESS", bus_.address()};
    std::string reason_;
};

TEST_F(ScopeManagerTest, StartsTheScopeWithItsPropertiesAndWaitsForTheJob) {
    FakeSystemd::Behaviour slow;
    slow.job_delay = 300ms;
    FakeSystemd systemd(bus_.address(), slow);
    auto scopes = connect();
    ASSERT_TRUE(scopes);
    EXPECT_EQ(scopes->version(), "252-fake");

    auto begin = Clock::now();
    auto scope = scopes->create("my-fn", "0123456789ab", 4242, scope_memory_max(128));
    EXPECT_GE(Clock::now() - begin, 300ms) << "returned before the job was removed";
    EXPECT_EQ(scope->name(), "unifaas-my\\x2dfn-0123456789ab.scope");

    auto starts = systemd.starts();
    ASSERT_EQ(starts.size(), 1u);
    const auto& call = starts[0];
    EXPECT_EQ(call.unit, scope->name());
    EXPECT_EQ(call.mode, "fail");
    std::map<std::string, std::string> expected = {
        {"PIDs", "au:4242"},
        {"Description", "s:unifaas my-fn instance 0123456789ab"},
        {"Slice", "s:unifaas.slice"},
        {"CPUAccounting", "b:true"},
        {"MemoryAccounting", "b:true"},
        {"TasksAccounting", "b:true"},
        {"MemoryMax", "t:" + std::to_string((128 + 13 + 64) * MiB)},
        {"CollectMode", "s:inactive-or-failed"},
    };
    EXPECT_EQ(call.properties, expected);
    EXPECT_EQ(call.aux_signature, "a(sa(sv))");
    EXPECT_EQ(call.aux_count, 0u);
    EXPECT_EQ(systemd.units(), std::vector<std::string>{scope->name()});

    std::string name = scope->name();
    scope.reset();
    auto stops = systemd.stops();
    ASSERT_EQ(stops.size(), 1u);
    EXPECT_EQ(stops[0].unit, name);
    EXPECT_EQ(stops[0].mode, "replace");
    EXPECT_TRUE(systemd.units().empty());
}

TEST_F(ScopeManagerTest, JobRemovedBeforeTheReplyIsNotMissed) {
    FakeSystemd::Behaviour early;
    early.job_removed_before_reply = true;
    FakeSystemd systemd(bus_.address(), early);
    auto scopes = connect(3000ms);
    ASSERT_TRUE(scopes);
    auto begin = Clock::now();
    auto scope = scopes->create("hello", "aaaaaaaaaaaa", 4242, 256 * MiB);
    EXPECT_LT(Clock::now() - begin, 1000ms);
}

TEST_F(ScopeManagerTest, ConcurrentStartsDoNotWaitForEachOther) {
    FakeSystemd::Behaviour slow;
    slow.job_delay = 400ms;
    FakeSystemd systemd(bus_.address(), slow);
    auto scopes = connect();
    ASSERT_TRUE(scopes);
    constexpr int kStarts = 8;
    auto begin = Clock::now();
    std::vector<std::future<std::unique_ptr<Scope>>> futures;
    for (int i = 0; i < kStarts; ++i) {
        futures.push_back(std::async(std::launch::async, [&, i] {
            return scopes->create("hello", "00000000000" + std::to_string(i), 1000 + i, 64 * MiB);
        }));
    }
    std::set<std::string> names;
    std::vector<std::unique_ptr<Scope>> held;
    for (auto& f : futures) {
        held.push_back(f.get());
        names.insert(held.back()->name());
    }
    auto took = Clock::now() - begin;
    EXPECT_EQ(names.size(), static_cast<std::size_t>(kStarts));
    EXPECT_LT(took, 1500ms) << "starts waited for each other (serial: " << kStarts * 400 << " ms)";
    EXPECT_EQ(systemd.units().size(), static_cast<std::size_t>(kStarts));
    held.clear();
    EXPECT_EQ(systemd.stops().size(), static_cast<std::size_t>(kStarts));
}

TEST_F(ScopeManagerTest, FailedJobIsAnErrorNamingTheUnit) {
    FakeSystemd::Behaviour failing;
    failing.job_result = "failed";
    FakeSystemd systemd(bus_.address(), failing);
    auto scopes = connect();
    ASSERT_TRUE(scopes);
    try {
        scopes->create("hello", "bbbbbbbbbbbb", 4242, 64 * MiB);
        FAIL() << "no error";
    } catch (const ScopeError& e) {
        std::string what = e.what();
        EXPECT_NE(what.find("unifaas-hello-bbbbbbbbbbbb.scope"), std::string::npos) << what;
        EXPECT_NE(what.find("\"failed\""), std::string::npos) << what;
    }
    // The sandbox seam turns it into a 502 for the waiting requests.
    InstanceContext ctx;
    ctx.instance_id = "cccccccccccc";
    auto spec = std::make_shared<FunctionSpec>();
    spec->name = "hello";
    ctx.spec = spec;
    try {
        start_instance_scope(scopes.get(), ctx, 4242, 64 * MiB);
        FAIL() << "no error";
    } catch (const SandboxError& e) {
        EXPECT_EQ(e.http_status(), 502);
        EXPECT_NE(std::string(e.what()).find("unifaas-hello-cccccccccccc.scope"),
                  std::string::npos);
    }
    EXPECT_EQ(start_instance_scope(nullptr, ctx, 4242, 64 * MiB), nullptr);
}

TEST_F(ScopeManagerTest, JobThatNeverEndsTimesOutAndIsStopped) {
    FakeSystemd::Behaviour silent;
    silent.send_job_removed = false;
    FakeSystemd systemd(bus_.address(), silent);
    auto scopes = connect(500ms);
    ASSERT_TRUE(scopes);
    auto begin = Clock::now();
    try {
        scopes->create("hello", "dddddddddddd", 4242, 64 * MiB);
        FAIL() << "no error";
    } catch (const ScopeError& e) {
        EXPECT_NE(std::string(e.what()).find("did not finish in time"), std::string::npos)
            << e.what();
    }
    auto took = Clock::now() - begin;
    EXPECT_GE(took, 450ms);
    EXPECT_LT(took, 2500ms);
    ASSERT_TRUE(systemd.wait_for_stops(1, 2s));
    EXPECT_EQ(systemd.stops()[0].unit, "unifaas-hello-dddddddddddd.scope");
}

TEST_F(ScopeManagerTest, ErrorsOfTheManagerCarryTheirDbusName) {
    FakeSystemd systemd(bus_.address());
    auto scopes = connect();
    ASSERT_TRUE(scopes);
    auto first = scopes->create("hello", "eeeeeeeeeeee", 4242, 64 * MiB);
    try {
        scopes->create("hello", "eeeeeeeeeeee", 4243, 64 * MiB);
        FAIL() << "no error";
    } catch (const ScopeError& e) {
        EXPECT_EQ(e.dbus_error(), "org.freedesktop.systemd1.UnitExists") << e.what();
    }
}

TEST_F(ScopeManagerTest, StoppingAUnitSystemdAlreadyCollectedIsQuiet) {
    FakeSystemd systemd(bus_.address());
    auto scopes = connect();
    ASSERT_TRUE(scopes);
    auto scope = scopes->create("hello", "ffffffffffff", 4242, 64 * MiB);
    systemd.collect(scope->name());  // the scope emptied when its process was killed
    EXPECT_NO_THROW(scope.reset());
    EXPECT_EQ(systemd.stops().size(), 1u);
}

TEST_F(ScopeManagerTest, ScopesOutliveTheirManager) {
    FakeSystemd systemd(bus_.address());
    auto scopes = connect();
    ASSERT_TRUE(scopes);
    auto scope = scopes->create("hello", "abcabcabcabc", 4242, 64 * MiB);
    scopes.reset();
    scope.reset();
    ASSERT_EQ(systemd.stops().size(), 1u);
    EXPECT_EQ(systemd.stops()[0].unit, "unifaas-hello-abcabcabcabc.scope");
}

TEST_F(ScopeManagerTest, Accounting) {
    FakeSystemd::Behaviour counters;
    counters.memory_current = 200 * MiB;
    counters.cpu_usage_nsec = 1500000000;
    counters.tasks_current = 5;
    FakeSystemd systemd(bus_.address(), counters);
    auto scopes = connect();
    ASSERT_TRUE(scopes);
    auto scope = scopes->create("hello", "121212121212", 4242, 64 * MiB);
    ScopeAccounting a = scopes->accounting(scope->name());
    EXPECT_EQ(a.memory_current, 200 * MiB);
    EXPECT_EQ(a.cpu_usage_nsec, 1500000000u);
    EXPECT_EQ(a.tasks_current, 5u);
    try {
        scopes->accounting("unifaas-nope-000000000000.scope");
        FAIL() << "no error";
    } catch (const ScopeError& e) {
        EXPECT_EQ(e.dbus_error(), "org.freedesktop.systemd1.NoSuchUnit") << e.what();
    }
}

TEST_F(ScopeManagerTest, ConnectExplainsWhatIsMissing) {
    ScopeManager::Options options;
    options.require_booted = false;
    options.timeout = 2000ms;
    std::string reason;
    // The bus is there, nobody owns org.freedesktop.systemd1.
    EXPECT_EQ(ScopeManager::connect(reason, options), nullptr);
    EXPECT_NE(reason.find("systemd does not answer on the system bus"), std::string::npos)
        << reason;
    // No bus at all.
    ScopedEnv nowhere("DBUS_SYSTEM_BUS_ADDRESS", "unix:path=/nonexistent/bus");
    reason.clear();
    EXPECT_EQ(ScopeManager::connect(reason, options), nullptr);
    EXPECT_NE(reason.find("cannot connect to the system bus"), std::string::npos) << reason;
    // Not booted with systemd: refused before the bus is even tried.
    struct stat st {};
    if (stat("/run/systemd/system", &st) != 0) {
        reason.clear();
        EXPECT_EQ(ScopeManager::connect(reason), nullptr);
        EXPECT_EQ(reason, "systemd is not the init system (no /run/systemd/system)");
    }
}

// --- Docker: containers in the instances' slice ---

// Removes a test slice's cgroup directories (left by the cgroupfs driver) from every hierarchy.
void remove_cgroup_dirs(const std::string& relative) {
    std::error_code ec;
    for (const auto& hierarchy : fs::directory_iterator("/sys/fs/cgroup", ec)) {
        fs::path dir = hierarchy.path() / relative;
        if (fs::is_directory(dir, ec)) {
            ::rmdir(dir.c_str());
        }
    }
}

TEST(DockerSlice, ContainersRunInTheSliceAndNameTheirCgroup) {
    docker::DockerClient client = engine().client();
    std::string driver = client.info().value("CgroupDriver", "");
    if (driver != "cgroupfs") {
        GTEST_SKIP() << "engine cgroup driver " << driver;
    }
    const std::string slice = "unifaas-test.slice";
    auto [cb_fd, cb_port] = listen_ephemeral("0.0.0.0");  // callbacks wait in its backlog
    {
        DockerBackend backend(engine().socket_path(), static_cast<std::uint16_t>(cb_port));
        backend.set_cgroup_parent(slice);
        auto spec = std::make_shared<FunctionSpec>();
        spec->name = "hello";
        ContainerSpec container;
        container.image = engine().image_name();
        container.memory_mib = 64;
        spec->sandbox = container;
        InstanceContext ctx;
        ctx.instance_id = "343434343434";
        ctx.spec = spec;
        ctx.callback_path = "/ready/x";
        auto instance = backend.start(ctx);
        std::string unit = instance->unit();
        ASSERT_EQ(unit.rfind("/" + slice + "/", 0), 0u) << unit;
        // The container's processes are in that cgroup (memory controller, v1 here).
        fs::path procs = fs::path("/sys/fs/cgroup/memory") / unit.substr(1) / "cgroup.procs";
        std::ifstream in(procs);
        std::string first;
        EXPECT_TRUE(in >> first) << procs << " missing or empty";
        instance.reset();
        EXPECT_FALSE(fs::exists(procs.parent_path())) << "the engine left the container's cgroup";
    }
    ::close(cb_fd);
    remove_cgroup_dirs(slice);
}

// --- the daemon ---

class DaemonSystemdTest : public ::testing::Test {
  protected:
    void SetUp() override {
        char tmpl[] = "/tmp/unifaas-sd-XXXXXX";
        ASSERT_NE(mkdtemp(tmpl), nullptr);
        dir_ = tmpl;
        fs::create_directories(dir_ / "registry" / "hello");
        std::ofstream(dir_ / "registry" / "hello" / "function.toml")
            << "[container]\nimage = \"" << engine().image_name() << "\"\nmemory = 64\n";
        fs::create_directories(dir_ / "run");
    }
    void TearDown() override {
        EXPECT_TRUE(engine().unifaas_containers().empty()) << "containers leaked";
        fs::remove_all(dir_);
    }
    fs::path dir_;
};

std::size_t count(const std::string& text, const std::string& needle) {
    std::size_t n = 0;
    for (auto at = text.find(needle); at != std::string::npos; at = text.find(needle, at + 1)) {
        ++n;
    }
    return n;
}

TEST_F(DaemonSystemdTest, SaysOnceWhyItRunsWithoutScopes) {
    struct stat st {};
    if (stat("/run/systemd/system", &st) == 0) {
        GTEST_SKIP() << "systemd is the init system here";
    }
    DaemonProcess::Options o;
    o.registry = dir_ / "registry";
    o.docker_socket = engine().socket_path();
    DaemonProcess daemon(o);
    auto res = daemon.client().Get("/invoke/hello/hello");  // an instance comes and goes
    ASSERT_TRUE(res);
    EXPECT_EQ(res->status, 200);
    EXPECT_EQ(daemon.terminate(), 0);
    std::string log = daemon.log();
    EXPECT_EQ(count(log, "running without transient scopes: "), 1u) << log;
    EXPECT_NE(log.find("running without transient scopes: systemd is not the init system"),
              std::string::npos)
        << log;
}

// A free TCP port on `addr` (bound and released: systemd-socket-activate binds it again).
int free_port(const std::string& addr) {
    auto [fd, port] = listen_ephemeral(addr);
    ::close(fd);
    return port;
}

// The datagram socket READY=1 arrives on.
class NotifyListener {
  public:
    explicit NotifyListener(const fs::path& path) : path_(path) {
        fd_ = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        sockaddr_un addr{};
        addr.sun_family = AF_UNIX;
        std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
        EXPECT_EQ(::bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
    }
    ~NotifyListener() { ::close(fd_); }
    // Messages until one contains `needle`, or "" after the timeout.
    std::string wait_for(const std::string& needle, std::chrono::milliseconds timeout) {
        auto deadline = Clock::now() + timeout;
        for (;;) {
            auto left =
                std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
            pollfd p{fd_, POLLIN, 0};
            if (left.count() <= 0 || ::poll(&p, 1, static_cast<int>(left.count())) <= 0) {
                return "";
            }
            char buf[4096];
            ssize_t n = ::recv(fd_, buf, sizeof(buf), 0);
            std::string m(buf, n > 0 ? static_cast<std::size_t>(n) : 0);
            if (m.find(needle) != std::string::npos) {
                return m;
            }
        }
    }

  private:
    fs::path path_;
    int fd_ = -1;
};

// systemd-socket-activate passes "callback" first and "http" second: only the names tell them
// apart. The first connection (to http) makes it exec the daemon; that request, the readiness
// callback of the instance it starts (to callback) and a second request all have to work.
TEST_F(DaemonSystemdTest, NamedActivatedSocketsEachServeTheirPurpose) {
    if (::access("/usr/bin/systemd-socket-activate", X_OK) != 0) {
        GTEST_SKIP() << "systemd-socket-activate not installed";
    }
    int http_port = free_port("127.0.0.1");
    int callback_port = free_port("0.0.0.0");
    {
        std::ofstream cfg(dir_ / "unifaas.toml");
        cfg << "registry = \"" << (dir_ / "registry").string() << "\"\n"
            << "docker-socket = \"" << engine().socket_path() << "\"\n"
            << "runtime-dir = \"" << (dir_ / "run").string() << "\"\n"
            << "shutdown-grace = 5\n"
            // Would be used if the daemon bound sockets itself: must not be.
            << "listen = \"127.0.0.1:1\"\ncallback-listen = \"127.0.0.1:1\"\n";
    }
    NotifyListener notify(dir_ / "notify");
    std::vector<std::string> args = {
        "/usr/bin/systemd-socket-activate",
        "-l",
        "0.0.0.0:" + std::to_string(callback_port),
        "--fdname=callback",
        "-l",
        "127.0.0.1:" + std::to_string(http_port),
        "--fdname=http",
        "-E",
        "NOTIFY_SOCKET=" + (dir_ / "notify").string(),
        UNIFAAS_DAEMON_PATH,
        "--config",
        (dir_ / "unifaas.toml").string(),
        "--log-level",
        "debug",
    };
    std::vector<char*> argv;
    for (auto& a : args) {
        argv.push_back(a.data());
    }
    argv.push_back(nullptr);
    std::string log_path = (dir_ / "daemon.log").string();
    pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
        int log = ::open(log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        dup2(log, 1);
        dup2(log, 2);
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, nullptr);
        execv(argv[0], argv.data());
        _exit(127);
    }
    auto read_log = [&] {
        std::ifstream in(log_path);
        std::stringstream ss;
        ss << in.rdbuf();
        return ss.str();
    };
    auto stop = [&] {
        ::kill(pid, SIGTERM);
        int status = 0;
        waitpid(pid, &status, 0);
        return status;
    };
    // Wait until both sockets listen (the tool says so on stderr).
    auto deadline = Clock::now() + 10s;
    while (count(read_log(), "Listening on") < 2 && Clock::now() < deadline) {
        std::this_thread::sleep_for(20ms);
    }
    ASSERT_EQ(count(read_log(), "Listening on"), 2u) << read_log();

    httplib::Client client("127.0.0.1", http_port);
    client.set_read_timeout(60, 0);
    auto first = client.Get("/invoke/hello/hello");  // triggers the exec, then a cold start
    EXPECT_NE(notify.wait_for("READY=1", 10s), "") << read_log();
    ASSERT_TRUE(first) << httplib::to_string(first.error()) << "\n" << read_log();
    EXPECT_EQ(first->status, 200) << first->body << "\n" << read_log();
    EXPECT_EQ(first->body, "hello from unifaas\n");
    auto second = client.Get("/healthz");
    ASSERT_TRUE(second);
    EXPECT_EQ(second->status, 200);

    int status = stop();
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status << "\n" << read_log();
    std::string log = read_log();
    EXPECT_NE(log.find("serving invocations on the socket passed by the service manager"),
              std::string::npos)
        << log;
    EXPECT_NE(log.find("call back to "), std::string::npos) << log;
    EXPECT_NE(log.find(":" + std::to_string(callback_port) + "\n"), std::string::npos)
        << "instances were not told the activated callback port\n"
        << log;
}

// One journal entry in the native protocol: "KEY=value\n", or "KEY\n<le64 size><value>\n" for
// values with newlines.
std::map<std::string, std::string> parse_journal_entry(const std::string& d) {
    std::map<std::string, std::string> fields;
    std::size_t at = 0;
    while (at < d.size()) {
        std::size_t nl = d.find('\n', at);
        if (nl == std::string::npos) {
            break;
        }
        std::string line = d.substr(at, nl - at);
        auto eq = line.find('=');
        if (eq != std::string::npos) {
            fields[line.substr(0, eq)] = line.substr(eq + 1);
            at = nl + 1;
            continue;
        }
        std::uint64_t size = 0;
        std::memcpy(&size, d.data() + nl + 1, sizeof(size));
        fields[line] = d.substr(nl + 1 + 8, size);
        at = nl + 1 + 8 + size + 1;
    }
    return fields;
}

using JournalEntry = std::map<std::string, std::string>;

// The daemon with its stderr "connected to the journal" (JOURNAL_STREAM names it) and, in a mount
// namespace of its own, a stand-in journald socket at /run/systemd/journal/socket, read while the
// daemon runs as journald would (a full queue would block its logging). It binds its own sockets.
class DaemonUnderJournal {
  public:
    DaemonUnderJournal(const fs::path& dir, const std::string& extra_config) : dir_(dir) {
        open_journal();
        http_port_ = free_port("127.0.0.1");
        {
            std::ofstream cfg(dir_ / "unifaas.toml");
            cfg << "registry = \"" << (dir_ / "registry").string() << "\"\n"
                << "docker-socket = \"" << engine().socket_path() << "\"\n"
                << "runtime-dir = \"" << (dir_ / "run").string() << "\"\n"
                << "shutdown-grace = 5\n"
                << "listen = \"127.0.0.1:" << http_port_ << "\"\n"
                << "callback-listen = \"0.0.0.0:" << free_port("0.0.0.0") << "\"\n"
                << extra_config << "\n";
        }
        std::ofstream(stderr_path()).close();
        NotifyListener notify(dir_ / "notify");
        spawn();
        ready_ = notify.wait_for("READY=1", 20s) != "";
    }
    ~DaemonUnderJournal() {
        stop();
        reading_ = false;
        if (reader_.joinable()) {
            reader_.join();
        }
        ::close(journal_);
    }

    bool ready() const { return ready_; }
    int http_port() const { return http_port_; }
    // SIGTERM and wait; the exit status.
    int stop() {
        if (pid_ <= 0) {
            return status_;
        }
        ::kill(pid_, SIGTERM);
        waitpid(pid_, &status_, 0);
        pid_ = -1;
        std::this_thread::sleep_for(100ms);  // the last datagrams
        return status_;
    }
    std::vector<JournalEntry> entries() {
        std::lock_guard lock(mu_);
        return entries_;
    }
    std::string stderr_text() const {
        std::ifstream in(stderr_path());
        std::stringstream ss;
        ss << in.rdbuf();
        return ss.str();
    }

  private:
    fs::path stderr_path() const { return dir_ / "stderr"; }

    void open_journal() {
        journal_ = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        sockaddr_un addr{};
        addr.sun_family = AF_UNIX;
        std::strncpy(addr.sun_path, (dir_ / "journal.socket").c_str(), sizeof(addr.sun_path) - 1);
        if (::bind(journal_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
            throw std::runtime_error("bind journal socket");
        }
        reader_ = std::thread([this] {
            std::string buf(1 << 20, '\0');
            while (reading_) {
                pollfd p{journal_, POLLIN, 0};
                if (::poll(&p, 1, 50) <= 0) {
                    continue;
                }
                ssize_t n = ::recv(journal_, buf.data(), buf.size(), 0);
                if (n > 0) {
                    auto entry = parse_journal_entry(buf.substr(0, static_cast<std::size_t>(n)));
                    std::lock_guard lock(mu_);
                    entries_.push_back(std::move(entry));
                }
            }
        });
    }

    void spawn() {
        struct stat st {};
        ::stat(stderr_path().c_str(), &st);
        std::string script =
            "set -e; mount --make-rprivate /; mount -t tmpfs tmpfs /run/systemd; "
            "mkdir /run/systemd/journal; : > /run/systemd/journal/socket; "
            "mount --bind \"$0\" /run/systemd/journal/socket; exec \"$@\"";
        std::vector<std::string> args = {"/usr/bin/unshare",
                                         "-m",
                                         "/bin/sh",
                                         "-c",
                                         script,
                                         (dir_ / "journal.socket").string(),
                                         UNIFAAS_DAEMON_PATH,
                                         "--config",
                                         (dir_ / "unifaas.toml").string(),
                                         "--log-level",
                                         "debug"};
        std::vector<std::string> env = {
            "JOURNAL_STREAM=" + std::to_string(st.st_dev) + ":" + std::to_string(st.st_ino),
            "NOTIFY_SOCKET=" + (dir_ / "notify").string(),
            "DBUS_SYSTEM_BUS_ADDRESS=unix:path=/nonexistent/bus",
            "PATH=/usr/sbin:/usr/bin:/sbin:/bin"};
        std::vector<char*> argv, envp;
        for (auto& a : args) {
            argv.push_back(a.data());
        }
        argv.push_back(nullptr);
        for (auto& e : env) {
            envp.push_back(e.data());
        }
        envp.push_back(nullptr);
        std::string err_path = stderr_path().string();
        pid_ = fork();
        if (pid_ == 0) {
            int err = ::open(err_path.c_str(), O_WRONLY | O_APPEND | O_CLOEXEC);
            dup2(err, 1);
            dup2(err, 2);
            sigset_t none;
            sigemptyset(&none);
            sigprocmask(SIG_SETMASK, &none, nullptr);
            execve(argv[0], argv.data(), envp.data());
            _exit(127);
        }
    }

    fs::path dir_;
    int journal_ = -1;
    int http_port_ = 0;
    pid_t pid_ = -1;
    int status_ = -1;
    bool ready_ = false;
    std::atomic<bool> reading_{true};
    std::mutex mu_;
    std::vector<JournalEntry> entries_;
    std::thread reader_;
};

// The first entry whose field `key` starts with `prefix`.
std::optional<JournalEntry> find_entry(const std::vector<JournalEntry>& entries,
                                       const std::string& key, const std::string& prefix,
                                       const std::string& identifier = "") {
    for (const auto& e : entries) {
        auto it = e.find(key);
        auto id = e.find("SYSLOG_IDENTIFIER");
        if (it != e.end() && it->second.rfind(prefix, 0) == 0 &&
            (identifier.empty() || (id != e.end() && id->second == identifier))) {
            return e;
        }
    }
    return std::nullopt;
}

TEST_F(DaemonSystemdTest, LogsToTheJournalWithFunctionAndInstanceFields) {
    fs::create_directories(dir_ / "registry" / "ghost");
    std::ofstream(dir_ / "registry" / "ghost" / "function.toml")
        << "[container]\nimage = \"unifaas-no-such-image\"\n";
    DaemonUnderJournal daemon(dir_, "");
    ASSERT_TRUE(daemon.ready()) << "stderr:\n" << daemon.stderr_text();
    httplib::Client client("127.0.0.1", daemon.http_port());
    client.set_read_timeout(30, 0);
    auto res = client.Get("/invoke/ghost/");
    EXPECT_TRUE(res && res->status == 500) << (res ? res->body : "no answer");
    int status = daemon.stop();
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;

    auto entries = daemon.entries();
    ASSERT_FALSE(entries.empty()) << "nothing reached the journal; stderr:\n"
                                  << daemon.stderr_text();
    EXPECT_EQ(daemon.stderr_text(), "") << "log lines went to stderr instead";
    auto no_scopes = find_entry(entries, "MESSAGE", "running without transient scopes: ");
    ASSERT_TRUE(no_scopes);
    EXPECT_EQ(no_scopes->at("PRIORITY"), "6");
    EXPECT_EQ(no_scopes->at("SYSLOG_IDENTIFIER"), "unifaas");
    EXPECT_EQ(no_scopes->count("UNIFAAS_FUNCTION"), 0u);

    auto failed = find_entry(entries, "MESSAGE", "function ghost instance ");
    ASSERT_TRUE(failed);
    EXPECT_EQ(failed->at("PRIORITY"), "4");  // warn
    EXPECT_EQ(failed->at("UNIFAAS_FUNCTION"), "ghost");
    EXPECT_EQ(failed->at("UNIFAAS_INSTANCE"),
              failed->at("MESSAGE").substr(std::strlen("function ghost instance "), 12));
}

// A microVM's serial console reaches the journal line by line, tagged with its function and
// instance, while the console file stays (error messages quote it). Boots one VM (TCG: ~2 s).
TEST_F(DaemonSystemdTest, MicroVmConsoleLinesReachTheJournal) {
    const fs::path guest = fs::path(UNIFAAS_BINARY_DIR) / "guest";
    if (!fs::exists(guest / "kernel" / "vmlinux") || ::access("/dev/net/tun", R_OK) != 0) {
        GTEST_SKIP() << "guest images not built or no tun device";
    }
    fs::create_directories(dir_ / "registry" / "vmcon");
    std::ofstream(dir_ / "registry" / "vmcon" / "function.toml")
        << "keepalive = 60\n[vm]\nkernel = \"" << (guest / "kernel" / "vmlinux").string()
        << "\"\ninitrd = \"" << (guest / "hello-initramfs.cpio.gz").string() << "\"\nmemory = 128\n"
        << "cmdline = \"console=ttyS0 reboot=t panic=-1 cryptomgr.notests unifaas.ip=%ip "
           "unifaas.gw=%gateway unifaas.mask=%netmask unifaas.callback=%callback\"\n"
        << "hypervisor = { type = \"microvm\", pic = false, pit = false }\n";
    DaemonUnderJournal daemon(dir_, "accel = \"tcg\"");
    ASSERT_TRUE(daemon.ready()) << "stderr:\n" << daemon.stderr_text();
    httplib::Client client("127.0.0.1", daemon.http_port());
    client.set_read_timeout(60, 0);
    auto res = client.Get("/invoke/vmcon/hello");
    ASSERT_TRUE(res);
    EXPECT_EQ(res->status, 200) << res->body;
    auto console = find_entry(daemon.entries(), "MESSAGE", "", "unifaas-console");
    int status = daemon.stop();
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;

    auto entries = daemon.entries();
    auto ready = find_entry(entries, "MESSAGE", "function vmcon instance ");
    ASSERT_TRUE(ready);
    std::string instance = ready->at("UNIFAAS_INSTANCE");
    ASSERT_TRUE(console) << "no console line while the VM ran";
    EXPECT_EQ(console->at("UNIFAAS_FUNCTION"), "vmcon");
    EXPECT_EQ(console->at("UNIFAAS_INSTANCE"), instance);
    EXPECT_EQ(console->at("PRIORITY"), "6");
    auto linux_line = find_entry(entries, "MESSAGE", "[", "unifaas-console");
    EXPECT_TRUE(linux_line) << "no kernel log line among the console lines";
    std::size_t lines = 0;
    for (const auto& e : entries) {
        auto id = e.find("SYSLOG_IDENTIFIER");
        if (id != e.end() && id->second == "unifaas-console") {
            ++lines;
            EXPECT_EQ(e.at("MESSAGE").find('\r'), std::string::npos);
        }
    }
    std::cout << "[ info ] " << lines << " console lines forwarded\n";
    EXPECT_GT(lines, 10u);
}

}  // namespace
}  // namespace unifaas::test
