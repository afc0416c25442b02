#include "sandbox/oci_bundle.h"

namespace unifaas {

namespace {

using nlohmann::json;

// A function server binds a port above 1024 and runs as given: no raw sockets, no mknod, no
// chroot, no audit writes (those Docker grants by default are dropped here).
const std::vector<std::string> kCapabilities = {
    "CAP_CHOWN",  "CAP_DAC_OVERRIDE", "CAP_FOWNER",  "CAP_FSETID",           "CAP_KILL",
    "CAP_SETGID", "CAP_SETUID",       "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
};

json mount(const std::string& destination, const std::string& type, const std::string& source,
           std::vector<std::string> options) {
    return {{"destination", destination},
            {"type", type},
            {"source", source},
            {"options", std::move(options)}};
}

json mounts() {
    return json::array({
        mount("/proc", "proc", "proc", {"nosuid", "noexec", "nodev"}),
        mount("/dev", "tmpfs", "tmpfs", {"nosuid", "strictatime", "mode=755", "size=65536k"}),
        mount("/dev/pts", "devpts", "devpts",
              {"nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"}),
        mount("/dev/shm", "tmpfs", "shm",
              {"nosuid", "noexec", "nodev", "mode=1777", "size=65536k"}),
        mount("/dev/mqueue", "mqueue", "mqueue", {"nosuid", "noexec", "nodev"}),
        mount("/sys", "sysfs", "sysfs", {"nosuid", "noexec", "nodev", "ro"}),
        mount("/tmp", "tmpfs", "tmpfs", {"nosuid", "nodev", "mode=1777", "size=65536k"}),
        mount("/run", "tmpfs", "tmpfs", {"nosuid", "nodev", "mode=755", "size=16384k"}),
    });
}

json linux_section(const OciLaunch& l) {
    json section = {
        {"resources",
         {{"memory",
           {{"limit", l.memory_bytes}, {"swap", l.memory_bytes}}},  // swap = limit: none extra
          {"pids", {{"limit", l.pids_limit}}}}},
        {"namespaces", json::array({{{"type", "pid"}},
                                    {{"type", "ipc"}},
                                    {{"type", "uts"}},
                                    {{"type", "mount"}},
                                    {{"type", "network"}, {"path", l.netns.string()}}})},
        {"maskedPaths",
         {"/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
          "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
          "/sys/firmware"}},
        {"readonlyPaths",
         {"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"}},
    };
    if (!l.cgroups_path.empty()) {
        section["cgroupsPath"] = l.cgroups_path;
    }
    if (l.seccomp_bpf_base64.empty() && !l.seccomp_profile.is_null()) {
        section["seccomp"] = l.seccomp_profile;
    }
    return section;
}

}  // namespace

nlohmann::json oci_config(const OciLaunch& l) {
    json config = {
        {"ociVersion", "1.0.2"},
        {"process",
         {{"terminal", false},
          {"user", {{"uid", l.uid}, {"gid", l.gid}}},
          {"args", l.args},
          {"env", l.env},
          {"cwd", l.cwd.empty() ? std::string("/") : l.cwd},
          {"capabilities",
           {{"bounding", kCapabilities},
            {"effective", kCapabilities},
            {"permitted", kCapabilities}}},
          {"rlimits", json::array({{{"type", "RLIMIT_NOFILE"}, {"hard", 4096}, {"soft", 4096}}})},
          {"noNewPrivileges", true}}},
        {"root", {{"path", l.rootfs.string()}, {"readonly", true}}},
        {"hostname", l.hostname},
        {"mounts", mounts()},
        {"linux", linux_section(l)},
    };
    if (!l.seccomp_bpf_base64.empty()) {
        config["annotations"] = {{"run.oci.seccomp_bpf_data", l.seccomp_bpf_base64}};
    }
    return config;
}

}  // namespace unifaas
