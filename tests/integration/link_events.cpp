#include "link_events.h"

#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <net/if.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>
#include <stdexcept>

namespace unifaas::test {

LinkEvents::LinkEvents() : fd_(socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE)) {
    if (fd_ < 0) {
        throw std::runtime_error("netlink socket");
    }
    sockaddr_nl addr{};
    addr.nl_family = AF_NETLINK;
    addr.nl_groups = RTMGRP_LINK;
    if (bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
        close(fd_);
        throw std::runtime_error("netlink bind");
    }
}

LinkEvents::~LinkEvents() {
    close(fd_);
}

bool LinkEvents::wait_gone(const std::string& name, std::chrono::milliseconds timeout) {
    return wait_for(name, false, timeout);
}

bool LinkEvents::wait_exists(const std::string& name, std::chrono::milliseconds timeout) {
    return wait_for(name, true, timeout);
}

bool LinkEvents::wait_up(const std::string& name, std::chrono::milliseconds timeout) {
    return wait_until(
        [&] {
            int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
            ifreq ifr{};
            std::strncpy(ifr.ifr_name, name.c_str(), IFNAMSIZ - 1);
            bool up = s >= 0 && ioctl(s, SIOCGIFFLAGS, &ifr) == 0 && (ifr.ifr_flags & IFF_UP);
            if (s >= 0) {
                close(s);
            }
            return up;
        },
        timeout);
}

bool LinkEvents::wait_for(const std::string& name, bool present,
                          std::chrono::milliseconds timeout) {
    return wait_until([&] { return (if_nametoindex(name.c_str()) != 0) == present; }, timeout);
}

bool LinkEvents::wait_until(const std::function<bool()>& done, std::chrono::milliseconds timeout) {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    for (;;) {
        if (done()) {
            return true;
        }
        auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
            deadline - std::chrono::steady_clock::now());
        pollfd p{fd_, POLLIN, 0};
        if (left.count() <= 0 || poll(&p, 1, static_cast<int>(left.count())) <= 0) {
            return done();
        }
        char buf[16384];
        ssize_t n = recv(fd_, buf, sizeof(buf), 0);
        for (auto* h = reinterpret_cast<nlmsghdr*>(buf); n > 0 && NLMSG_OK(h, n);
             h = NLMSG_NEXT(h, n)) {
            // Any link notification: re-check the name (a rename or a new link).
            if (h->nlmsg_type == RTM_DELLINK || h->nlmsg_type == RTM_NEWLINK) {
                break;
            }
        }
    }
}

std::vector<std::string> interfaces_with_prefix(const std::string& prefix) {
    std::vector<std::string> out;
    struct if_nameindex* all = if_nameindex();
    for (auto* i = all; i && i->if_index != 0; ++i) {
        if (std::strncmp(i->if_name, prefix.c_str(), prefix.size()) == 0) {
            out.emplace_back(i->if_name);
        }
    }
    if_freenameindex(all);
    return out;
}

}  // namespace unifaas::test
