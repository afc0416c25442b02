// FunctionSpec: one validated function.toml.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <variant>
#include <vector>

#include "net/network_policy.h"

namespace unifaas {

using Seconds = std::chrono::duration<double>;

// A function.toml (or unifaas.toml) that cannot be used. what() names the file, the key and the
// problem, e.g. "/srv/reg/hello/function.toml: vm.memory: must be between 16 and 1048576 (got 0)".
class ConfigError : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

// Who runs a container: the Docker Engine, or an OCI runtime (crun, runc) driven directly.
enum class ContainerEngine { Docker, Oci };

struct ContainerSpec {
    std::string image;                   // a local image; never pulled
    std::uint64_t memory_mib = 128;
    std::optional<std::string> runtime;  // passed to the engine as-is (runc, crun, runsc, ...)

    // engine = "oci": `runtime` is the OCI runtime's name or path (default crun); `image_path` is
    // `image` resolved against the function's directory (a rootfs directory, an OCI image layout
    // directory or a docker-archive .tar; checked to exist); `entrypoint` is the command for
    // images that carry none (a plain rootfs directory).
    ContainerEngine engine = ContainerEngine::Docker;
    std::filesystem::path image_path;
    std::vector<std::string> entrypoint;
};

enum class HypervisorType { Firecracker, Qemu, Microvm };
enum class DiskType { Block, NineP };

struct VmSpec {
    std::filesystem::path kernel;                // absolute (relative paths resolved against the
    std::filesystem::path image;                 // function's directory)
    std::optional<std::filesystem::path> initrd;  // our addition
    std::uint64_t memory_mib = 128;
    unsigned cpus = 1;
    std::string cmdline;  // with %ip %gateway %netmask %callback placeholders
    bool snapshot = false;  // cold starts restore clones of a saved template when one is ready

    HypervisorType hypervisor = HypervisorType::Firecracker;
    bool copy_rootfs = true;             // firecracker
    DiskType disk_type = DiskType::Block;  // qemu, microvm
    // microvm machine flags; defaults are QEMU's own, always emitted explicitly.
    bool pic = true;
    bool pit = true;
    bool rtc = true;
    bool acpi = true;
    bool auto_kernel_cmdline = true;
};

struct FunctionSpec {
    std::string name;              // directory name in the registry
    std::filesystem::path dir;     // absolute function directory
    std::filesystem::path file;    // absolute path of function.toml

    unsigned concurrent_requests = 1;  // slots per instance, >= 1
    bool single_use = false;           // stop the instance after its one request
    Seconds keepalive{60};             // idle time before an instance is stopped

    // Our additions.
    std::uint16_t port = 8080;       // port the function listens on inside the sandbox
    unsigned max_instances = 10;     // instances running or booting at once, >= 1
    unsigned min_instances = 0;      // kept warm, <= max_instances
    Seconds queue_timeout{10};       // wait for capacity before 503
    Seconds boot_timeout{25};        // start to readiness callback before 504
    Seconds request_timeout{60};     // upstream response before 504
    // Streaming (issue 14): a response body in progress is cut off after this long without a
    // byte from the instance, or when the whole exchange exceeds the cap (none when empty).
    Seconds stream_idle_timeout{60};
    std::optional<Seconds> stream_max_duration;
    // Largest request body for this function (413 above); unset: the daemon's max-body-size.
    std::optional<std::size_t> max_body_size;
    std::map<std::string, std::string> env;
    NetworkPolicy network;  // [network]: what the instances may reach (default: the callback)

    std::variant<ContainerSpec, VmSpec> sandbox;

    bool is_container() const { return std::holds_alternative<ContainerSpec>(sandbox); }
    bool is_vm() const { return std::holds_alternative<VmSpec>(sandbox); }
    const ContainerSpec& container() const { return std::get<ContainerSpec>(sandbox); }
    const VmSpec& vm() const { return std::get<VmSpec>(sandbox); }
    // "container" (Docker), "oci", "firecracker", "qemu" or "microvm".
    std::string backend_name() const;
};

// Loads and validates <dir>/function.toml; the function's name is the directory's name.
// Throws ConfigError naming the file, the key and the problem.
std::shared_ptr<const FunctionSpec> load_function_spec(const std::filesystem::path& dir);

// Function names: [A-Za-z0-9][A-Za-z0-9_.-]*, at most 128 characters.
bool is_valid_function_name(std::string_view name);

}  // namespace unifaas
