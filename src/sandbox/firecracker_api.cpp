#include "sandbox/firecracker_api.h"

#include <sys/socket.h>

#include <algorithm>
#include <cctype>

#include <httplib.h>

namespace unifaas {

namespace {

using nlohmann::json;

std::string error_text(const std::string& request, int status, const std::string& fault) {
    if (status == 0) {
        return "firecracker API " + request + " failed: " + fault;
    }
    return "firecracker rejected " + request + ": " + fault;
}

// The fault_message of an error answer; the raw body (or the status) when it has none.
std::string fault_of(const httplib::Response& response) {
    json body = json::parse(response.body, nullptr, /*allow_exceptions=*/false);
    if (body.is_object() && body.contains("fault_message") && body["fault_message"].is_string()) {
        return body["fault_message"].get<std::string>();
    }
    if (!response.body.empty()) {
        return response.body;
    }
    return "HTTP " + std::to_string(response.status);
}

}  // namespace

FirecrackerApiError::FirecrackerApiError(std::string request, int status, std::string fault_message)
    : std::runtime_error(error_text(request, status, fault_message)),
      request_(std::move(request)),
      status_(status),
      fault_message_(std::move(fault_message)) {}

FirecrackerApi::FirecrackerApi(std::filesystem::path socket_path, std::chrono::milliseconds timeout)
    : socket_path_(std::move(socket_path)),
      client_(std::make_unique<httplib::Client>(socket_path_.string())) {
    client_->set_address_family(AF_UNIX);
    client_->set_connection_timeout(timeout);
    client_->set_read_timeout(timeout);
    client_->set_write_timeout(timeout);
}

FirecrackerApi::~FirecrackerApi() = default;

void FirecrackerApi::check_id(const std::string& id) {
    bool ok = !id.empty() && std::all_of(id.begin(), id.end(), [](unsigned char c) {
        return std::isalnum(c) || c == '_';
    });
    if (!ok) {
        throw std::invalid_argument("firecracker resource id \"" + id +
                                    "\": only letters, digits and '_' are allowed");
    }
}

void FirecrackerApi::put(const std::string& path, const json& body) {
    send("PUT", path, body);
}

void FirecrackerApi::patch(const std::string& path, const json& body) {
    send("PATCH", path, body);
}

void FirecrackerApi::send(const std::string& method, const std::string& path, const json& body) {
    static const httplib::Headers kHeaders{{"Host", "localhost"}, {"Accept", "application/json"}};
    std::string request = method + " " + path;
    auto result = method == "PATCH"
                      ? client_->Patch(path.c_str(), kHeaders, body.dump(), "application/json")
                      : client_->Put(path.c_str(), kHeaders, body.dump(), "application/json");
    if (!result) {
        throw FirecrackerApiError(
            request, 0, httplib::to_string(result.error()) + " (" + socket_path_.string() + ")");
    }
    if (result->status < 200 || result->status > 299) {
        throw FirecrackerApiError(request, result->status, fault_of(*result));
    }
}

void FirecrackerApi::put_machine_config(unsigned vcpu_count, std::uint64_t mem_size_mib) {
    put("/machine-config", json{{"vcpu_count", vcpu_count}, {"mem_size_mib", mem_size_mib}});
}

void FirecrackerApi::put_boot_source(const std::string& kernel_image_path,
                                     const std::string& boot_args,
                                     const std::optional<std::string>& initrd_path) {
    json body{{"kernel_image_path", kernel_image_path}, {"boot_args", boot_args}};
    if (initrd_path) {
        body["initrd_path"] = *initrd_path;
    }
    put("/boot-source", body);
}

void FirecrackerApi::put_drive(const std::string& drive_id, const std::string& path_on_host,
                               bool is_root_device, bool is_read_only) {
    check_id(drive_id);
    put("/drives/" + drive_id, json{{"drive_id", drive_id},
                                    {"path_on_host", path_on_host},
                                    {"is_root_device", is_root_device},
                                    {"is_read_only", is_read_only}});
}

void FirecrackerApi::put_network_interface(const std::string& iface_id,
                                           const std::string& host_dev_name,
                                           const std::string& guest_mac) {
    check_id(iface_id);
    put("/network-interfaces/" + iface_id,
        json{{"iface_id", iface_id}, {"host_dev_name", host_dev_name}, {"guest_mac", guest_mac}});
}

void FirecrackerApi::instance_start() {
    put("/actions", json{{"action_type", "InstanceStart"}});
}

void FirecrackerApi::pause_vm() {
    patch("/vm", json{{"state", "Paused"}});
}

void FirecrackerApi::resume_vm() {
    patch("/vm", json{{"state", "Resumed"}});
}

void FirecrackerApi::create_snapshot(const std::string& snapshot_path,
                                     const std::string& mem_file_path) {
    put("/snapshot/create", json{{"snapshot_type", "Full"},
                                 {"snapshot_path", snapshot_path},
                                 {"mem_file_path", mem_file_path}});
}

void FirecrackerApi::load_snapshot(const std::string& snapshot_path,
                                   const std::string& mem_file_path, const std::string& iface_id,
                                   const std::string& host_dev_name) {
    check_id(iface_id);
    put("/snapshot/load",
        json{{"snapshot_path", snapshot_path},
             {"mem_backend", {{"backend_type", "File"}, {"backend_path", mem_file_path}}},
             {"resume_vm", true},
             {"network_overrides",
              json::array({{{"iface_id", iface_id}, {"host_dev_name", host_dev_name}}})}});
}

void boot_via_api(FirecrackerApi& api, const BootPlan& plan) {
    api.put_machine_config(plan.vcpus, plan.memory_mib);
    api.put_boot_source(plan.kernel, plan.boot_args, plan.initrd);
    api.put_drive(kRootDriveId, plan.rootfs, /*is_root_device=*/true, plan.rootfs_read_only);
    api.put_network_interface(kNetworkInterfaceId, plan.tap, plan.mac);
    api.instance_start();
}

}  // namespace unifaas
