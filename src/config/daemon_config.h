// DaemonConfig: daemon-wide settings from unifaas.toml, overridden by command-line flags.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>

#include "config/function_spec.h"
#include "net/network_config.h"

namespace unifaas {

struct ListenAddress {
    std::string host = "0.0.0.0";
    std::uint16_t port = 8123;
    std::string to_string() const {
        bool v6 = host.find(':') != std::string::npos;
        return (v6 ? "[" + host + "]" : host) + ":" + std::to_string(port);
    }
};

// This machine's host name (the default node-name); "localhost" when it has none.
std::string host_name();

// Parses "ADDR:PORT" (also "[v6]:PORT" and ":PORT" meaning 0.0.0.0); throws ConfigError.
ListenAddress parse_listen_address(const std::string& text, const std::string& what);

struct DaemonConfig {
    std::filesystem::path registry;                  // required (flag or file)
    ListenAddress listen{"0.0.0.0", 8123};           // invocations
    ListenAddress callback_listen{"0.0.0.0", 8124};  // readiness callbacks from instances
    std::string log_level = "info";                  // error|warn|info|debug|trace
    std::size_t max_body_bytes = 6 * 1024 * 1024;    // request body limit (413 above)
    unsigned http_threads = 0;                       // invocation event loops; 0: one per CPU
    // "batch": the invocation loops run SCHED_BATCH (prefer_batch_scheduling); "inherit": they
    // keep the daemon's policy.
    std::string http_scheduling = "batch";
    std::size_t max_connections = 4096;  // open invocation connections (more are closed)
    Seconds shutdown_grace{10};          // in-flight requests get this long on stop
    std::filesystem::path runtime_dir = "/run/unifaas";  // per-instance working files
    std::string docker_socket = "/var/run/docker.sock";  // DOCKER_HOST=unix://... overrides default
    // Guest network (keys subnet, tap-prefix, tap-prealloc): one tap and /30 per microVM.
    NetworkConfig network;
    // Interface functions with `[network] egress = true` are NATed through ("": no egress).
    std::string egress_interface;
    // microVM hypervisors.
    std::string qemu_binary = "qemu-system-x86_64";  // a path, or a name looked up in PATH
    std::string accel = "auto";      // auto (KVM if it runs guests, else TCG)|kvm|tcg
    std::string firecracker_binary;  // "" = $FIRECRACKER_EXE, then PATH
    // Behind a load balancer (docs/FLEET.md).
    std::string node_name = host_name();        // in /metrics and /status
    Seconds drain_delay{5};                     // SIGTERM: /healthz 503 this long, still serving
    std::optional<ListenAddress> agent_listen;  // HAProxy agent-check port; off when unset
    // Snapshot templates of functions with [vm] snapshot = true.
    std::filesystem::path snapshot_dir = "/var/lib/unifaas/snapshots";
    std::uint64_t snapshot_max_mib = 8192;  // all templates together
    // engine = "oci": containers created ahead (spares), counted by their functions' memory.
    std::uint64_t oci_spare_memory_mib = 512;  // 0: no spares
    // Streamed response bytes a client connection may have pending before the instance waits.
    std::size_t stream_watermark = 256 * 1024;
};

// Reads a unifaas.toml. Unknown keys and wrong types are ConfigErrors naming file and key.
DaemonConfig load_daemon_config(const std::filesystem::path& file);

}  // namespace unifaas
