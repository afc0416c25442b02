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

  private:
    void ensure_watching();
    std::string callback_host();
    void note_gateway(const std::string& gateway);

    std::string socket_path_;
    std::uint16_t callback_port_;
    std::shared_ptr<docker::DockerClient> client_;
    std::shared_ptr<docker::ExitWatcher> watcher_;
    std::mutex gateway_mutex_;
    std::string gateway_;  // the bridge gateway, looked up once
};

}  // namespace unifaas
