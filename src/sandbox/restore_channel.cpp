#include "sandbox/restore_channel.h"

#include <arpa/inet.h>
#include <net/if.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <ctime>
#include <system_error>

#include <fmt/format.h>

#include "util/random.h"
#include "util/unique_fd.h"

namespace unifaas {

namespace {

constexpr auto kResendInterval = std::chrono::milliseconds(50);
constexpr std::size_t kEntropyBytes = 32;

// Bound to the tap and to kRestorePort, so the guest's acknowledgement comes to a port the guest
// firewall lets in (sockets bound to different taps share the port).
UniqueFd broadcast_socket(const std::string& tap) {
    UniqueFd fd(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
    int on = 1;
    sockaddr_in local{};
    local.sin_family = AF_INET;
    local.sin_port = htons(kRestorePort);
    local.sin_addr.s_addr = htonl(INADDR_ANY);
    if (!fd || ::setsockopt(fd.get(), SOL_SOCKET, SO_BROADCAST, &on, sizeof(on)) != 0 ||
        ::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on)) != 0 ||
        ::setsockopt(fd.get(), SOL_SOCKET, SO_BINDTODEVICE, tap.c_str(),
                     static_cast<socklen_t>(tap.size())) != 0 ||
        ::bind(fd.get(), reinterpret_cast<const sockaddr*>(&local), sizeof(local)) != 0) {
        throw std::system_error(errno, std::generic_category(), "restore channel on tap " + tap);
    }
    return fd;
}

}  // namespace

std::string format_restore_message(const RestoreMessage& m) {
    timespec now{};
    ::clock_gettime(CLOCK_REALTIME, &now);
    return fmt::format(
        "unifaas-restore={}\nip={}\ngw={}\nmask={}\ncallback={}\nnonce={}\ntime={}.{:09}\n"
        "entropy={}\n",
        kRestoreProtocolVersion, m.ip, m.gateway, m.netmask, m.callback, m.nonce,
        static_cast<long long>(now.tv_sec), now.tv_nsec, random_hex(kEntropyBytes));
}

bool is_restore_ack(const std::string& datagram, const std::string& nonce) {
    return datagram ==
           fmt::format("unifaas-restored={}\nnonce={}\n", kRestoreProtocolVersion, nonce);
}

bool send_restore(const std::string& tap, const RestoreMessage& message,
                  std::chrono::steady_clock::time_point deadline) {
    UniqueFd fd = broadcast_socket(tap);
    sockaddr_in to{};
    to.sin_family = AF_INET;
    to.sin_port = htons(kRestorePort);
    to.sin_addr.s_addr = htonl(INADDR_BROADCAST);
    using Clock = std::chrono::steady_clock;
    for (;;) {
        std::string datagram = format_restore_message(message);
        // A failed send (the tap's queue not open yet) is retried with the next one.
        (void)::sendto(fd.get(), datagram.data(), datagram.size(), 0,
                       reinterpret_cast<const sockaddr*>(&to), sizeof(to));
        auto next = std::min(Clock::now() + kResendInterval, deadline);
        for (;;) {
            auto left = std::chrono::duration_cast<std::chrono::milliseconds>(next - Clock::now());
            if (left.count() <= 0) {
                break;
            }
            pollfd p{fd.get(), POLLIN, 0};
            if (::poll(&p, 1, static_cast<int>(left.count())) <= 0) {
                continue;
            }
            char buf[512];
            ssize_t n = ::recv(fd.get(), buf, sizeof(buf), 0);
            if (n > 0 &&
                is_restore_ack(std::string(buf, static_cast<std::size_t>(n)), message.nonce)) {
                return true;
            }
        }
        if (Clock::now() >= deadline) {
            return false;
        }
    }
}

}  // namespace unifaas
