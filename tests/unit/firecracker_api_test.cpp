// FirecrackerApi and the Firecracker backend's pieces, without firecracker and without root.
//
// FakeFirecracker serves Firecracker's documented REST API (swagger firecracker.yaml) on a unix
// socket the way Firecracker does: only PUT on known paths, JSON bodies parsed strictly (unknown
// fields and wrong types are refused like serde's deny_unknown_fields), ids in paths checked and
// matched against the body, 204 on success and 400 {"fault_message"} otherwise, no
// configuration after InstanceStart, no InstanceStart without a boot source. It records the
// whole conversation so tests can compare it exactly.
#include <fcntl.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <optional>
#include <regex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <httplib.h>
#include <nlohmann/json.hpp>

#include "net/subnet.h"
#include "sandbox/child_process.h"
#include "sandbox/firecracker_api.h"
#include "sandbox/firecracker_backend.h"

namespace unifaas {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using namespace std::chrono_literals;

class TempDir {
  public:
    TempDir() {
        std::string pattern = (fs::temp_directory_path() / "unifaas-fc-XXXXXX").string();
        if (::mkdtemp(pattern.data()) == nullptr) {
            throw std::system_error(errno, std::generic_category(), "mkdtemp");
        }
        path_ = pattern;
    }
    ~TempDir() {
        std::error_code ec;
        fs::remove_all(path_, ec);
    }
    TempDir(const TempDir&) = delete;
    TempDir& operator=(const TempDir&) = delete;
    const fs::path& path() const { return path_; }

  private:
    fs::path path_;
};

// --- the fake Firecracker API server ---

struct Exchange {
    std::string method;
    std::string path;
    json body;  // null when the body was not JSON
    int status = 0;
    std::string host;          // Host header
    std::string content_type;  // Content-Type header
};

// A request the fake refuses, with Firecracker's fault text.
struct Fault {
    std::string message;
};

enum class Type { String, Bool, Unsigned, Object, Array };

struct Field {
    Type type;
    bool required;
};

using Schema = std::map<std::string, Field>;

const char* type_name(Type type) {
    switch (type) {
        case Type::String:
            return "a string";
        case Type::Bool:
            return "a boolean";
        case Type::Unsigned:
            return "an unsigned integer";
        case Type::Object:
            return "an object";
        case Type::Array:
            return "a sequence";
    }
    return "?";
}

bool has_type(const json& value, Type type) {
    switch (type) {
        case Type::String:
            return value.is_string();
        case Type::Bool:
            return value.is_boolean();
        case Type::Unsigned:
            return value.is_number_unsigned();
        case Type::Object:
            return value.is_object();
        case Type::Array:
            return value.is_array();
    }
    return false;
}

std::string deserialize_error(const std::string& detail) {
    return "An error occurred when deserializing the json body of a request: " + detail + ".";
}

// serde with deny_unknown_fields: every key known, every type right, every required key there.
void check_schema(const json& body, const Schema& schema) {
    if (!body.is_object()) {
        throw Fault{deserialize_error("invalid type: expected a JSON object")};
    }
    for (const auto& [key, value] : body.items()) {
        auto it = schema.find(key);
        if (it == schema.end()) {
            throw Fault{deserialize_error("unknown field `" + key + "`")};
        }
        if (!has_type(value, it->second.type)) {
            throw Fault{deserialize_error("invalid type: " + std::string(value.type_name()) +
                                          " for `" + key + "`, expected " +
                                          type_name(it->second.type))};
        }
    }
    for (const auto& [key, field] : schema) {
        if (field.required && !body.contains(key)) {
            throw Fault{deserialize_error("missing field `" + key + "`")};
        }
    }
}

const Schema kMachineConfig{{"vcpu_count", {Type::Unsigned, true}},
                            {"mem_size_mib", {Type::Unsigned, true}},
                            {"smt", {Type::Bool, false}},
                            {"track_dirty_pages", {Type::Bool, false}},
                            {"cpu_template", {Type::String, false}},
                            {"huge_pages", {Type::String, false}}};
const Schema kBootSource{{"kernel_image_path", {Type::String, true}},
                         {"boot_args", {Type::String, false}},
                         {"initrd_path", {Type::String, false}}};
// A virtio-block drive: path_on_host and is_read_only are required for it.
const Schema kDrive{
    {"drive_id", {Type::String, true}},     {"is_root_device", {Type::Bool, true}},
    {"path_on_host", {Type::String, true}}, {"is_read_only", {Type::Bool, true}},
    {"partuuid", {Type::String, false}},    {"cache_type", {Type::String, false}},
    {"io_engine", {Type::String, false}},   {"rate_limiter", {Type::Object, false}}};
const Schema kNetworkInterface{{"iface_id", {Type::String, true}},
                               {"host_dev_name", {Type::String, true}},
                               {"guest_mac", {Type::String, false}},
                               {"rx_rate_limiter", {Type::Object, false}},
                               {"tx_rate_limiter", {Type::Object, false}}};
const Schema kAction{{"action_type", {Type::String, true}}};
const Schema kVmState{{"state", {Type::String, true}}};
const Schema kSnapshotCreate{{"snapshot_type", {Type::String, false}},
                             {"snapshot_path", {Type::String, true}},
                             {"mem_file_path", {Type::String, true}},
                             {"version", {Type::String, false}}};
const Schema kSnapshotLoad{
    {"snapshot_path", {Type::String, true}},    {"mem_file_path", {Type::String, false}},
    {"mem_backend", {Type::Object, false}},     {"enable_diff_snapshots", {Type::Bool, false}},
    {"track_dirty_pages", {Type::Bool, false}}, {"resume_vm", {Type::Bool, false}},
    {"network_overrides", {Type::Array, false}}};
const Schema kMemBackend{{"backend_type", {Type::String, true}},
                         {"backend_path", {Type::String, true}}};
const Schema kNetworkOverride{{"iface_id", {Type::String, true}},
                              {"host_dev_name", {Type::String, true}}};

void check_id(const std::string& id) {
    static const std::regex kId("[A-Za-z0-9_]+");
    if (!std::regex_match(id, kId)) {
        throw Fault{"API Resource IDs can only contain alphanumeric characters and underscores."};
    }
}

void check_mac(const std::string& mac) {
    static const std::regex kMac("([0-9A-Fa-f]{2}:){5}[0-9A-Fa-f]{2}");
    if (!std::regex_match(mac, kMac)) {
        throw Fault{deserialize_error("invalid MAC address `" + mac + "`")};
    }
}

class FakeFirecracker {
  public:
    FakeFirecracker() : socket_(dir_.path() / "api.sock") {
        server_.set_address_family(AF_UNIX);
        // Every request goes through serve(), which routes like Firecracker's API server.
        auto handler = [this](const httplib::Request& req, httplib::Response& res) {
            serve(req, res);
        };
        server_.Put(".*", handler);
        server_.Get(".*", handler);
        server_.Patch(".*", handler);
        server_.Post(".*", handler);
        server_.Delete(".*", handler);
        // bind_to_port also listens: clients can connect from here on (queued until accepted).
        if (!server_.bind_to_port(socket_.string(), 80)) {
            throw std::runtime_error("cannot bind the fake firecracker to " + socket_.string());
        }
        thread_ = std::thread([this] { server_.listen_after_bind(); });
    }

    ~FakeFirecracker() {
        // stop() only stops a running loop; this version has no wait_until_ready().
        auto deadline = std::chrono::steady_clock::now() + 5s;
        while (!server_.is_running() && std::chrono::steady_clock::now() < deadline) {
            std::this_thread::sleep_for(1ms);
        }
        server_.stop();
        thread_.join();
    }

    const fs::path& socket() const { return socket_; }

    // The next request to `path` is refused with this fault message.
    void fail(const std::string& path, const std::string& fault_message) {
        std::lock_guard lock(mutex_);
        failures_[path] = fault_message;
    }

    std::vector<Exchange> conversation() const {
        std::lock_guard lock(mutex_);
        return conversation_;
    }

    bool started() const {
        std::lock_guard lock(mutex_);
        return started_;
    }

    bool paused() const {
        std::lock_guard lock(mutex_);
        return paused_;
    }

  private:
    void serve(const httplib::Request& req, httplib::Response& res) {
        std::lock_guard lock(mutex_);
        Exchange exchange{req.method,
                          req.path,
                          json::parse(req.body, nullptr, false),
                          0,
                          req.get_header_value("Host"),
                          req.get_header_value("Content-Type")};
        if (exchange.body.is_discarded()) {
            exchange.body = nullptr;
        }
        try {
            if (auto it = failures_.find(req.path); it != failures_.end()) {
                std::string message = it->second;
                failures_.erase(it);
                throw Fault{message};
            }
            apply(req);
            res.status = 204;
        } catch (const Fault& fault) {
            res.status = 400;
            res.set_content(json{{"fault_message", fault.message}}.dump(), "application/json");
        }
        exchange.status = res.status;
        conversation_.push_back(std::move(exchange));
    }

    void apply(const httplib::Request& req) {
        std::smatch m;
        const std::string& path = req.path;
        static const std::regex kWithId(R"(/(drives|network-interfaces)/([^/]*))");
        bool known = path == "/machine-config" || path == "/boot-source" || path == "/actions" ||
                     path == "/snapshot/create" || path == "/snapshot/load" ||
                     std::regex_match(path, m, kWithId);
        if (req.method == "PATCH" && path == "/vm") {
            return vm_state(json::parse(req.body, nullptr, false));
        }
        if (req.method != "PUT" || !known) {
            std::string first = path.substr(std::min(path.find_first_not_of('/'), path.size()));
            first = first.substr(0, first.find('/'));
            throw Fault{"Invalid request method and/or path: " + req.method + " " + first + "."};
        }
        if (req.body.empty()) {
            throw Fault{"Empty PUT request."};
        }
        json body = json::parse(req.body, nullptr, false);
        if (body.is_discarded()) {
            throw Fault{deserialize_error("expected value")};
        }
        if (path == "/actions") {
            return action(body);
        }
        if (path == "/snapshot/create") {
            return snapshot_create(body);
        }
        if (path == "/snapshot/load") {
            return snapshot_load(body);
        }
        configured_ = true;
        if (started_) {
            throw Fault{"The requested operation is not supported after starting the microVM."};
        }
        if (path == "/machine-config") {
            return machine_config(body);
        }
        if (path == "/boot-source") {
            check_schema(body, kBootSource);
            boot_source_ = true;
            return;
        }
        const std::string id = m[2].str();
        if (id.empty()) {
            throw Fault{"The ID cannot be empty."};
        }
        check_id(id);
        if (m[1] == "drives") {
            check_schema(body, kDrive);
            if (body["drive_id"] != id) {
                throw Fault{"The id from the path does not match the id from the body!"};
            }
            return;
        }
        check_schema(body, kNetworkInterface);
        if (body["iface_id"] != id) {
            throw Fault{"The id from the path [" + id + "] does not match the id from the body [" +
                        body["iface_id"].get<std::string>() + "]!"};
        }
        if (body.contains("guest_mac")) {
            check_mac(body["guest_mac"].get<std::string>());
        }
    }

    void machine_config(const json& body) {
        check_schema(body, kMachineConfig);
        auto vcpus = body["vcpu_count"].get<std::uint64_t>();
        if (vcpus < 1 || vcpus > 32) {
            throw Fault{
                "The vCPU number is invalid! The vCPU number can only be 1 or an even "
                "number when SMT is enabled."};
        }
        if (body["mem_size_mib"].get<std::uint64_t>() == 0) {
            throw Fault{"The memory size (MiB) is invalid."};
        }
    }

    void action(const json& body) {
        check_schema(body, kAction);
        static const std::set<std::string> kActions{"FlushMetrics", "InstanceStart",
                                                    "SendCtrlAltDel"};
        const std::string type = body["action_type"].get<std::string>();
        if (kActions.count(type) == 0) {
            throw Fault{deserialize_error("unknown variant `" + type + "`")};
        }
        if (type != "InstanceStart") {
            return;
        }
        if (started_) {
            throw Fault{"The requested operation is not supported after starting the microVM."};
        }
        if (!boot_source_) {
            throw Fault{"Cannot start microvm without kernel configuration."};
        }
        started_ = true;
    }

    void vm_state(const json& body) {
        if (body.is_discarded()) {
            throw Fault{deserialize_error("expected value")};
        }
        check_schema(body, kVmState);
        const std::string state = body["state"].get<std::string>();
        if (state != "Paused" && state != "Resumed") {
            throw Fault{deserialize_error("unknown variant `" + state + "`")};
        }
        if (!started_) {
            throw Fault{"The requested operation is not supported before starting the microVM."};
        }
        paused_ = state == "Paused";
    }

    void snapshot_create(const json& body) {
        check_schema(body, kSnapshotCreate);
        if (body.contains("snapshot_type") && body["snapshot_type"] != "Full" &&
            body["snapshot_type"] != "Diff") {
            throw Fault{deserialize_error("unknown variant `" +
                                          body["snapshot_type"].get<std::string>() + "`")};
        }
        if (!started_ || !paused_) {
            throw Fault{"Create snapshot error: the microVM must be paused"};
        }
    }

    void snapshot_load(const json& body) {
        check_schema(body, kSnapshotLoad);
        if (body.contains("mem_backend") == body.contains("mem_file_path")) {
            throw Fault{"Load snapshot error: exactly one of mem_backend and mem_file_path"};
        }
        if (body.contains("mem_backend")) {
            check_schema(body["mem_backend"], kMemBackend);
            auto type = body["mem_backend"]["backend_type"].get<std::string>();
            if (type != "File" && type != "Uffd") {
                throw Fault{deserialize_error("unknown variant `" + type + "`")};
            }
        }
        for (const auto& o : body.value("network_overrides", json::array())) {
            check_schema(o, kNetworkOverride);
        }
        if (configured_ || started_) {
            throw Fault{
                "Loading a microVM snapshot not allowed after configuring boot-specific "
                "resources."};
        }
        started_ = true;
        paused_ = !body.value("resume_vm", false);
    }

    TempDir dir_;
    fs::path socket_;
    httplib::Server server_;
    std::thread thread_;
    mutable std::mutex mutex_;
    std::vector<Exchange> conversation_;
    std::map<std::string, std::string> failures_;
    bool boot_source_ = false;
    bool started_ = false;
    bool paused_ = false;
    bool configured_ = false;  // a boot resource was set: no snapshot load any more
};

// A raw request to the fake, bypassing FirecrackerApi (to check the fake itself).
httplib::Result raw_request(const fs::path& socket, const std::string& method,
                            const std::string& path, const std::string& body) {
    httplib::Client client(socket.string());
    client.set_address_family(AF_UNIX);
    httplib::Headers headers{{"Host", "localhost"}};
    if (method == "GET") {
        return client.Get(path, headers);
    }
    if (method == "PATCH") {
        return client.Patch(path, headers, body, "application/json");
    }
    return client.Put(path, headers, body, "application/json");
}

std::string fault_message(const httplib::Result& result) {
    if (!result) {
        return "(no answer)";
    }
    return json::parse(result->body).value("fault_message", "");
}

BootPlan sample_plan() {
    BootPlan plan;
    plan.vcpus = 2;
    plan.memory_mib = 256;
    plan.kernel = "/srv/fn/vmlinux";
    plan.boot_args = "console=ttyS0 reboot=k panic=1 ip=10.100.0.2";
    plan.initrd = "/srv/fn/initramfs.cpio.gz";
    plan.rootfs = "/run/unifaas/instances/0123456789ab/rootfs.ext4";
    plan.rootfs_read_only = false;
    plan.tap = "faas0";
    plan.mac = guest_mac(0x0a640002);
    return plan;
}

// --- FirecrackerApi against the fake ---

TEST(FirecrackerApi, BootConversationIsExactlyTheDocumentedOne) {
    FakeFirecracker fake;
    FirecrackerApi api(fake.socket());
    boot_via_api(api, sample_plan());

    std::vector<std::pair<std::string, json>> expected{
        {"/machine-config", {{"vcpu_count", 2}, {"mem_size_mib", 256}}},
        {"/boot-source",
         {{"kernel_image_path", "/srv/fn/vmlinux"},
          {"boot_args", "console=ttyS0 reboot=k panic=1 ip=10.100.0.2"},
          {"initrd_path", "/srv/fn/initramfs.cpio.gz"}}},
        {"/drives/rootfs",
         {{"drive_id", "rootfs"},
          {"path_on_host", "/run/unifaas/instances/0123456789ab/rootfs.ext4"},
          {"is_root_device", true},
          {"is_read_only", false}}},
        {"/network-interfaces/eth0",
         {{"iface_id", "eth0"}, {"host_dev_name", "faas0"}, {"guest_mac", "02:fa:0a:64:00:02"}}},
        {"/actions", {{"action_type", "InstanceStart"}}},
    };
    auto conversation = fake.conversation();
    ASSERT_EQ(conversation.size(), expected.size());
    for (std::size_t i = 0; i < expected.size(); ++i) {
        SCOPED_TRACE(expected[i].first);
        EXPECT_EQ(conversation[i].method, "PUT");
        EXPECT_EQ(conversation[i].path, expected[i].first);
        EXPECT_EQ(conversation[i].body, expected[i].second);  // same keys, values and types
        EXPECT_EQ(conversation[i].status, 204);
        EXPECT_EQ(conversation[i].host, "localhost");
        EXPECT_EQ(conversation[i].content_type, "application/json");
    }
    EXPECT_TRUE(fake.started());
}

TEST(FirecrackerApi, TemplateIsPausedThenSavedFull) {
    FakeFirecracker fake;
    FirecrackerApi api(fake.socket());
    boot_via_api(api, sample_plan());
    api.pause_vm();
    api.create_snapshot("/var/lib/unifaas/snapshots/k/state", "/var/lib/unifaas/snapshots/k/mem");

    auto conversation = fake.conversation();
    ASSERT_EQ(conversation.size(), 7u);
    EXPECT_EQ(conversation[5].method, "PATCH");
    EXPECT_EQ(conversation[5].path, "/vm");
    EXPECT_EQ(conversation[5].body, (json{{"state", "Paused"}}));
    EXPECT_EQ(conversation[5].status, 204);
    EXPECT_EQ(conversation[6].method, "PUT");
    EXPECT_EQ(conversation[6].path, "/snapshot/create");
    EXPECT_EQ(conversation[6].body, (json{{"snapshot_type", "Full"},
                                          {"snapshot_path", "/var/lib/unifaas/snapshots/k/state"},
                                          {"mem_file_path", "/var/lib/unifaas/snapshots/k/mem"}}));
    EXPECT_EQ(conversation[6].status, 204);
    EXPECT_TRUE(fake.paused());
}

TEST(FirecrackerApi, CloneLoadsWithFileMemoryItsOwnTapAndResumes) {
    FakeFirecracker fake;
    FirecrackerApi api(fake.socket());
    api.load_snapshot("/snap/state", "/snap/mem", kNetworkInterfaceId, "faas7");

    auto conversation = fake.conversation();
    ASSERT_EQ(conversation.size(), 1u);
    EXPECT_EQ(conversation[0].method, "PUT");
    EXPECT_EQ(conversation[0].path, "/snapshot/load");
    EXPECT_EQ(conversation[0].body,
              (json{{"snapshot_path", "/snap/state"},
                    {"mem_backend", {{"backend_type", "File"}, {"backend_path", "/snap/mem"}}},
                    {"resume_vm", true},
                    {"network_overrides",
                     json::array({{{"iface_id", "eth0"}, {"host_dev_name", "faas7"}}})}}));
    EXPECT_EQ(conversation[0].status, 204);
    EXPECT_TRUE(fake.started());
    EXPECT_FALSE(fake.paused());
}

TEST(FirecrackerApi, SnapshotOfARunningVmIsRefusedWithTheFaultMessage) {
    FakeFirecracker fake;
    FirecrackerApi api(fake.socket());
    boot_via_api(api, sample_plan());
    try {
        api.create_snapshot("/s", "/m");
        FAIL() << "a running VM was snapshotted";
    } catch (const FirecrackerApiError& e) {
        EXPECT_EQ(e.request(), "PUT /snapshot/create");
        EXPECT_EQ(e.status(), 400);
        EXPECT_EQ(e.fault_message(), "Create snapshot error: the microVM must be paused");
    }
}

TEST(FirecrackerApi, LoadAfterBootConfigurationIsRefused) {
    FakeFirecracker fake;
    FirecrackerApi api(fake.socket());
    api.put_machine_config(1, 128);
    EXPECT_THROW(api.load_snapshot("/s", "/m", "eth0", "faas1"), FirecrackerApiError);
    EXPECT_THROW(api.load_snapshot("/s", "/m", "eth/0", "faas1"), std::invalid_argument);
}

TEST(FirecrackerApi, BootSourceWithoutInitrdHasNoInitrdField) {
    FakeFirecracker fake;
    FirecrackerApi api(fake.socket());
    BootPlan plan = sample_plan();
    plan.initrd.reset();
    plan.rootfs_read_only = true;
    boot_via_api(api, plan);

    auto conversation = fake.conversation();
    ASSERT_EQ(conversation.size(), 5u);
    EXPECT_EQ(conversation[1].body,
              (json{{"kernel_image_path", "/srv/fn/vmlinux"},
                    {"boot_args", "console=ttyS0 reboot=k panic=1 ip=10.100.0.2"}}));
    EXPECT_EQ(conversation[2].body["is_read_only"], true);
    EXPECT_EQ(conversation[2].body["is_root_device"], true);
}

TEST(FirecrackerApi, FaultIsReportedWithItsMessageAndRequest) {
    FakeFirecracker fake;
    const std::string fault =
        "The kernel file cannot be opened: No such file or directory (os error 2)";
    fake.fail("/boot-source", fault);
    FirecrackerApi api(fake.socket());
    try {
        boot_via_api(api, sample_plan());
        FAIL() << "the refused boot-source went unnoticed";
    } catch (const FirecrackerApiError& e) {
        EXPECT_EQ(std::string(e.what()), "firecracker rejected PUT /boot-source: " + fault);
        EXPECT_EQ(e.request(), "PUT /boot-source");
        EXPECT_EQ(e.status(), 400);
        EXPECT_EQ(e.fault_message(), fault);
    }
    // The conversation stops at the refusal.
    auto conversation = fake.conversation();
    ASSERT_EQ(conversation.size(), 2u);
    EXPECT_EQ(conversation[1].status, 400);
    EXPECT_FALSE(fake.started());
}

TEST(FirecrackerApi, StartWithoutBootSourceIsRefusedByTheFake) {
    FakeFirecracker fake;
    FirecrackerApi api(fake.socket());
    api.put_machine_config(1, 128);
    try {
        api.instance_start();
        FAIL() << "InstanceStart without a kernel was accepted";
    } catch (const FirecrackerApiError& e) {
        EXPECT_EQ(std::string(e.what()),
                  "firecracker rejected PUT /actions: Cannot start microvm without kernel "
                  "configuration.");
    }
}

TEST(FirecrackerApi, NoConfigurationAfterStart) {
    FakeFirecracker fake;
    FirecrackerApi api(fake.socket());
    boot_via_api(api, sample_plan());
    EXPECT_THROW(api.put_machine_config(1, 128), FirecrackerApiError);
}

TEST(FirecrackerApi, UnreachableSocketIsATransportError) {
    TempDir dir;
    FirecrackerApi api(dir.path() / "api.sock", 500ms);
    try {
        api.put_machine_config(1, 128);
        FAIL() << "no server, yet no error";
    } catch (const FirecrackerApiError& e) {
        EXPECT_EQ(e.status(), 0);
        EXPECT_EQ(e.request(), "PUT /machine-config");
        EXPECT_NE(std::string(e.what()).find("firecracker API PUT /machine-config failed: "),
                  std::string::npos)
            << e.what();
    }
}

TEST(FirecrackerApi, ResourceIdsMustBeSafeInAPath) {
    FakeFirecracker fake;
    FirecrackerApi api(fake.socket());
    EXPECT_THROW(api.put_drive("../actions", "/x", true, true), std::invalid_argument);
    EXPECT_THROW(api.put_drive("", "/x", true, true), std::invalid_argument);
    EXPECT_THROW(api.put_network_interface("eth 0", "faas0", "02:fa:0a:64:00:02"),
                 std::invalid_argument);
    EXPECT_TRUE(fake.conversation().empty());
    api.put_drive("scratch_1", "/x", false, true);
    EXPECT_EQ(fake.conversation().at(0).path, "/drives/scratch_1");
}

// The fake is only a good witness if it refuses what Firecracker refuses.
TEST(FirecrackerApi, FakeRejectsUnknownFieldsWrongTypesAndBadPaths) {
    FakeFirecracker fake;
    const auto& socket = fake.socket();

    auto unknown = raw_request(socket, "PUT", "/machine-config",
                               R"({"vcpu_count":1,"mem_size_mib":128,"ht_enabled":false})");
    ASSERT_TRUE(unknown);
    EXPECT_EQ(unknown->status, 400);
    EXPECT_NE(fault_message(unknown).find("unknown field `ht_enabled`"), std::string::npos);

    auto wrong_type =
        raw_request(socket, "PUT", "/machine-config", R"({"vcpu_count":"1","mem_size_mib":128})");
    EXPECT_EQ(wrong_type->status, 400);
    EXPECT_NE(fault_message(wrong_type).find("invalid type"), std::string::npos);

    auto negative =
        raw_request(socket, "PUT", "/machine-config", R"({"vcpu_count":-1,"mem_size_mib":128})");
    EXPECT_EQ(negative->status, 400);

    auto missing = raw_request(socket, "PUT", "/boot-source", R"({"boot_args":"x"})");
    EXPECT_EQ(missing->status, 400);
    EXPECT_NE(fault_message(missing).find("missing field `kernel_image_path`"), std::string::npos);

    auto mismatch = raw_request(
        socket, "PUT", "/drives/rootfs",
        R"({"drive_id":"other","path_on_host":"/x","is_root_device":true,"is_read_only":true})");
    EXPECT_EQ(mismatch->status, 400);
    EXPECT_EQ(fault_message(mismatch), "The id from the path does not match the id from the body!");

    auto bad_mac =
        raw_request(socket, "PUT", "/network-interfaces/eth0",
                    R"({"iface_id":"eth0","host_dev_name":"faas0","guest_mac":"02:fa"})");
    EXPECT_EQ(bad_mac->status, 400);

    auto bad_action = raw_request(socket, "PUT", "/actions", R"({"action_type":"Start"})");
    EXPECT_EQ(bad_action->status, 400);

    auto bad_path = raw_request(socket, "PUT", "/machine_config", R"({})");
    EXPECT_EQ(bad_path->status, 400);
    EXPECT_EQ(fault_message(bad_path), "Invalid request method and/or path: PUT machine_config.");

    auto bad_method = raw_request(socket, "PATCH", "/boot-source", R"({"kernel_image_path":"/k"})");
    EXPECT_EQ(bad_method->status, 400);

    auto empty = raw_request(socket, "PUT", "/boot-source", "");
    EXPECT_EQ(empty->status, 400);

    auto good = raw_request(socket, "PUT", "/machine-config",
                            R"({"vcpu_count":1,"mem_size_mib":128,"smt":false})");
    EXPECT_EQ(good->status, 204);
}

// --- the backend's pieces ---

VmSpec sample_vm() {
    VmSpec vm;
    vm.kernel = "/srv/fn/vmlinux";
    vm.image = "/srv/fn/rootfs.ext4";
    vm.memory_mib = 192;
    vm.cpus = 1;
    vm.cmdline = "console=ttyS0 ip=%ip::%gateway:%netmask::eth0:off unifaas.callback=%callback %x";
    vm.hypervisor = HypervisorType::Firecracker;
    return vm;
}

TEST(FirecrackerBackend, BootPlanConversationFromASpec) {
    GuestAddressing addressing{"10.100.0.6", "10.100.0.5", "255.255.255.252",
                               "http://10.100.0.5:8081/ready/abc"};
    BootPlan plan = plan_boot(sample_vm(), addressing, "/run/i/0123456789ab/rootfs.ext4", false,
                              "faas1", guest_mac(0x0a640006));
    FakeFirecracker fake;
    FirecrackerApi api(fake.socket());
    boot_via_api(api, plan);

    auto conversation = fake.conversation();
    ASSERT_EQ(conversation.size(), 5u);
    EXPECT_EQ(conversation[0].body, (json{{"vcpu_count", 1}, {"mem_size_mib", 192}}));
    EXPECT_EQ(conversation[1].body,
              (json{{"kernel_image_path", "/srv/fn/vmlinux"},
                    {"boot_args",
                     "console=ttyS0 ip=10.100.0.6::10.100.0.5:255.255.255.252::eth0:off "
                     "unifaas.callback=http://10.100.0.5:8081/ready/abc %x"}}));
    EXPECT_EQ(conversation[2].body["path_on_host"], "/run/i/0123456789ab/rootfs.ext4");
    EXPECT_EQ(conversation[2].body["is_read_only"], false);
    EXPECT_EQ(conversation[3].body["host_dev_name"], "faas1");
    EXPECT_EQ(conversation[3].body["guest_mac"], "02:fa:0a:64:00:06");
    EXPECT_TRUE(fake.started());
}

TEST(FirecrackerBackend, CommandLine) {
    EXPECT_EQ(firecracker_command_line("/opt/fc/firecracker", "/run/u/instances/ab/api.sock",
                                       "0123456789ab"),
              (std::vector<std::string>{"/opt/fc/firecracker", "--api-sock",
                                        "/run/u/instances/ab/api.sock", "--id", "0123456789ab",
                                        "--level", "Warning"}));
}

InstanceContext context_for(const VmSpec& vm) {
    auto spec = std::make_shared<FunctionSpec>();
    spec->name = "hello";
    spec->sandbox = vm;
    InstanceContext ctx;
    ctx.instance_id = "0123456789ab";
    ctx.spec = spec;
    ctx.callback_path = "/ready/token";
    return ctx;
}

int start_status(FirecrackerBackend& backend, const InstanceContext& ctx, std::string* message) {
    try {
        backend.start(ctx);
    } catch (const SandboxError& e) {
        *message = e.what();
        return e.http_status();
    }
    return 0;
}

TEST(FirecrackerBackend, StartWithoutFirecrackerIs501) {
    TempDir dir;
    FirecrackerBackend backend(VmEnvironment{dir.path(), 8081, nullptr, nullptr}, "");
    std::string message;
    EXPECT_EQ(start_status(backend, context_for(sample_vm()), &message), 501);
    EXPECT_EQ(message,
              "firecracker is not installed (set FIRECRACKER_EXE or firecracker in the daemon "
              "config)");
}

TEST(FirecrackerBackend, StartOfAnotherHypervisorsFunctionIs500) {
    TempDir dir;
    FirecrackerBackend backend(VmEnvironment{dir.path(), 8081, nullptr, nullptr}, "/bin/true");
    VmSpec vm = sample_vm();
    vm.hypervisor = HypervisorType::Qemu;
    std::string message;
    EXPECT_EQ(start_status(backend, context_for(vm), &message), 500);
    EXPECT_NE(message.find("not a firecracker function"), std::string::npos) << message;
}

TEST(FirecrackerBackend, StartWithoutTapNetworkIs501) {
    TempDir dir;
    FirecrackerBackend backend(VmEnvironment{dir.path(), 8081, nullptr, nullptr}, "/bin/true");
    std::string message;
    EXPECT_EQ(start_status(backend, context_for(sample_vm()), &message), 501);
    EXPECT_NE(message.find("no tap network"), std::string::npos) << message;
}

// --- find_firecracker ---

// Sets (or unsets, with nullopt) an environment variable for the scope.
class ScopedEnv {
  public:
    ScopedEnv(std::string name, std::optional<std::string> value) : name_(std::move(name)) {
        if (const char* old = std::getenv(name_.c_str())) {
            old_ = old;
        }
        set(value);
    }
    ~ScopedEnv() { set(old_); }
    ScopedEnv(const ScopedEnv&) = delete;
    ScopedEnv& operator=(const ScopedEnv&) = delete;

  private:
    void set(const std::optional<std::string>& value) {
        if (value) {
            ::setenv(name_.c_str(), value->c_str(), 1);
        } else {
            ::unsetenv(name_.c_str());
        }
    }
    std::string name_;
    std::optional<std::string> old_;
};

fs::path make_executable(const fs::path& path) {
    std::ofstream(path) << "#!/bin/sh\nexit 0\n";
    fs::permissions(path, fs::perms::owner_all);
    return path;
}

TEST(FindFirecracker, ConfiguredWinsOverEnvironmentAndPath) {
    TempDir dir;
    fs::create_directory(dir.path() / "bin");
    auto configured = make_executable(dir.path() / "configured-fc");
    auto from_env = make_executable(dir.path() / "env-fc");
    make_executable(dir.path() / "bin" / "firecracker");
    ScopedEnv env("FIRECRACKER_EXE", from_env.string());
    ScopedEnv path("PATH", (dir.path() / "bin").string());

    EXPECT_EQ(find_firecracker(configured.string()), configured.string());
    // A configured path that is not there is not silently replaced by another firecracker.
    EXPECT_EQ(find_firecracker((dir.path() / "missing").string()), "");
}

TEST(FindFirecracker, EnvironmentVariableWinsOverPath) {
    TempDir dir;
    fs::create_directory(dir.path() / "bin");
    auto from_env = make_executable(dir.path() / "env-fc");
    make_executable(dir.path() / "bin" / "firecracker");
    ScopedEnv path("PATH", (dir.path() / "bin").string());
    {
        ScopedEnv env("FIRECRACKER_EXE", from_env.string());
        EXPECT_EQ(find_firecracker(""), from_env.string());
    }
    {
        ScopedEnv env("FIRECRACKER_EXE", (dir.path() / "missing").string());
        EXPECT_EQ(find_firecracker(""), "");
    }
    {
        ScopedEnv env("FIRECRACKER_EXE", std::string());  // empty counts as unset
        EXPECT_EQ(find_firecracker(""), (dir.path() / "bin" / "firecracker").string());
    }
}

TEST(FindFirecracker, PathLookup) {
    TempDir dir;
    fs::create_directory(dir.path() / "a");
    fs::create_directory(dir.path() / "b");
    std::ofstream(dir.path() / "a" / "firecracker") << "not executable";
    make_executable(dir.path() / "b" / "firecracker");
    ScopedEnv env("FIRECRACKER_EXE", std::nullopt);
    {
        ScopedEnv path("PATH", (dir.path() / "a").string() + ":" + (dir.path() / "b").string());
        EXPECT_EQ(find_firecracker(""), (dir.path() / "b" / "firecracker").string());
    }
    {
        ScopedEnv path("PATH", (dir.path() / "a").string());
        EXPECT_EQ(find_firecracker(""), "");
    }
}

// --- copy_sparse ---

struct Chunk {
    off_t offset;
    std::string data;
};

void write_sparse(const fs::path& path, off_t size, const std::vector<Chunk>& chunks) {
    int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    ASSERT_GE(fd, 0) << std::strerror(errno);
    ASSERT_EQ(::ftruncate(fd, size), 0);
    for (const auto& chunk : chunks) {
        ASSERT_EQ(::pwrite(fd, chunk.data.data(), chunk.data.size(), chunk.offset),
                  static_cast<ssize_t>(chunk.data.size()));
    }
    ::close(fd);
}

std::string read_all(const fs::path& path) {
    std::ifstream in(path, std::ios::binary);
    return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

off_t allocated_bytes(const fs::path& path) {
    struct stat st {};
    EXPECT_EQ(::stat(path.c_str(), &st), 0);
    return static_cast<off_t>(st.st_blocks) * 512;
}

class SparseCopy : public ::testing::TestWithParam<bool> {};

TEST_P(SparseCopy, KeepsContentAndHoles) {
    TempDir dir;
    const off_t size = 64 << 20;
    std::string block(8192, '\0');
    for (std::size_t i = 0; i < block.size(); ++i) {
        block[i] = static_cast<char>('a' + i % 26);
    }
    auto source = dir.path() / "image.ext4";
    write_sparse(
        source, size,
        {{0, "superblock"}, {10 << 20, block}, {(40 << 20) + 123, block}, {size - 3, "end"}});
    if (allocated_bytes(source) > (1 << 20)) {
        GTEST_SKIP() << "this filesystem does not keep holes";
    }

    auto copy = dir.path() / "rootfs.ext4";
    CopyMethod method = copy_sparse(source, copy, /*allow_reflink=*/GetParam());
    if (!GetParam()) {
        EXPECT_EQ(method, CopyMethod::DataExtents);
    }
    EXPECT_EQ(fs::file_size(copy), static_cast<std::uintmax_t>(size));
    EXPECT_TRUE(read_all(copy) == read_all(source)) << "contents differ";
    EXPECT_LT(allocated_bytes(copy), 1 << 20) << "the copy is not sparse";
    EXPECT_EQ(fs::status(copy).permissions(), fs::perms::owner_read | fs::perms::owner_write);
}

TEST_P(SparseCopy, FileEndingInAHoleKeepsItsSize) {
    TempDir dir;
    auto source = dir.path() / "image";
    write_sparse(source, 32 << 20, {{4096, "data"}});
    auto copy = dir.path() / "copy";
    copy_sparse(source, copy, GetParam());
    EXPECT_EQ(fs::file_size(copy), static_cast<std::uintmax_t>(32 << 20));
    EXPECT_TRUE(read_all(copy) == read_all(source));
}

TEST_P(SparseCopy, EmptyFile) {
    TempDir dir;
    std::ofstream(dir.path() / "empty").flush();
    copy_sparse(dir.path() / "empty", dir.path() / "copy", GetParam());
    EXPECT_EQ(fs::file_size(dir.path() / "copy"), 0u);
}

INSTANTIATE_TEST_SUITE_P(ReflinkOrExtents, SparseCopy, ::testing::Bool(),
                         [](const auto& info) { return info.param ? "Reflink" : "Extents"; });

// Across filesystems copy_file_range may refuse (EXDEV): the read/write fallback must keep the
// holes too, skipping zero blocks.
TEST(SparseCopyAcrossFilesystems, FallbackKeepsContentAndHoles) {
    TempDir dir;
    std::string shm_pattern = "/dev/shm/unifaas-fc-XXXXXX";
    if (!fs::is_directory("/dev/shm") || ::mkdtemp(shm_pattern.data()) == nullptr) {
        GTEST_SKIP() << "no /dev/shm";
    }
    struct Remove {
        fs::path path;
        ~Remove() {
            std::error_code ec;
            fs::remove_all(path, ec);
        }
    } remove{shm_pattern};
    auto source = dir.path() / "image";
    const off_t size = 16 << 20;
    // A data extent holding a zero run: the fallback leaves the zeros out of the copy.
    std::string data = "head" + std::string(3 << 20, '\0') + "tail";
    write_sparse(source, size, {{4 << 20, data}});
    auto copy = fs::path(shm_pattern) / "copy";
    copy_sparse(source, copy);
    EXPECT_EQ(fs::file_size(copy), static_cast<std::uintmax_t>(size));
    EXPECT_TRUE(read_all(copy) == read_all(source)) << "contents differ";
    EXPECT_LT(allocated_bytes(copy), 2 << 20) << "the copy is not sparse";
}

TEST(SparseCopyErrors, RefusesAnExistingTargetAndLeavesIt) {
    TempDir dir;
    std::ofstream(dir.path() / "image") << "image";
    std::ofstream(dir.path() / "copy") << "precious";
    EXPECT_THROW(copy_sparse(dir.path() / "image", dir.path() / "copy"), std::system_error);
    EXPECT_EQ(read_all(dir.path() / "copy"), "precious");
}

TEST(SparseCopyErrors, MissingSourceNamesItAndCreatesNothing) {
    TempDir dir;
    try {
        copy_sparse(dir.path() / "missing", dir.path() / "copy");
        FAIL() << "copied a missing file";
    } catch (const std::system_error& e) {
        EXPECT_NE(std::string(e.what()).find((dir.path() / "missing").string()), std::string::npos);
    }
    EXPECT_FALSE(fs::exists(dir.path() / "copy"));
}

// --- wait_for_api_socket ---

// A listening (or only bound) unix socket at `path`.
class UnixListener {
  public:
    UnixListener(const fs::path& path, bool listen_now) {
        fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        sockaddr_un addr{};
        addr.sun_family = AF_UNIX;
        std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
        EXPECT_EQ(::bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0)
            << std::strerror(errno);
        if (listen_now) {
            listen();
        }
    }
    ~UnixListener() { ::close(fd_); }
    UnixListener(const UnixListener&) = delete;
    UnixListener& operator=(const UnixListener&) = delete;
    void listen() { EXPECT_EQ(::listen(fd_, 4), 0); }

  private:
    int fd_ = -1;
};

TEST(FirecrackerSocketWait, ReadyWhenTheSocketAppearsAndListens) {
    TempDir dir;
    ChildProcess child({"sleep", "30"}, dir.path() / "out.log");
    auto socket = dir.path() / "api.sock";
    std::unique_ptr<UnixListener> listener;
    std::thread creator([&] {
        std::this_thread::sleep_for(50ms);
        listener = std::make_unique<UnixListener>(socket, true);
    });
    auto begin = std::chrono::steady_clock::now();
    SocketWait result = wait_for_api_socket(socket, child.pidfd(), 5000ms);
    auto waited = std::chrono::steady_clock::now() - begin;
    creator.join();
    EXPECT_EQ(result, SocketWait::Ready);
    EXPECT_LT(waited, 2s);
}

TEST(FirecrackerSocketWait, BoundButNotYetListeningIsWaitedFor) {
    TempDir dir;
    ChildProcess child({"sleep", "30"}, dir.path() / "out.log");
    auto socket = dir.path() / "api.sock";
    UnixListener listener(socket, false);
    std::thread later([&] {
        std::this_thread::sleep_for(30ms);
        listener.listen();
    });
    SocketWait result = wait_for_api_socket(socket, child.pidfd(), 5000ms);
    later.join();
    EXPECT_EQ(result, SocketWait::Ready);
}

TEST(FirecrackerSocketWait, AnEarlyExitFailsFast) {
    TempDir dir;
    ChildProcess child({"sh", "-c", "exit 3"}, dir.path() / "out.log");
    auto begin = std::chrono::steady_clock::now();
    EXPECT_EQ(wait_for_api_socket(dir.path() / "api.sock", child.pidfd(), 5000ms),
              SocketWait::ProcessExited);
    EXPECT_LT(std::chrono::steady_clock::now() - begin, 2s);
    EXPECT_EQ(child.exit_description(), "exited with status 3");
}

TEST(FirecrackerSocketWait, TimesOut) {
    TempDir dir;
    ChildProcess child({"sleep", "30"}, dir.path() / "out.log");
    auto begin = std::chrono::steady_clock::now();
    EXPECT_EQ(wait_for_api_socket(dir.path() / "api.sock", child.pidfd(), 150ms),
              SocketWait::TimedOut);
    auto waited = std::chrono::steady_clock::now() - begin;
    EXPECT_GE(waited, 150ms);
    EXPECT_LT(waited, 2s);
}

}  // namespace
}  // namespace unifaas
