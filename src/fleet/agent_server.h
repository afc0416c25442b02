// AgentServer: HAProxy's agent-check protocol on a TCP port of its own (daemon key agent-listen,
// or the socket named "agent" from systemd). Each connection gets one line (see agent_reply())
// and is closed; nothing is read from the peer. One thread; a connection costs one accept, one
// write and one close, so a check never waits for an invocation.
#pragma once

#include <functional>
#include <string>
#include <thread>

namespace unifaas {

class AgentServer {
  public:
    // The line to answer with, computed per connection.
    using Reply = std::function<std::string()>;

    // Serves `listen_fd` (taking ownership) until destroyed.
    AgentServer(int listen_fd, Reply reply);
    ~AgentServer();
    AgentServer(const AgentServer&) = delete;
    AgentServer& operator=(const AgentServer&) = delete;

  private:
    void run();
    void answer(int fd);

    int listen_fd_;
    int stop_fd_;  // eventfd: written by the destructor
    Reply reply_;
    std::thread thread_;
};

}  // namespace unifaas
