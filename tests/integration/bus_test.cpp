// The org.unifaas management interface: the real daemon against a private dbus-daemon (with the
// repository's bus policy) and the private Docker engine. Calls go through busctl (as root and as
// nobody, output parsed from --json=short), through dbus-send where the error name matters for an
// unprivileged caller, and through proxies generated from the same XML; signals are recorded
// from before each action, so nothing sleeps or polls.
#include <gtest/gtest.h>
#include <sdbus-c++/sdbus-c++.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <future>
#include <limits>
#include <mutex>
#include <optional>

#include "bus/bus_service.h"
#include "container_events.h"
#include "daemon_process.h"
#include "dbus/org.unifaas.Instance1_proxy.h"
#include "dbus/org.unifaas.Manager1_proxy.h"
#include "docker_engine.h"
#include "pool/function_table.h"
#include "private_bus.h"
#include "registry/registry.h"
#include "registry_fixture.h"
#include "sandbox/backend_set.h"
#include "version.h"

namespace unifaas::test {

namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using nlohmann::json;

constexpr const char* kService = "org.unifaas";
constexpr const char* kManagerPath = "/org/unifaas";
constexpr const char* kManager = "org.unifaas.Manager1";
constexpr const char* kInstance = "org.unifaas.Instance1";
constexpr const char* kAccessDenied = "org.freedesktop.DBus.Error.AccessDenied";
constexpr std::uint64_t kUnknown = std::numeric_limits<std::uint64_t>::max();

// One signal as received: member, object path and arguments as text. PropertiesChanged is
// recorded once per changed property: {interface, property, value}.
struct Signal {
    std::string member;
    std::string path;
    std::vector<std::string> args;
};

class SignalLog {
  public:
    void add(Signal s) {
        std::lock_guard lk(mu_);
        signals_.push_back(std::move(s));
        cv_.notify_all();
    }

    // The first signal recorded (since the log began) that matches; waits for it up to `timeout`.
    std::optional<Signal> wait(const std::function<bool(const Signal&)>& match,
                               std::chrono::milliseconds timeout = 30s) {
        std::unique_lock lk(mu_);
        std::optional<Signal> found;
        cv_.wait_for(lk, timeout, [&] {
            for (const auto& s : signals_) {
                if (match(s)) {
                    found = s;
                    return true;
                }
            }
            return false;
        });
        return found;
    }

    std::size_t count(const std::function<bool(const Signal&)>& match) {
        std::lock_guard lk(mu_);
        return static_cast<std::size_t>(std::count_if(signals_.begin(), signals_.end(), match));
    }

    // Waits until `n` signals named `member` have been recorded.
    bool wait_count(const std::string& member, std::size_t n,
                    std::chrono::milliseconds timeout = 30s) {
        std::unique_lock lk(mu_);
        return cv_.wait_for(lk, timeout, [&] {
            return static_cast<std::size_t>(
                       std::count_if(signals_.begin(), signals_.end(),
                                     [&](const Signal& s) { return s.member == member; })) >= n;
        });
    }

  private:
    std::mutex mu_;
    std::condition_variable cv_;
    std::vector<Signal> signals_;
};

class ManagerProxy final : public sdbus::ProxyInterfaces<org::unifaas::Manager1_proxy> {
  public:
    ManagerProxy(sdbus::IConnection& connection, SignalLog& log)
        : ProxyInterfaces(connection, kService, kManagerPath), log_(log) {
        registerProxy();
    }
    ~ManagerProxy() { unregisterProxy(); }

  private:
    void onInstanceStarted(const std::string& id, const std::string& function,
                           const sdbus::ObjectPath& path) override {
        log_.add({"InstanceStarted", kManagerPath, {id, function, path}});
    }
    void onInstanceStopped(const std::string& id, const std::string& function,
                           const std::string& reason) override {
        log_.add({"InstanceStopped", kManagerPath, {id, function, reason}});
    }

    SignalLog& log_;
};

class InstanceProxy final : public sdbus::ProxyInterfaces<org::unifaas::Instance1_proxy> {
  public:
    InstanceProxy(sdbus::IConnection& connection, const std::string& path)
        : ProxyInterfaces(connection, kService, path) {
        registerProxy();
    }
    ~InstanceProxy() { unregisterProxy(); }
};

std::string variant_text(const sdbus::Variant& v) {
    if (v.containsValueOfType<std::string>()) {
        return v.get<std::string>();
    }
    if (v.containsValueOfType<std::uint64_t>()) {
        return std::to_string(v.get<std::uint64_t>());
    }
    if (v.containsValueOfType<std::uint32_t>()) {
        return std::to_string(v.get<std::uint32_t>());
    }
    if (v.containsValueOfType<bool>()) {
        return v.get<bool>() ? "true" : "false";
    }
    return "<" + v.peekValueType() + ">";
}

// A root client of the private bus: calls through the generated proxy (from the test thread) and
// records org.unifaas's signals from its construction on (event loop on its own thread).
class BusClient {
  public:
    explicit BusClient(const std::string& address)
        : connection_(sdbus::createSessionBusConnectionWithAddress(address)),
          manager_(std::make_unique<ManagerProxy>(*connection_, log_)) {
        properties_ = connection_->addMatch(
            "type='signal',sender='org.unifaas',interface='org.freedesktop.DBus.Properties',"
            "member='PropertiesChanged'",
            [this](sdbus::Message& m) { on_properties_changed(m); });
        connection_->enterEventLoopAsync();
    }
    ~BusClient() { connection_->leaveEventLoop(); }

    ManagerProxy& manager() { return *manager_; }
    SignalLog& signals() { return log_; }
    std::unique_ptr<InstanceProxy> instance(const std::string& path) {
        return std::make_unique<InstanceProxy>(*connection_, path);
    }

    // The name of the D-Bus error `call` fails with ("" when it succeeds).
    static std::string error_of(const std::function<void()>& call) {
        try {
            call();
        } catch (const sdbus::Error& e) {
            return e.getName();
        }
        return "";
    }

  private:
    void on_properties_changed(sdbus::Message& m) {
        std::string interface;
        std::map<std::string, sdbus::Variant> changed;
        std::vector<std::string> invalidated;
        m >> interface >> changed >> invalidated;
        for (const auto& [name, value] : changed) {
            log_.add({"PropertiesChanged", m.getPath(), {interface, name, variant_text(value)}});
        }
    }

    std::unique_ptr<sdbus::IConnection> connection_;
    SignalLog log_;
    std::unique_ptr<ManagerProxy> manager_;
    sdbus::Slot properties_;
};

std::function<bool(const Signal&)> is(const std::string& member, std::vector<std::string> args,
                                      const std::string& path = "") {
    return [=](const Signal& s) {
        if (s.member != member || (!path.empty() && s.path != path)) {
            return false;
        }
        for (std::size_t i = 0; i < args.size(); ++i) {
            if (!args[i].empty() && (i >= s.args.size() || s.args[i] != args[i])) {
                return false;
            }
        }
        return true;
    };
}

// One private bus for a test suite, and the system bus address pointing at it (the daemon
// inherits the test's environment).
class SuiteBus {
  public:
    void set_up() {
        if (const char* old = std::getenv("DBUS_SYSTEM_BUS_ADDRESS")) {
            saved_ = old;
        }
        bus_ = std::make_unique<PrivateBus>();
        setenv("DBUS_SYSTEM_BUS_ADDRESS", bus_->address().c_str(), 1);
    }
    void tear_down() {
        if (saved_) {
            setenv("DBUS_SYSTEM_BUS_ADDRESS", saved_->c_str(), 1);
        } else {
            unsetenv("DBUS_SYSTEM_BUS_ADDRESS");
        }
        bus_.reset();
    }
    PrivateBus& operator*() { return *bus_; }
    PrivateBus* operator->() { return bus_.get(); }

  private:
    std::unique_ptr<PrivateBus> bus_;
    std::optional<std::string> saved_;
};

fs::path make_temp_dir(const char* prefix) {
    std::string tmpl = std::string("/tmp/") + prefix + "-XXXXXX";
    if (!mkdtemp(tmpl.data())) {
        throw std::runtime_error("mkdtemp");
    }
    return tmpl;
}

// ---------------------------------------------------------------------------------------------
// The real daemon.

class BusTest : public RegistryTest {
  protected:
    static void SetUpTestSuite() { bus_.set_up(); }
    static void TearDownTestSuite() { bus_.tear_down(); }

    void TearDown() override {
        client_.reset();
        RegistryTest::TearDown();
    }

    // Starts the daemon and a client subscribed to its signals.
    void start_daemon() {
        // The configured address is not the one served: the socket is passed in (activation),
        // and ListenAddress must show the socket's.
        RegistryTest::start_daemon("listen = \"127.0.0.1:18999\"");
        client_ = std::make_unique<BusClient>(bus_->address());
    }

    httplib::Result get(const std::string& path) { return daemon_->client().Get(path); }

    // busctl against the private bus, as root or as nobody.
    static CommandResult busctl(std::vector<std::string> args, bool as_nobody = false) {
        std::vector<std::string> argv;
        if (as_nobody) {
            argv = {"setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"};
        }
        argv.insert(argv.end(), {"busctl", "--address=" + bus_->address(), "--json=short"});
        argv.insert(argv.end(), args.begin(), args.end());
        return run_command(argv);
    }

    // The "data" of busctl's JSON answer (a call's return values, or a property's value).
    static json busctl_data(std::vector<std::string> args, bool as_nobody = false) {
        auto r = busctl(args, as_nobody);
        EXPECT_EQ(r.status, 0) << "busctl " << json(args).dump() << ": " << r.err;
        if (r.status != 0 || r.out.empty()) {
            return json{};  // failed, or a method without results
        }
        return json::parse(r.out)["data"];
    }

    static json call(const std::string& method, std::vector<std::string> args = {},
                     bool as_nobody = false) {
        std::vector<std::string> a = {"call", kService, kManagerPath, kManager, method};
        a.insert(a.end(), args.begin(), args.end());
        return busctl_data(a, as_nobody);
    }

    static json property(const std::string& path, const std::string& interface,
                         const std::string& name, bool as_nobody = false) {
        return busctl_data({"get-property", kService, path, interface, name}, as_nobody);
    }

    // dbus-send as nobody (it prints the error's name, busctl only its message).
    static CommandResult dbus_send_as_nobody(const std::string& destination,
                                             const std::string& path, const std::string& method,
                                             std::vector<std::string> args = {}) {
        std::vector<std::string> argv = {"setpriv",
                                         "--reuid=nobody",
                                         "--regid=nogroup",
                                         "--clear-groups",
                                         "dbus-send",
                                         "--bus=" + bus_->address(),
                                         "--print-reply",
                                         "--dest=" + destination,
                                         path,
                                         method};
        argv.insert(argv.end(), args.begin(), args.end());
        return run_command(argv);
    }

    // Invokes `function` once and returns the id of the instance that served it (announced by
    // InstanceStarted) once its first request is counted.
    std::string invoke_and_wait(const std::string& function) {
        auto res = get("/invoke/" + function + "/hello");
        EXPECT_TRUE(res && res->status == 200) << daemon_->log();
        auto started = client_->signals().wait(is("InstanceStarted", {"", function}));
        if (!started) {
            ADD_FAILURE() << "no InstanceStarted for " << function;
            return "";
        }
        const std::string& path = started->args[2];
        EXPECT_TRUE(
            client_->signals().wait(is("PropertiesChanged", {kInstance, "Requests", "1"}, path)))
            << "no Requests change on " << path;
        return started->args[0];
    }

    static std::string path_of(const std::string& id) { return "/org/unifaas/instance/" + id; }

    static SuiteBus bus_;
    std::unique_ptr<BusClient> client_;
};

SuiteBus BusTest::bus_;

TEST_F(BusTest, ManagerProperties) {
    start_daemon();
    EXPECT_EQ(property(kManagerPath, kManager, "Version"), UNIFAAS_VERSION);
    EXPECT_EQ(property(kManagerPath, kManager, "ListenAddress"),
              "127.0.0.1:" + std::to_string(daemon_->http_port()));
    EXPECT_EQ(property(kManagerPath, kManager, "Subnet"), "10.100.0.0/16");
    EXPECT_EQ(property(kManagerPath, kManager, "InstanceCount"), 0);
    EXPECT_EQ(client_->manager().Version(), UNIFAAS_VERSION);
}

TEST_F(BusTest, ListFunctionsShowsSettingsErrorsAndCounts) {
    add_hello("hello", "concurrent-requests = 3\nkeepalive = 30.5");
    add_hello("once", "single-use = true\n[network]\nallow-invoke = true\negress = true");
    write_function("broken", "concurrent-requests = 0\n");
    start_daemon();

    auto functions = call("ListFunctions");
    ASSERT_EQ(functions.size(), 1u);
    ASSERT_EQ(functions[0].size(), 3u) << functions.dump();
    auto& broken = functions[0][0];
    EXPECT_EQ(broken[0], "broken");
    EXPECT_EQ(broken[1], "");
    EXPECT_NE(broken[2].get<std::string>().find("concurrent-requests"), std::string::npos)
        << broken.dump();
    EXPECT_EQ(functions[0][1],
              json::parse(R"(["hello","container","",3,false,30500000,0,0,0,"callback-only"])"));
    EXPECT_EQ(
        functions[0][2],
        json::parse(R"(["once","container","",1,true,60000000,0,0,0,"callback+invoke+egress"])"));

    invoke_and_wait("hello");
    functions = call("ListFunctions");
    EXPECT_EQ(functions[0][1],
              json::parse(R"(["hello","container","",3,false,30500000,0,0,1,"callback-only"])"));
}

TEST_F(BusTest, CountsOfABusyInstanceArePublishedCoalesced) {
    // A PropertiesChanged per request would flood the bus under load: counts are published at
    // most every 100 ms, and the last value always arrives. (One instance takes every request:
    // a slot is given back just after its response is written, so a next request on a new
    // connection could otherwise start a second instance.)
    add_hello("hello", "concurrent-requests = 100\nmax-instances = 1");
    start_daemon();
    std::string path = path_of(invoke_and_wait("hello"));
    constexpr int kRequests = 60;
    for (int i = 0; i < kRequests; ++i) {
        auto res = get("/invoke/hello/hello");
        ASSERT_TRUE(res && res->status == 200);
    }
    auto& log = client_->signals();
    std::string last = std::to_string(kRequests + 1);
    ASSERT_TRUE(log.wait(is("PropertiesChanged", {kInstance, "Requests", last}, path)))
        << "the final count was never published: " << call("ListInstances").dump();
    EXPECT_LT(log.count(is("PropertiesChanged", {kInstance, "Requests"}, path)), kRequests / 2u)
        << "one signal per request";
}

TEST_F(BusTest, InstanceObjectFollowsTheInstance) {
    add_hello("hello");
    start_daemon();
    auto before = std::chrono::system_clock::now();
    std::string id = invoke_and_wait("hello");
    auto after = std::chrono::system_clock::now();
    ASSERT_EQ(id.size(), 12u) << id;
    std::string path = path_of(id);

    // Through busctl.
    auto instances = call("ListInstances");
    ASSERT_EQ(instances.size(), 1u);
    ASSERT_EQ(instances[0].size(), 1u) << instances.dump();
    auto& i = instances[0][0];
    EXPECT_EQ(i[0], id);
    EXPECT_EQ(i[1], "hello");
    EXPECT_EQ(i[2], "ready");
    EXPECT_FALSE(i[3].get<std::string>().empty()) << "no address";
    EXPECT_EQ(i[6], 1) << "requests";
    EXPECT_EQ(i[7], path);
    auto usec = [](auto t) {
        return std::chrono::duration_cast<std::chrono::microseconds>(t.time_since_epoch()).count();
    };
    EXPECT_GE(i[5].get<std::int64_t>(), usec(before));
    EXPECT_LE(i[5].get<std::int64_t>(), usec(after));
    EXPECT_EQ(call("GetInstance", {"s", id})[0], path);
    EXPECT_EQ(property(kManagerPath, kManager, "InstanceCount"), 1);

    EXPECT_EQ(property(path, kInstance, "Function"), "hello");
    EXPECT_EQ(property(path, kInstance, "State"), "ready");
    EXPECT_EQ(property(path, kInstance, "Address"), i[3]);
    EXPECT_EQ(property(path, kInstance, "Unit"), i[4]);
    EXPECT_EQ(property(path, kInstance, "StartedAt"), i[5]);
    EXPECT_EQ(property(path, kInstance, "Requests"), 1);

    // Through the generated proxy.
    auto instance = client_->instance(path);
    EXPECT_EQ(instance->State(), "ready");
    EXPECT_EQ(instance->Requests(), 1u);
    if (instance->Unit().empty()) {  // no systemd here: accounting is unknown
        EXPECT_EQ(instance->MemoryCurrent(), kUnknown);
        EXPECT_EQ(instance->CPUUsageNSec(), kUnknown);
    }
    EXPECT_EQ(client_->manager().GetInstance(id), path);

    // Its changes were announced (booting may coalesce with ready when both come at once).
    auto& log = client_->signals();
    EXPECT_TRUE(log.wait(is("PropertiesChanged", {kInstance, "State", "ready"}, path)));
    EXPECT_TRUE(log.wait(is("PropertiesChanged", {kManager, "InstanceCount", "1"}, kManagerPath)));

    // StopInstance: the container goes, InstanceStopped is emitted and the object disappears.
    ContainerEvents events(engine().socket_path());
    client_->manager().StopInstance(id);
    EXPECT_TRUE(log.wait(is("InstanceStopped", {id, "hello", "stopped over D-Bus"})));
    EXPECT_TRUE(log.wait(is("PropertiesChanged", {kManager, "InstanceCount", "0"}, kManagerPath)));
    EXPECT_TRUE(events.wait_for("destroy", 1)) << "container not removed";
    EXPECT_EQ(call("ListInstances")[0].size(), 0u);
    EXPECT_EQ(property(kManagerPath, kManager, "InstanceCount"), 0);
    EXPECT_NE(busctl({"get-property", kService, path, kInstance, "State"}).status, 0)
        << "the object outlived its instance";
    EXPECT_EQ(BusClient::error_of([&] { client_->manager().GetInstance(id); }),
              "org.unifaas.Error.NoSuchInstance");
}

TEST_F(BusTest, StopFunctionStopsEveryInstanceAndCountsThem) {
    add_hello("hello", "concurrent-requests = 1");
    add_hello("idle");
    start_daemon();
    // Two requests at once on one-slot instances: two instances.
    auto slow = [&] {
        auto res = daemon_->client().Get("/invoke/hello/sleep?ms=1000");
        return res ? res->status : -1;
    };
    auto a = std::async(std::launch::async, slow);
    auto b = std::async(std::launch::async, slow);
    EXPECT_EQ(a.get(), 200);
    EXPECT_EQ(b.get(), 200);
    auto& log = client_->signals();
    EXPECT_TRUE(log.wait_count("InstanceStarted", 2));
    ASSERT_EQ(call("ListInstances")[0].size(), 2u);

    ContainerEvents events(engine().socket_path());
    EXPECT_EQ(client_->manager().StopFunction("hello"), 2u);
    EXPECT_TRUE(events.wait_for("destroy", 2)) << "containers not removed";
    EXPECT_TRUE(log.wait_count("InstanceStopped", 2));
    EXPECT_EQ(call("ListInstances")[0].size(), 0u);

    EXPECT_EQ(client_->manager().StopFunction("idle"), 0u) << "in the registry, never started";
    EXPECT_EQ(BusClient::error_of([&] { client_->manager().StopFunction("no-such"); }),
              "org.unifaas.Error.NoSuchFunction");
}

TEST_F(BusTest, UnknownInstancesAreNoSuchInstance) {
    start_daemon();
    for (std::string id : {"0123456789ab", "not-an-id", "../../x", ""}) {
        EXPECT_EQ(BusClient::error_of([&] { client_->manager().GetInstance(id); }),
                  "org.unifaas.Error.NoSuchInstance")
            << id;
        EXPECT_EQ(BusClient::error_of([&] { client_->manager().StopInstance(id); }),
                  "org.unifaas.Error.NoSuchInstance")
            << id;
    }
}

TEST_F(BusTest, ReloadLoadsNewFunctions) {
    start_daemon();
    // A function added after start, kept warm: loading it starts an instance.
    add_hello("warm", "min-instances = 1");
    client_->manager().Reload();
    auto started = client_->signals().wait(is("InstanceStarted", {"", "warm"}));
    ASSERT_TRUE(started) << "Reload did not load the new function\n" << daemon_->log();
    auto functions = call("ListFunctions");
    ASSERT_EQ(functions[0].size(), 1u);
    EXPECT_EQ(functions[0][0][0], "warm");
}

TEST_F(BusTest, CleanupTapsRemovesIdleTaps) {
    start_daemon();
    auto removed = call("CleanupTaps");
    ASSERT_EQ(removed.size(), 1u);
    EXPECT_TRUE(removed[0].is_number_unsigned()) << removed.dump();
}

TEST_F(BusTest, ShutdownAnnouncesEveryInstanceStopped) {
    add_hello("hello");
    start_daemon();
    std::string id = invoke_and_wait("hello");
    ASSERT_EQ(daemon_->terminate(), 0) << daemon_->log();
    EXPECT_TRUE(client_->signals().wait(is("InstanceStopped", {id, "hello", "daemon shutdown"})));
}

TEST_F(BusTest, PolicyAnyoneMayLookOnlyRootMayAct) {
    add_hello("hello");
    start_daemon();
    std::string id = invoke_and_wait("hello");
    std::string path = path_of(id);
    constexpr bool kNobody = true;

    // nobody may look.
    EXPECT_EQ(call("ListFunctions", {}, kNobody)[0].size(), 1u);
    EXPECT_EQ(call("ListInstances", {}, kNobody)[0].size(), 1u);
    EXPECT_EQ(call("GetInstance", {"s", id}, kNobody)[0], path);
    EXPECT_EQ(property(kManagerPath, kManager, "Version", kNobody), UNIFAAS_VERSION);
    EXPECT_EQ(property(path, kInstance, "State", kNobody), "ready");
    auto all = busctl(
        {"call", kService, path, "org.freedesktop.DBus.Properties", "GetAll", "s", kInstance},
        kNobody);
    EXPECT_EQ(all.status, 0) << all.err;
    auto introspect = busctl({"introspect", kService, kManagerPath}, kNobody);
    EXPECT_EQ(introspect.status, 0) << introspect.err;
    EXPECT_NE(introspect.out.find("StopFunction"), std::string::npos) << introspect.out;

    // nobody may not act, nor take the name.
    const std::string manager = std::string(kManager) + ".";
    for (auto [method, args] : std::vector<std::pair<std::string, std::vector<std::string>>>{
             {"StopInstance", {"string:" + id}},
             {"StopFunction", {"string:hello"}},
             {"CleanupTaps", {}},
             {"Reload", {}},
             {"Drain", {}},
             {"Undrain", {}}}) {
        auto r = dbus_send_as_nobody(kService, kManagerPath, manager + method, args);
        EXPECT_NE(r.status, 0) << method;
        EXPECT_NE(r.err.find(kAccessDenied), std::string::npos) << method << ": " << r.err;
    }
    auto own =
        dbus_send_as_nobody("org.freedesktop.DBus", "/org/freedesktop/DBus",
                            "org.freedesktop.DBus.RequestName", {"string:org.unifaas", "uint32:0"});
    EXPECT_NE(own.err.find(kAccessDenied), std::string::npos) << own.out << own.err;
    EXPECT_EQ(call("ListInstances")[0].size(), 1u) << "an instance was stopped by nobody";

    // root may.
    EXPECT_EQ(call("Reload").size(), 0u);
    EXPECT_TRUE(call("CleanupTaps")[0].is_number_unsigned());
    ContainerEvents events(engine().socket_path());
    EXPECT_EQ(call("StopFunction", {"s", "hello"})[0], 1);
    EXPECT_TRUE(events.wait_for("destroy", 1));
}

// Drain takes the node out of a load balancer's rotation (/healthz 503) while it keeps serving;
// Undrain puts it back. Draining follows, with PropertiesChanged.
// While draining, answers say "Connection: close": keep-alive clients (a load balancer's pooled
// connections too) reconnect, and so reach a node that serves.
TEST_F(BusTest, DrainAndUndrainSwitchHealthzWhileRequestsAreServed) {
    add_hello("hello");
    start_daemon();
    EXPECT_EQ(property(kManagerPath, kManager, "Draining"), false);
    EXPECT_EQ(get("/healthz")->status, 200);

    EXPECT_EQ(call("Drain")[0], true);
    EXPECT_EQ(call("Drain")[0], false) << "already draining";
    EXPECT_EQ(property(kManagerPath, kManager, "Draining"), true);
    EXPECT_TRUE(client_->signals().wait(is("PropertiesChanged", {kManager, "Draining", "true"})));
    auto health = get("/healthz");
    ASSERT_TRUE(health);
    EXPECT_EQ(health->status, 503);
    EXPECT_EQ(health->body, "draining\n");
    auto res = get("/invoke/hello/hello");
    ASSERT_TRUE(res);
    EXPECT_EQ(res->status, 200) << "a draining node still serves what reaches it";
    EXPECT_EQ(res->get_header_value("Connection"), "close")
        << "a draining node keeps its keep-alive clients instead of sending them elsewhere";
    EXPECT_EQ(json::parse(get("/status")->body)["state"], "draining");
    EXPECT_NE(get("/metrics")->body.find("unifaas_draining 1\n"), std::string::npos);

    EXPECT_EQ(call("Undrain")[0], true);
    EXPECT_EQ(call("Undrain")[0], false);
    EXPECT_TRUE(client_->signals().wait(is("PropertiesChanged", {kManager, "Draining", "false"})));
    EXPECT_EQ(get("/healthz")->status, 200);
    EXPECT_EQ(json::parse(get("/status")->body)["state"], "serving");
    res = get("/invoke/hello/hello");
    ASSERT_TRUE(res);
    EXPECT_EQ(res->get_header_value("Connection"), "") << "keep-alive is back after Undrain";
}

// ---------------------------------------------------------------------------------------------
// BusService in this process: what the daemon cannot easily be made to show.

class BusServiceTest : public ::testing::Test {
  protected:
    static void SetUpTestSuite() { bus_.set_up(); }
    static void TearDownTestSuite() { bus_.tear_down(); }

    ~BusServiceTest() override { fs::remove_all(dir_); }

    std::unique_ptr<BusService> make_service() {
        return std::make_unique<BusService>(BusService::Config{"9.9.9", "127.0.0.1:1", ""},
                                            functions_, registry_, nullptr, AccountingSource{},
                                            BusService::ReloadFn{});
    }

    static SuiteBus bus_;
    fs::path dir_ = make_temp_dir("unifaas-registry");
    Registry registry_{dir_};
    Readiness readiness_;
    TimerQueue timers_;
    WorkQueue starts_{"start", 1};
    WorkQueue stops_{"stop", 1};
    BackendSet backends_;
    FunctionTable functions_{registry_,
                             PoolServices{backends_, readiness_, timers_, starts_, stops_}};
};

SuiteBus BusServiceTest::bus_;

TEST_F(BusServiceTest, WithoutATapNetworkCleanupTapsIsNotAvailable) {
    auto service = make_service();
    service->start();
    BusClient client(bus_->address());
    EXPECT_EQ(client.manager().Subnet(), "");
    EXPECT_EQ(client.manager().Version(), "9.9.9");
    EXPECT_EQ(client.manager().InstanceCount(), 0u);
    EXPECT_TRUE(client.manager().ListFunctions().empty());
    EXPECT_EQ(BusClient::error_of([&] { client.manager().CleanupTaps(); }),
              "org.unifaas.Error.NotAvailable");
}

TEST_F(BusServiceTest, NameTakenIsAClearErrorAndReleasedOnDestruction) {
    auto first = make_service();
    first->start();
    auto second = make_service();
    try {
        second->start();
        FAIL() << "a second service owned org.unifaas";
    } catch (const std::runtime_error& e) {
        EXPECT_NE(std::string(e.what()).find("cannot own the name org.unifaas"), std::string::npos)
            << e.what();
    }
    first.reset();
    second = make_service();
    EXPECT_NO_THROW(second->start()) << "the name was not released";
}

TEST_F(BusServiceTest, NoBusIsAClearError) {
    setenv("DBUS_SYSTEM_BUS_ADDRESS", "unix:path=/nonexistent/bus", 1);
    auto service = make_service();
    try {
        service->start();
        ADD_FAILURE() << "started without a bus";
    } catch (const std::runtime_error& e) {
        EXPECT_NE(std::string(e.what()).find("cannot connect to the system bus at "
                                             "unix:path=/nonexistent/bus"),
                  std::string::npos)
            << e.what();
    }
    setenv("DBUS_SYSTEM_BUS_ADDRESS", bus_->address().c_str(), 1);
}

TEST_F(BusServiceTest, OutlivesItsBus) {
    auto own_bus = std::make_unique<PrivateBus>();
    setenv("DBUS_SYSTEM_BUS_ADDRESS", own_bus->address().c_str(), 1);
    auto service = make_service();
    service->start();
    setenv("DBUS_SYSTEM_BUS_ADDRESS", bus_->address().c_str(), 1);
    own_bus.reset();  // the bus goes away under the running service
    service.reset();  // and it still shuts down (this would hang or crash otherwise)
    service = make_service();
    EXPECT_NO_THROW(service->start()) << "the suite's bus is still there";
}

}  // namespace

}  // namespace unifaas::test
