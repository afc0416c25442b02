// ListeningServer: an httplib::Server that serves a socket it was given (systemd socket
// activation, or one bound by the daemon) and can stop accepting without shutting the socket
// down: systemd keeps an activated socket listening for the next start. The socket may even
// belong to another network namespace than the daemon (activated in the host, daemon moved).
#pragma once

#include <httplib.h>
#include <pthread.h>

#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <string>
#include <thread>

namespace unifaas {

class ListeningServer : public httplib::Server {
  public:
    explicit ListeningServer(unsigned threads);
    ~ListeningServer() override;

    // Takes ownership of a listening socket and serves it on a new thread.
    void serve(int listen_fd);
    // Stops accepting; connections in progress go on. Idempotent.
    void stop_accepting();
    // Waits until every connection has finished (after stop_accepting()).
    void join();

  private:
    class Workers;
    void accept_loop_ended();

    int fd_ = -1;
    std::thread thread_;
    std::mutex mu_;
    std::condition_variable cv_;
    bool loop_ended_ = false;
};

// Binds and listens on host:port (SO_REUSEADDR, CLOEXEC); throws std::system_error naming it.
int bind_listener(const std::string& host, int port);
// The local port a listening socket is bound to.
std::uint16_t local_port(int listen_fd);
// "ADDR:PORT" ("[v6]:PORT") of a listening socket.
std::string local_address(int listen_fd);

}  // namespace unifaas
