// DockerBackend: runs container functions through the Docker Engine API on a unix socket.
//
// Each instance is one container "unifaas-<function>-<instance id>" on the default bridge,
// labelled unifaas.function / unifaas.instance. Its image's ENTRYPOINT receives the readiness
// callback URL as argv[1] (as with the original UniFaaS) and in UNIFAAS_CALLBACK; the callback
// host is the bridge's gateway. Images are never pulled. One background thread per backend
// follows the engine's "die" events to report containers that end by themselves.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include "sandbox/sandbox.h"

namespace unifaas {

namespace docker {
class DockerClient;
class ExitWatcher;
}  // namespace docker

inline constexpr const char* kDefaultDockerSocket = "/var/run/docker.sock";

// The socket to use: DOCKER_HOST=unix://PATH (docker_host, may be null) replaces the configured
// socket only when that is the default; other DOCKER_HOST forms are ignored.
std::string choose_docker_socket(const std::string& configured, const char* docker_host);

// HostConfig.CgroupParent putting containers into a systemd slice, in the form the engine's
// cgroup driver (GET /info CgroupDriver) expects: the slice name for "systemd" (the container
// becomes docker-<id>.scope in it), the absolute cgroup path "/<slice>" for "cgroupfs"; "" for
// any other driver.
std::string docker_cgroup_parent(const std::string& cgroup_driver, const std::string& slice);
// The unit ("docker-<id>.scope", systemd driver) or cgroup ("<parent>/<id>", cgroupfs) a
// container with that parent runs in.
std::string docker_container_unit(const std::string& cgroup_driver,
                                  const std::string& cgroup_parent, const std::string& id);

// Where containers run and log; decided once from the engine's /info.
struct DockerPlacement {
    std::string cgroup_driver;  // "systemd", "cgroupfs", ... ("" unknown)
    std::string cgroup_parent;  // HostConfig.CgroupParent ("" the engine's default)
    bool journald = false;      // LogConfig: the journald log driver
};

class DockerBackend : public Backend {
  public:
    // socket_path goes through choose_docker_socket(socket_path, getenv("DOCKER_HOST")).
    // callback_port: where the daemon receives readiness callbacks (on every host address).
    DockerBackend(std::string socket_path, std::uint16_t callback_port);
    ~DockerBackend() override;
    DockerBackend(const DockerBackend&) = delete;
    DockerBackend& operator=(const DockerBackend&) = delete;

    // Creates and starts the container; returns once it runs. Throws SandboxError:
    // 503 engine unreachable, 500 image or runtime unknown, 502 anything else (including a
    // container that exited before start() returned).
    std::unique_ptr<Instance> start(const InstanceContext& ctx) override;
    // Removes every container labelled unifaas.instance that this backend does not run.
    unsigned remove_leftovers() override;

    const std::string& socket_path() const { return socket_path_; }

    // systemd integration; set before the first start. Containers go into `slice` (e.g.
    // "unifaas.slice"); Instance::unit() then names their scope or cgroup.
    void set_cgroup_parent(std::string slice);
    // Containers log to the journal when the engine has the journald log driver: their lines
    // carry UNIFAAS_FUNCTION and UNIFAAS_INSTANCE (from the labels), SYSLOG_IDENTIFIER
    // unifaas-<function>. `docker logs` (and so error messages) keep working.
    void set_journald_logs(bool on);

  private:
    DockerPlacement placement();
    void ensure_watching();
    std::string callback_host();
    void note_gateway(const std::string& gateway);

    std::string socket_path_;
    std::uint16_t callback_port_;
    std::shared_ptr<docker::DockerClient> client_;
    std::shared_ptr<docker::ExitWatcher> watcher_;
    std::mutex gateway_mutex_;
    std::string gateway_;  // the bridge gateway, looked up once
    std::mutex placement_mutex_;
    std::string slice_;
    bool journald_logs_ = false;
    std::optional<DockerPlacement> placement_;  // asked once the engine answers
};

}  // namespace unifaas
