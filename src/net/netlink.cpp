#include "net/netlink.h"

#include <arpa/inet.h>
#include <linux/ethtool.h>
#include <linux/if_link.h>
#include <linux/rtnetlink.h>
#include <linux/sockios.h>
#include <linux/veth.h>
#include <net/if.h>
#include <sys/ioctl.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <system_error>

#include "util/unique_fd.h"

namespace unifaas::net_detail {

void fail(int error, const std::string& what) {
    throw std::system_error(error, std::generic_category(), what);
}

void fail_errno(const std::string& what) {
    fail(errno, what);
}

NetlinkMessage::NetlinkMessage(std::uint16_t type, std::uint16_t flags) {
    header()->nlmsg_len = NLMSG_LENGTH(0);
    header()->nlmsg_type = type;
    header()->nlmsg_flags = static_cast<std::uint16_t>(NLM_F_REQUEST | NLM_F_ACK | flags);
    header()->nlmsg_seq = 1;
}

void NetlinkMessage::attribute(std::uint16_t type, const void* data, std::size_t size) {
    rtattr attr{};
    attr.rta_type = type;
    attr.rta_len = static_cast<std::uint16_t>(RTA_LENGTH(size));
    append(&attr, sizeof attr);  // 4 bytes: already aligned
    append(data, size);
}

std::size_t NetlinkMessage::begin_nested(std::uint16_t type) {
    std::size_t offset = header()->nlmsg_len;
    attribute(type, nullptr, 0);
    return offset;
}

void NetlinkMessage::end_nested(std::size_t offset) {
    auto* attr = reinterpret_cast<rtattr*>(buffer_ + offset);
    attr->rta_len = static_cast<std::uint16_t>(header()->nlmsg_len - offset);
}

void NetlinkMessage::append(const void* data, std::size_t size) {
    std::uint32_t at = header()->nlmsg_len;
    if (at + NLMSG_ALIGN(size) > sizeof buffer_) {
        throw std::length_error("netlink message too long");
    }
    if (size > 0) {
        std::memcpy(buffer_ + at, data, size);
    }
    header()->nlmsg_len = static_cast<std::uint32_t>(at + NLMSG_ALIGN(size));
}

int netlink_request(nlmsghdr* request, const std::string& what) {
    UniqueFd sock(::socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE));
    if (sock.get() < 0) {
        fail_errno(what + ": netlink socket");
    }
    sockaddr_nl kernel{};
    kernel.nl_family = AF_NETLINK;
    if (::sendto(sock.get(), request, request->nlmsg_len, 0,
                 reinterpret_cast<const sockaddr*>(&kernel), sizeof kernel) < 0) {
        fail_errno(what + ": netlink send");
    }
    alignas(nlmsghdr) char reply[1024];
    for (;;) {
        ssize_t n = ::recv(sock.get(), reply, sizeof reply, 0);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0) {
            fail_errno(what + ": netlink receive");
        }
        auto* header = reinterpret_cast<nlmsghdr*>(reply);
        for (int len = static_cast<int>(n); NLMSG_OK(header, len);
             header = NLMSG_NEXT(header, len)) {
            if (header->nlmsg_seq == request->nlmsg_seq && header->nlmsg_type == NLMSG_ERROR) {
                return -static_cast<nlmsgerr*>(NLMSG_DATA(header))->error;
            }
        }
    }
}

namespace {

unsigned index_of(const std::string& interface, const std::string& what) {
    unsigned index = ::if_nametoindex(interface.c_str());
    if (index == 0) {
        fail_errno(what);
    }
    return index;
}

void send_or_fail(NetlinkMessage& request, const std::string& what) {
    if (int error = netlink_request(request.header(), what); error != 0) {
        fail(error, what);
    }
}

}  // namespace

void add_ipv4_address(const std::string& interface, std::uint32_t address, std::uint32_t netmask,
                      const std::string& what) {
    NetlinkMessage request(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL);
    ifaddrmsg info{};
    info.ifa_family = AF_INET;
    info.ifa_prefixlen = static_cast<unsigned char>(__builtin_popcount(netmask));
    info.ifa_scope = RT_SCOPE_UNIVERSE;
    info.ifa_index = index_of(interface, what);
    request.fixed(info);
    std::uint32_t local = htonl(address);
    std::uint32_t broadcast = htonl(address | ~netmask);
    request.attribute(IFA_LOCAL, &local, sizeof local);
    request.attribute(IFA_ADDRESS, &local, sizeof local);
    request.attribute(IFA_BROADCAST, &broadcast, sizeof broadcast);
    send_or_fail(request, what);
}

void set_interface_up(const std::string& interface, bool up, const std::string& what) {
    NetlinkMessage request(RTM_NEWLINK, 0);
    ifinfomsg info{};
    info.ifi_family = AF_UNSPEC;
    info.ifi_index = static_cast<int>(index_of(interface, what));
    info.ifi_flags = up ? IFF_UP : 0;
    info.ifi_change = IFF_UP;
    request.fixed(info);
    send_or_fail(request, what);
}

void add_default_route(const std::string& interface, std::uint32_t gateway,
                       const std::string& what) {
    NetlinkMessage request(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL);
    rtmsg info{};
    info.rtm_family = AF_INET;
    info.rtm_table = RT_TABLE_MAIN;
    info.rtm_protocol = RTPROT_BOOT;
    info.rtm_scope = RT_SCOPE_UNIVERSE;
    info.rtm_type = RTN_UNICAST;
    request.fixed(info);
    std::uint32_t via = htonl(gateway);
    auto index = index_of(interface, what);
    request.attribute(RTA_GATEWAY, &via, sizeof via);
    request.attribute(RTA_OIF, &index, sizeof index);
    send_or_fail(request, what);
}

void create_veth_pair(const std::string& host_name, const std::string& peer_name, int peer_netns_fd,
                      const std::string& what) {
    NetlinkMessage request(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL);
    ifinfomsg info{};
    info.ifi_family = AF_UNSPEC;
    request.fixed(info);
    request.attribute(IFLA_IFNAME, host_name);
    std::size_t linkinfo = request.begin_nested(IFLA_LINKINFO);
    request.attribute(IFLA_INFO_KIND, "veth", 4);
    std::size_t data = request.begin_nested(IFLA_INFO_DATA);
    std::size_t peer = request.begin_nested(VETH_INFO_PEER);
    ifinfomsg peer_info{};
    peer_info.ifi_family = AF_UNSPEC;
    request.fixed(peer_info);
    request.attribute(IFLA_IFNAME, peer_name);
    std::uint32_t fd = static_cast<std::uint32_t>(peer_netns_fd);
    request.attribute(IFLA_NET_NS_FD, &fd, sizeof fd);
    request.end_nested(peer);
    request.end_nested(data);
    request.end_nested(linkinfo);
    send_or_fail(request, what);
}

std::string interface_driver(const std::string& name) {
    if (name.empty() || name.size() >= IFNAMSIZ) {
        return {};
    }
    UniqueFd sock(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
    if (sock.get() < 0) {
        return {};
    }
    ethtool_drvinfo info{};
    info.cmd = ETHTOOL_GDRVINFO;
    ifreq ifr{};
    std::memcpy(ifr.ifr_name, name.data(), name.size());
    ifr.ifr_data = reinterpret_cast<char*>(&info);
    if (::ioctl(sock.get(), SIOCETHTOOL, &ifr) < 0) {
        return {};
    }
    return std::string(info.driver, strnlen(info.driver, sizeof info.driver));
}

}  // namespace unifaas::net_detail
