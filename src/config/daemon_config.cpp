// unifaas.toml: daemon-wide settings. Each key is one line in load_daemon_config().
#include "config/daemon_config.h"

#include <arpa/inet.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <optional>
#include <stdexcept>

#include "config/toml_util.h"

namespace unifaas {

using config_detail::in_quotes;
using config_detail::SecondsMin;
using config_detail::TableReader;
namespace fs = std::filesystem;

namespace {

constexpr std::array kLogLevels = {"error", "warn", "info", "debug", "trace"};

bool is_digit(char c) {
    return c >= '0' && c <= '9';
}
bool is_hostname_char(char c) {
    return is_digit(c) || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '-' || c == '.';
}

bool is_ipv6(const std::string& text) {
    std::string address = text.substr(0, text.find('%'));  // fe80::1%eth0: zone after '%'
    if (address.size() != text.size() && address.size() + 1 == text.size()) {
        return false;  // empty zone
    }
    in6_addr out{};
    return inet_pton(AF_INET6, address.c_str(), &out) == 1;
}

bool is_ipv4(const std::string& text) {
    in_addr out{};
    return inet_pton(AF_INET, text.c_str(), &out) == 1;
}

std::string parse_host(const std::string& host, const std::string& what) {
    auto fail = [&](const std::string& problem) { throw ConfigError(what + ": " + problem); };
    if (host.empty()) {
        return "0.0.0.0";
    }
    if (host.front() == '[') {
        std::string inner = host.substr(1, host.size() - 1 - (host.back() == ']' ? 1 : 0));
        if (host.back() != ']' || !is_ipv6(inner)) {
            fail("invalid IPv6 address " + in_quotes(host));
        }
        return inner;
    }
    if (host.find(':') != std::string::npos) {
        fail("IPv6 addresses need brackets, e.g. [::1]:8123 (got " + in_quotes(host) + ")");
    }
    bool numeric =
        std::all_of(host.begin(), host.end(), [](char c) { return is_digit(c) || c == '.'; });
    bool valid = numeric ? is_ipv4(host)
                         : std::all_of(host.begin(), host.end(), is_hostname_char) &&
                               host.front() != '-' && host.front() != '.';
    if (!valid) {
        fail("invalid address " + in_quotes(host));
    }
    return host;
}

std::uint16_t parse_port(const std::string& port, const std::string& what) {
    bool digits =
        !port.empty() && port.size() <= 5 && std::all_of(port.begin(), port.end(), is_digit);
    unsigned long value = digits ? std::stoul(port) : 0;
    if (!digits || value < 1 || value > 65535) {
        throw ConfigError(what + ": port must be between 1 and 65535 (got " + in_quotes(port) +
                          ")");
    }
    return static_cast<std::uint16_t>(value);
}

template <class T, class U>
void set(T& field, std::optional<U> value) {
    if (value) {
        field = T(std::move(*value));
    }
}

std::optional<ListenAddress> listen_address(TableReader& reader, std::string_view key) {
    auto text = reader.string(key);
    if (!text) {
        return std::nullopt;
    }
    return parse_listen_address(*text, reader.file() + ": " + reader.key_path(key));
}

std::optional<std::string> log_level(TableReader& reader, std::string_view key) {
    auto level = reader.string(key);
    if (level && std::find(kLogLevels.begin(), kLogLevels.end(), *level) == kLogLevels.end()) {
        reader.fail(key, "unknown log level " + in_quotes(*level) +
                             " (expected error, warn, info, debug, trace)");
    }
    return level;
}

std::optional<std::string> accel(TableReader& reader, std::string_view key) {
    auto value = reader.string(key);
    if (value && *value != "auto" && *value != "kvm" && *value != "tcg") {
        reader.fail(key, "unknown accelerator " + in_quotes(*value) + " (expected auto, kvm, tcg)");
    }
    return value;
}

std::optional<std::string> http_scheduling(TableReader& reader, std::string_view key) {
    auto value = reader.string(key);
    if (value && *value != "batch" && *value != "inherit") {
        reader.fail(key, "unknown scheduling " + in_quotes(*value) + " (expected batch, inherit)");
    }
    return value;
}

std::optional<Ipv4Net> subnet(TableReader& reader, std::string_view key) {
    auto text = reader.string(key);
    if (!text) {
        return std::nullopt;
    }
    Ipv4Net net;
    try {
        net = Ipv4Net::parse(*text);
    } catch (const std::invalid_argument& e) {
        reader.fail(key, e.what());
    }
    if (auto problem = subnet_problem(net)) {
        reader.fail(key, *problem);
    }
    return net;
}

// Checked against the subnet: the largest tap number must fit in an interface name.
std::optional<std::string> tap_prefix(TableReader& reader, std::string_view key,
                                      const Ipv4Net& subnet) {
    auto prefix = reader.string(key);
    if (prefix) {
        if (auto problem = tap_prefix_problem(*prefix, subnet)) {
            reader.fail(key, *problem);
        }
    }
    return prefix;
}

// A name for the fleet's metrics: what a host name may hold.
std::optional<std::string> node_name(TableReader& reader, std::string_view key) {
    auto name = reader.string(key);
    if (name && (name->empty() || name->size() > 253 ||
                 !std::all_of(name->begin(), name->end(),
                              [](char c) { return is_hostname_char(c) || c == '_'; }))) {
        reader.fail(key, "node name " + in_quotes(*name) +
                             " must be 1 to 253 letters, digits, '-', '_' or '.'");
    }
    return name;
}

// An interface name as the kernel takes it: 1..15 characters, no '/', ':', quotes or blanks.
std::optional<std::string> egress_interface(TableReader& reader, std::string_view key) {
    auto name = reader.string(key);
    if (name && !name->empty()) {
        bool bad_char = std::any_of(name->begin(), name->end(), [](unsigned char c) {
            return c <= ' ' || c >= 0x7f || c == '/' || c == ':' || c == '"' || c == '\\';
        });
        if (name->size() > kMaxInterfaceName || bad_char || *name == "." || *name == "..") {
            reader.fail(key, "not an interface name " + in_quotes(*name));
        }
    }
    return name;
}

}  // namespace

std::string host_name() {
    char name[256] = {};
    if (gethostname(name, sizeof(name) - 1) != 0 || name[0] == '\0') {
        return "localhost";
    }
    return name;
}

ListenAddress parse_listen_address(const std::string& text, const std::string& what) {
    auto colon = text.rfind(':');
    bool bracket_only = colon != std::string::npos && !text.empty() && text.front() == '[' &&
                        text.find(']') > colon;  // "[::1]" without a port
    if (colon == std::string::npos || bracket_only) {
        throw ConfigError(what + ": expected ADDR:PORT (e.g. 127.0.0.1:8123, [::1]:8123 or " +
                          ":8123), got " + in_quotes(text));
    }
    ListenAddress address;
    address.host = parse_host(text.substr(0, colon), what);
    address.port = parse_port(text.substr(colon + 1), what);
    return address;
}

DaemonConfig load_daemon_config(const fs::path& file) {
    fs::path path = fs::absolute(file).lexically_normal();
    toml::table table = config_detail::parse_toml_file(path);
    TableReader reader(table, path.string());
    const fs::path base = path.parent_path();

    DaemonConfig config;
    set(config.registry, reader.path("registry", base));
    set(config.listen, listen_address(reader, "listen"));
    set(config.callback_listen, listen_address(reader, "callback-listen"));
    set(config.log_level, log_level(reader, "log-level"));
    set(config.max_body_bytes, reader.integer<std::size_t>("max-body-size", 1));
    set(config.http_threads, reader.integer<unsigned>("http-threads", 0, 256));
    set(config.http_scheduling, http_scheduling(reader, "http-scheduling"));
    set(config.max_connections, reader.integer<std::size_t>("max-connections", 1, 1'000'000));
    set(config.shutdown_grace, reader.seconds("shutdown-grace", SecondsMin::Zero));
    set(config.runtime_dir, reader.path("runtime-dir", base));
    set(config.docker_socket, reader.path("docker-socket", base));
    set(config.network.subnet, subnet(reader, "subnet"));
    set(config.network.tap_prefix, tap_prefix(reader, "tap-prefix", config.network.subnet));
    set(config.network.prealloc, reader.integer<unsigned>("tap-prealloc", 0, kMaxTapPrealloc));
    set(config.egress_interface, egress_interface(reader, "egress-interface"));
    set(config.qemu_binary, reader.string("qemu-binary"));
    set(config.accel, accel(reader, "accel"));
    set(config.firecracker_binary, reader.string("firecracker-binary"));
    set(config.node_name, node_name(reader, "node-name"));
    set(config.drain_delay, reader.seconds("drain-delay", SecondsMin::Zero));
    if (auto agent = listen_address(reader, "agent-listen")) {
        config.agent_listen = *agent;
    }
    set(config.snapshot_dir, reader.path("snapshot-dir", base));
    set(config.snapshot_max_mib, reader.integer<std::uint64_t>("snapshot-max-size", 0, 1u << 30));
    set(config.oci_spare_memory_mib,
        reader.integer<std::uint64_t>("oci-spare-memory", 0, 1u << 30));
    set(config.stream_watermark,
        reader.integer<std::size_t>("stream-watermark", 4096, 64 * 1024 * 1024));
    reader.finish();
    return config;
}

}  // namespace unifaas
