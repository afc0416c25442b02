// FirecrackerApi: the few calls of Firecracker's REST API (the unix socket given with --api-sock)
// that configure and boot a microVM, plus the boot conversation itself (boot_via_api).
//
// Every configuration call is a PUT with a JSON body; Firecracker answers 204 No Content when it
// accepted it and 400 with {"fault_message": "..."} when not. Its bodies are parsed strictly
// (serde deny_unknown_fields): only the documented fields are ever sent.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>

#include <nlohmann/json.hpp>

namespace httplib {
class Client;
}

namespace unifaas {

// A request Firecracker refused (status() is its HTTP status, fault_message() its text) or that
// got no answer at all (status() 0, fault_message() the transport error). what() reads
// "firecracker rejected PUT /boot-source: <fault_message>" or
// "firecracker API PUT /boot-source failed: <transport error>".
class FirecrackerApiError : public std::runtime_error {
  public:
    FirecrackerApiError(std::string request, int status, std::string fault_message);
    const std::string& request() const { return request_; }  // "PUT /boot-source"
    int status() const { return status_; }
    const std::string& fault_message() const { return fault_message_; }

  private:
    std::string request_;
    int status_;
    std::string fault_message_;
};

class FirecrackerApi {
  public:
    // Connects lazily, one connection per request. `timeout` bounds connecting and each answer.
    explicit FirecrackerApi(std::filesystem::path socket_path,
                            std::chrono::milliseconds timeout = std::chrono::seconds(10));
    ~FirecrackerApi();
    FirecrackerApi(const FirecrackerApi&) = delete;
    FirecrackerApi& operator=(const FirecrackerApi&) = delete;

    // PUT /machine-config {"vcpu_count", "mem_size_mib"}
    void put_machine_config(unsigned vcpu_count, std::uint64_t mem_size_mib);
    // PUT /boot-source {"kernel_image_path", "boot_args"[, "initrd_path"]}
    void put_boot_source(const std::string& kernel_image_path, const std::string& boot_args,
                         const std::optional<std::string>& initrd_path);
    // PUT /drives/<drive_id> {"drive_id", "path_on_host", "is_root_device", "is_read_only"}
    void put_drive(const std::string& drive_id, const std::string& path_on_host,
                   bool is_root_device, bool is_read_only);
    // PUT /network-interfaces/<iface_id> {"iface_id", "host_dev_name", "guest_mac"}
    void put_network_interface(const std::string& iface_id, const std::string& host_dev_name,
                               const std::string& guest_mac);
    // PUT /actions {"action_type": "InstanceStart"}
    void instance_start();

    // Snapshots (a template is paused, saved and never resumed; clones load it):
    // PATCH /vm {"state": "Paused"} / {"state": "Resumed"}
    void pause_vm();
    void resume_vm();
    // PUT /snapshot/create {"snapshot_type": "Full", "snapshot_path", "mem_file_path"}
    void create_snapshot(const std::string& snapshot_path, const std::string& mem_file_path);
    // PUT /snapshot/load {"snapshot_path", "mem_backend": {"backend_type": "File",
    // "backend_path"}, "resume_vm": true, "network_overrides": [{"iface_id", "host_dev_name"}]}
    // in a fresh firecracker process: the guest memory is mapped private from the template's
    // file, and the clone's interface `iface_id` uses its own tap.
    void load_snapshot(const std::string& snapshot_path, const std::string& mem_file_path,
                       const std::string& iface_id, const std::string& host_dev_name);

    // Throws std::invalid_argument unless `id` is a usable drive/interface id: non-empty
    // [A-Za-z0-9_] (what Firecracker accepts in a path), so it never needs URL escaping.
    static void check_id(const std::string& id);

  private:
    void put(const std::string& path, const nlohmann::json& body);
    void patch(const std::string& path, const nlohmann::json& body);
    void send(const std::string& method, const std::string& path, const nlohmann::json& body);

    std::filesystem::path socket_path_;
    std::unique_ptr<httplib::Client> client_;
};

// Everything the boot conversation sends.
struct BootPlan {
    unsigned vcpus = 1;
    std::uint64_t memory_mib = 128;
    std::string kernel;
    std::string boot_args;
    std::optional<std::string> initrd;
    std::string rootfs;
    bool rootfs_read_only = true;
    std::string tap;
    std::string mac;
};

inline constexpr const char* kRootDriveId = "rootfs";
inline constexpr const char* kNetworkInterfaceId = "eth0";

// machine-config, boot-source, drive "rootfs" (the root device), network interface "eth0",
// InstanceStart: in this order. Throws FirecrackerApiError at the first refusal.
void boot_via_api(FirecrackerApi& api, const BootPlan& plan);

}  // namespace unifaas
