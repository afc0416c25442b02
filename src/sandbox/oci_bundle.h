// The OCI runtime spec (config.json) of one container instance. Pure: unit-tested byte for byte.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace unifaas {

// What an image says about its process (from its config), all optional.
struct ImageProcess {
    std::vector<std::string> entrypoint;
    std::vector<std::string> cmd;
    std::vector<std::string> env;  // "NAME=value"
    std::string cwd;               // "" = "/"
    std::uint32_t uid = 0;
    std::uint32_t gid = 0;
};

struct OciLaunch {
    std::filesystem::path rootfs;   // shared, mounted read-only
    std::vector<std::string> args;  // entrypoint (+ callback URL as argv[1])
    std::vector<std::string> env;   // "NAME=value", in order
    std::string cwd = "/";
    std::uint32_t uid = 0;
    std::uint32_t gid = 0;
    std::string hostname;
    std::filesystem::path netns;     // joined network namespace
    std::uint64_t memory_bytes = 0;  // memory limit (and swap: none)
    std::uint32_t pids_limit = 256;
    // A cgroup path for the runtime's own cgroup manager; "" when the daemon made a systemd scope
    // and the runtime runs with cgroups disabled inside it.
    std::string cgroups_path;
    // The seccomp filter: precompiled BPF (base64, crun's annotation run.oci.seccomp_bpf_data),
    // or else a runtime-spec seccomp section (runc); neither: none.
    std::string seccomp_bpf_base64;
    nlohmann::json seccomp_profile;
};

// config.json: no_new_privileges, Docker's default capability set minus the ones a function
// server does not need, pid/ipc/uts/mount namespaces plus the given network namespace, a
// read-only root with private tmpfs /tmp and /run, memory and pids limits, the usual masked
// and read-only paths, the seccomp filter given.
nlohmann::json oci_config(const OciLaunch& launch);

}  // namespace unifaas
