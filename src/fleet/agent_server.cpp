#include "fleet/agent_server.h"

#include <poll.h>
#include <spdlog/spdlog.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <system_error>

namespace unifaas {

AgentServer::AgentServer(int listen_fd, Reply reply)
    : listen_fd_(listen_fd), stop_fd_(eventfd(0, EFD_CLOEXEC)), reply_(std::move(reply)) {
    if (stop_fd_ < 0) {
        int err = errno;
        ::close(listen_fd_);
        throw std::system_error(err, std::generic_category(), "agent-check: eventfd");
    }
    thread_ = std::thread([this] { run(); });
}

AgentServer::~AgentServer() {
    std::uint64_t one = 1;
    [[maybe_unused]] auto n = ::write(stop_fd_, &one, sizeof(one));
    thread_.join();
    ::close(stop_fd_);
    ::close(listen_fd_);
}

void AgentServer::run() {
    for (;;) {
        pollfd fds[2] = {{listen_fd_, POLLIN, 0}, {stop_fd_, POLLIN, 0}};
        if (::poll(fds, 2, -1) < 0) {
            if (errno == EINTR) {
                continue;
            }
            spdlog::error("agent-check: poll: {}", std::strerror(errno));
            return;
        }
        if (fds[1].revents != 0) {
            return;
        }
        int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
        if (fd < 0) {
            // EAGAIN: the peer left before the accept; EMFILE and the like pass, and are logged.
            if (errno != EAGAIN && errno != EWOULDBLOCK && errno != ECONNABORTED &&
                errno != EINTR) {
                spdlog::warn("agent-check: accept: {}", std::strerror(errno));
            }
            continue;
        }
        answer(fd);
    }
}

// The line fits any socket buffer: one non-blocking send. The write side is shut before the
// close, and whatever the peer sent (HAProxy's agent-send) is read away, so the close is a FIN and
// not a reset that could overtake the line.
void AgentServer::answer(int fd) {
    std::string line;
    try {
        line = reply_();
    } catch (const std::exception& e) {
        spdlog::warn("agent-check: {}", e.what());
        line = "down #internal error\n";
    }
    if (::send(fd, line.data(), line.size(), MSG_NOSIGNAL | MSG_DONTWAIT) < 0) {
        spdlog::debug("agent-check: send: {}", std::strerror(errno));
    }
    ::shutdown(fd, SHUT_WR);
    char sink[256];
    while (::recv(fd, sink, sizeof(sink), MSG_DONTWAIT) > 0) {
    }
    ::close(fd);
}

}  // namespace unifaas
