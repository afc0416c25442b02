// ContainerEvents: records the engine's container events from the moment it is constructed, so a
// test can await "this container was destroyed" instead of sleeping or polling.
#pragma once

#include <chrono>
#include <condition_variable>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "sandbox/docker_client.h"

namespace unifaas::test {

class ContainerEvents {
  public:
    explicit ContainerEvents(const std::string& socket_path);
    ~ContainerEvents();

    // Waits until `count` events named `action` (create, start, die, destroy, …) have been seen
    // for containers labelled unifaas.instance. False on timeout.
    bool wait_for(const std::string& action, std::size_t count,
                  std::chrono::milliseconds timeout = std::chrono::seconds(30));
    std::size_t count(const std::string& action);

  private:
    docker::EventStream stream_;
    std::mutex mu_;
    std::condition_variable cv_;
    bool connected_ = false;
    std::vector<std::string> actions_;
    std::thread thread_;
};

}  // namespace unifaas::test
