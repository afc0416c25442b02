// function.toml: the original UniFaaS keys (concurrent-requests, single-use, keepalive, [vm],
// [container]) with their original meaning, plus our optional additions.
#include "config/function_spec.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <system_error>

#include "config/toml_util.h"

namespace unifaas {

using config_detail::in_quotes;
using config_detail::SecondsMin;
using config_detail::TableReader;
namespace fs = std::filesystem;

namespace {

constexpr std::size_t kMaxNameLength = 128;
constexpr std::uint64_t kMaxMemoryMib = 1048576;

// ASCII only, whatever the locale.
bool is_digit(char c) {
    return c >= '0' && c <= '9';
}
bool is_alnum(char c) {
    return is_digit(c) || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

bool is_env_name(std::string_view name) {
    if (name.empty() || is_digit(name.front())) {
        return false;
    }
    return std::all_of(name.begin(), name.end(), [](char c) { return is_alnum(c) || c == '_'; });
}

// Shortest text that reads back as the same double, still looking like a float: 1.0 -> "1.0",
// 0.1 -> "0.1", 1e300 -> "1e+300".
std::string float_text(double value) {
    char buffer[64];
    auto end = std::to_chars(buffer, buffer + sizeof buffer, value).ptr;
    std::string text(buffer, end);
    if (std::isfinite(value) && text.find_first_of(".e") == std::string::npos) {
        text += ".0";
    }
    return text;
}

std::string env_value(const TableReader& env, const std::string& key, const toml::node& node) {
    if (const auto* s = node.as_string()) {
        if (s->get().find('\0') != std::string::npos) {
            env.fail(key, "must not contain a NUL character");
        }
        return s->get();
    }
    if (const auto* i = node.as_integer()) {
        return std::to_string(i->get());
    }
    if (const auto* f = node.as_floating_point()) {
        return float_text(f->get());
    }
    if (const auto* b = node.as_boolean()) {
        return b->get() ? "true" : "false";
    }
    env.fail(key, "expected a string, number or boolean, got " +
                      std::string(config_detail::type_name(node.type())));
}

std::map<std::string, std::string> parse_env(TableReader env) {
    std::map<std::string, std::string> out;
    env.for_each([&](const std::string& key, const toml::node& node) {
        if (!is_env_name(key)) {
            env.fail(key,
                     "not a valid environment variable name (expected [A-Za-z_][A-Za-z0-9_]*)");
        }
        out[key] = env_value(env, key, node);
    });
    return out;
}

ContainerEngine parse_engine(TableReader& container) {
    auto engine = container.string("engine").value_or("docker");
    if (engine == "docker") {
        return ContainerEngine::Docker;
    }
    if (engine == "oci") {
        return ContainerEngine::Oci;
    }
    container.fail("engine", "unknown engine " + in_quotes(engine) + " (expected docker, oci)");
}

// `entrypoint = ["/hello", "arg"]`: engine "oci" only, for images without a command.
std::vector<std::string> parse_entrypoint(TableReader& container, ContainerEngine engine) {
    auto entrypoint = container.string_array("entrypoint");
    if (entrypoint && engine != ContainerEngine::Oci) {
        container.fail("entrypoint",
                       "only valid with engine = \"oci\" (Docker takes the "
                       "image's ENTRYPOINT)");
    }
    return entrypoint.value_or(std::vector<std::string>{});
}

void check_oci_image(const TableReader& container, const fs::path& image) {
    std::error_code ec;
    fs::file_status status = fs::status(image, ec);
    if (status.type() == fs::file_type::not_found) {
        container.fail("image", image.string() +
                                    " does not exist (engine \"oci\" takes a "
                                    "rootfs directory, an OCI layout or a .tar)");
    }
    if (ec) {
        container.fail("image", "cannot access " + image.string() + ": " + ec.message());
    }
    if (!fs::is_directory(status) && !fs::is_regular_file(status)) {
        container.fail("image", image.string() + " is neither a directory nor a file");
    }
}

ContainerSpec parse_container(TableReader container, const fs::path& dir) {
    ContainerSpec spec;
    spec.engine = parse_engine(container);
    spec.image = container.required_string("image");
    spec.memory_mib =
        container.integer<std::uint64_t>("memory", 4, kMaxMemoryMib).value_or(spec.memory_mib);
    spec.runtime = container.non_empty_string("runtime");
    spec.entrypoint = parse_entrypoint(container, spec.engine);
    if (spec.engine == ContainerEngine::Oci) {
        spec.image_path = container.required_path("image", dir);
        check_oci_image(container, spec.image_path);
    }
    container.finish();
    return spec;
}

HypervisorType parse_hypervisor_type(TableReader& hv) {
    auto type = hv.string("type");
    if (!type) {
        hv.fail("type", "required (expected firecracker, qemu, microvm)");
    }
    if (*type == "firecracker") {
        return HypervisorType::Firecracker;
    }
    if (*type == "qemu") {
        return HypervisorType::Qemu;
    }
    if (*type == "microvm" || *type == "qemu-microvm") {
        return HypervisorType::Microvm;
    }
    hv.fail("type",
            "unknown hypervisor " + in_quotes(*type) + " (expected firecracker, qemu, microvm)");
}

const char* hypervisor_name(HypervisorType type) {
    switch (type) {
        case HypervisorType::Firecracker:
            return "firecracker";
        case HypervisorType::Qemu:
            return "qemu";
        case HypervisorType::Microvm:
            return "microvm";
    }
    return "?";
}

struct HypervisorKey {
    const char* key;
    bool firecracker, qemu, microvm;
};

// Keys of the hypervisor table besides `type`, and the hypervisor types that take them.
constexpr HypervisorKey kHypervisorKeys[] = {
    {"copy-rootfs", true, false, false},
    {"disk-type", false, true, true},
    {"pic", false, false, true},
    {"pit", false, false, true},
    {"rtc", false, false, true},
    {"acpi", false, false, true},
    {"auto-kernel-cmdline", false, false, true},
};

bool takes_key(const HypervisorKey& key, HypervisorType type) {
    switch (type) {
        case HypervisorType::Firecracker:
            return key.firecracker;
        case HypervisorType::Qemu:
            return key.qemu;
        case HypervisorType::Microvm:
            return key.microvm;
    }
    return false;
}

// A key that belongs to another hypervisor type gets a clearer message than "unknown key".
void reject_foreign_keys(TableReader& hv, HypervisorType type) {
    for (const auto& key : kHypervisorKeys) {
        if (!takes_key(key, type) && hv.has(key.key)) {
            hv.fail(key.key, std::string("not valid for hypervisor type ") + hypervisor_name(type));
        }
    }
}

DiskType parse_disk_type(TableReader& hv) {
    auto value = hv.string("disk-type").value_or("block");
    if (value == "block") {
        return DiskType::Block;
    }
    if (value == "9p") {
        return DiskType::NineP;
    }
    hv.fail("disk-type", "unknown disk type " + in_quotes(value) + " (expected block, 9p)");
}

void parse_hypervisor(TableReader hv, VmSpec& vm) {
    vm.hypervisor = parse_hypervisor_type(hv);
    reject_foreign_keys(hv, vm.hypervisor);
    if (vm.hypervisor == HypervisorType::Firecracker) {
        vm.copy_rootfs = hv.boolean("copy-rootfs").value_or(vm.copy_rootfs);
    } else {
        vm.disk_type = parse_disk_type(hv);
    }
    if (vm.hypervisor == HypervisorType::Microvm) {
        vm.pic = hv.boolean("pic").value_or(vm.pic);
        vm.pit = hv.boolean("pit").value_or(vm.pit);
        vm.rtc = hv.boolean("rtc").value_or(vm.rtc);
        vm.acpi = hv.boolean("acpi").value_or(vm.acpi);
        vm.auto_kernel_cmdline = hv.boolean("auto-kernel-cmdline").value_or(vm.auto_kernel_cmdline);
    }
    hv.finish();
}

enum class FileKind { Regular, Directory };

void require_file(const TableReader& vm, std::string_view key, const fs::path& path,
                  FileKind kind) {
    std::error_code ec;
    fs::file_status status = fs::status(path, ec);
    if (status.type() == fs::file_type::not_found) {
        vm.fail(key, path.string() + " does not exist");
    }
    if (ec) {
        vm.fail(key, "cannot access " + path.string() + ": " + ec.message());
    }
    if (kind == FileKind::Regular && !fs::is_regular_file(status)) {
        vm.fail(key, path.string() + " is not a regular file");
    }
    if (kind == FileKind::Directory && !fs::is_directory(status)) {
        vm.fail(key, path.string() + " is not a directory (disk-type 9p shares a directory)");
    }
}

void check_vm_files(const TableReader& vm, const VmSpec& spec) {
    require_file(vm, "kernel", spec.kernel, FileKind::Regular);
    if (spec.initrd) {
        require_file(vm, "initrd", *spec.initrd, FileKind::Regular);
    }
    if (!spec.image.empty()) {
        bool shares_dir =
            spec.hypervisor != HypervisorType::Firecracker && spec.disk_type == DiskType::NineP;
        require_file(vm, "image", spec.image, shares_dir ? FileKind::Directory : FileKind::Regular);
    }
}

VmSpec parse_vm(TableReader vm, const fs::path& dir) {
    VmSpec spec;
    spec.kernel = vm.required_path("kernel", dir);
    auto image = vm.path("image", dir);
    spec.initrd = vm.path("initrd", dir);
    spec.memory_mib =
        vm.integer<std::uint64_t>("memory", 16, kMaxMemoryMib).value_or(spec.memory_mib);
    spec.cpus = vm.integer<unsigned>("cpus", 1, 64).value_or(spec.cpus);
    spec.cmdline = vm.string("cmdline").value_or("");
    spec.snapshot = vm.boolean("snapshot").value_or(false);
    parse_hypervisor(vm.required_table("hypervisor"), spec);
    if (spec.snapshot && spec.hypervisor != HypervisorType::Firecracker &&
        spec.disk_type == DiskType::NineP) {
        vm.fail("snapshot",
                "not supported with disk-type 9p (QEMU cannot save a VM with a 9p "
                "share mounted)");
    }
    vm.finish();

    if (image) {
        spec.image = *image;
    } else if (spec.hypervisor == HypervisorType::Firecracker) {
        vm.fail("image", "required");
    } else if (!spec.initrd) {
        vm.fail("image", "required unless an initrd is given");
    }
    check_vm_files(vm, spec);
    return spec;
}

void parse_function(TableReader top, FunctionSpec& spec) {
    spec.concurrent_requests =
        top.integer<unsigned>("concurrent-requests", 1).value_or(spec.concurrent_requests);
    spec.single_use = top.boolean("single-use").value_or(spec.single_use);
    spec.keepalive = top.seconds("keepalive", SecondsMin::Zero).value_or(spec.keepalive);
    spec.port = top.integer<std::uint16_t>("port", 1, 65535).value_or(spec.port);
    spec.max_instances = top.integer<unsigned>("max-instances", 1).value_or(spec.max_instances);
    spec.min_instances = top.integer<unsigned>("min-instances", 0).value_or(spec.min_instances);
    if (spec.min_instances > spec.max_instances) {
        top.fail("min-instances", "must not exceed max-instances (" +
                                      std::to_string(spec.min_instances) + " > " +
                                      std::to_string(spec.max_instances) + ")");
    }
    spec.queue_timeout =
        top.seconds("queue-timeout", SecondsMin::Zero).value_or(spec.queue_timeout);
    spec.boot_timeout =
        top.seconds("boot-timeout", SecondsMin::AboveZero).value_or(spec.boot_timeout);
    spec.request_timeout =
        top.seconds("request-timeout", SecondsMin::AboveZero).value_or(spec.request_timeout);
    spec.stream_idle_timeout = top.seconds("stream-idle-timeout", SecondsMin::AboveZero)
                                   .value_or(spec.stream_idle_timeout);
    spec.stream_max_duration = top.seconds("stream-max-duration", SecondsMin::AboveZero);
    spec.max_body_size = top.integer<std::size_t>("max-body-size", 1);
    if (auto env = top.table("env")) {
        spec.env = parse_env(*env);
    }
    if (auto network = top.table("network")) {
        spec.network.egress = network->boolean("egress").value_or(false);
        spec.network.allow_invoke = network->boolean("allow-invoke").value_or(false);
        network->finish();
    }

    auto vm = top.table("vm");
    auto container = top.table("container");
    top.finish();
    if (vm && container) {
        top.fail_here("both [vm] and [container] given (a function runs in exactly one)");
    }
    if (!vm && !container) {
        top.fail_here("missing [vm] or [container] (a function needs exactly one)");
    }
    if (container) {
        spec.sandbox = parse_container(*container, spec.dir);
    } else {
        spec.sandbox = parse_vm(*vm, spec.dir);
    }
}

fs::path absolute_dir(const fs::path& dir) {
    fs::path out = fs::absolute(dir).lexically_normal();
    if (out.has_parent_path() && out.filename().empty()) {
        out = out.parent_path();  // "/srv/reg/hello/" -> "/srv/reg/hello"
    }
    return out;
}

}  // namespace

std::string FunctionSpec::backend_name() const {
    if (is_container()) {
        return container().engine == ContainerEngine::Oci ? "oci" : "container";
    }
    return hypervisor_name(vm().hypervisor);
}

std::shared_ptr<const FunctionSpec> load_function_spec(const fs::path& dir) {
    auto spec = std::make_shared<FunctionSpec>();
    spec->dir = absolute_dir(dir);
    spec->name = spec->dir.filename().string();
    spec->file = spec->dir / "function.toml";
    toml::table table = config_detail::parse_toml_file(spec->file);
    parse_function(TableReader(table, spec->file.string()), *spec);
    return spec;
}

bool is_valid_function_name(std::string_view name) {
    if (name.empty() || name.size() > kMaxNameLength) {
        return false;
    }
    if (!is_alnum(name.front())) {
        return false;
    }
    return std::all_of(name.begin(), name.end(),
                       [](char c) { return is_alnum(c) || c == '_' || c == '.' || c == '-'; });
}

}  // namespace unifaas
