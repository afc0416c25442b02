// PrivateDockerEngine: a dockerd of the test's own, inside a network namespace the test creates,
// with its own data root, exec root, pid file and API socket. Nothing touches the host's network
// or a system-wide engine. Needs root.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <filesystem>
#include <string>
#include <vector>

#include "sandbox/docker_client.h"

namespace unifaas::test {

class PrivateDockerEngine {
  public:
    struct Options {
        std::string image_name = "unifaas-hello";
        std::filesystem::path image_tarball;  // default: <build>/examples/hello-rootfs.tar
        std::chrono::seconds ready_timeout{60};
    };

    // Creates the namespace, starts dockerd, waits for /_ping, imports the image. Throws
    // std::runtime_error (with the end of dockerd's log) when any step fails; what was set up
    // until then is torn down again.
    PrivateDockerEngine();
    explicit PrivateDockerEngine(Options options);
    // Removes all containers, stops dockerd and waits for it, deletes the files and namespace.
    ~PrivateDockerEngine();
    PrivateDockerEngine(const PrivateDockerEngine&) = delete;
    PrivateDockerEngine& operator=(const PrivateDockerEngine&) = delete;

    const std::string& netns_name() const { return netns_; }
    std::string netns_path() const { return "/run/netns/" + netns_; }
    std::string socket_path() const { return (dir_ / "docker.sock").string(); }
    const std::string& image_name() const { return options_.image_name; }
    docker::DockerClient client() const { return docker::DockerClient(socket_path()); }

    // Moves the calling thread into the engine's namespace (threads created later inherit it),
    // so container IPs and the bridge gateway are reachable. Undone by the destructor.
    void enter_netns();
    // Containers (any state) labelled unifaas.instance, as "name (id)" strings.
    std::vector<std::string> unifaas_containers() const;
    // The bridge network's gateway address inside the namespace (the daemon's callback host).
    std::string bridge_gateway() const;
    // Whether containers can use runtime "crun"; on hybrid cgroup hosts this mounts the v1
    // hugetlb controller first (see ENVIRONMENT.md), once.
    bool enable_crun();
    // Stops dockerd (which stops the running containers) and starts it again on the same data,
    // for tests of what survives an engine restart.
    void restart_dockerd();
    // The two halves of restart_dockerd(), for tests of what clients see while it is down.
    void stop_engine() { stop_dockerd(); }
    void start_engine() {
        start_dockerd();
        wait_until_ready();
    }
    // The last lines of dockerd's own log, for failure messages.
    std::string dockerd_log_tail(std::size_t lines = 30) const;

  private:
    void create_netns();
    void start_dockerd();
    void wait_until_ready();
    void import_image();
    void teardown() noexcept;
    void remove_all_containers() noexcept;
    void stop_dockerd() noexcept;

    Options options_;
    std::string netns_;
    std::filesystem::path dir_;
    bool netns_created_ = false;
    pid_t dockerd_pid_ = -1;
    int original_netns_fd_ = -1;
};

// The engine of the integration_tests binary (set up once in main.cpp, whose process lives in
// the engine's network namespace).
PrivateDockerEngine& engine();

}  // namespace unifaas::test
