// rtnetlink requests the net/ devices share: one request, one ACK, errors as errno values. Every
// call opens its own socket, so it acts on the network namespace of the calling thread.
#pragma once

#include <linux/netlink.h>

#include <cstddef>
#include <cstdint>
#include <string>

namespace unifaas::net_detail {

// One rtnetlink request: header, fixed part (ifinfomsg, ifaddrmsg, rtmsg) and attributes, which
// may nest (begin_nested ... end_nested).
class NetlinkMessage {
  public:
    NetlinkMessage(std::uint16_t type, std::uint16_t flags);
    template <class T>
    void fixed(const T& part) {
        append(&part, sizeof part);
    }
    void attribute(std::uint16_t type, const void* data, std::size_t size);
    void attribute(std::uint16_t type, const std::string& text) {
        attribute(type, text.c_str(), text.size() + 1);
    }
    // Opens a nested attribute; returns its offset for end_nested().
    std::size_t begin_nested(std::uint16_t type);
    void end_nested(std::size_t offset);
    nlmsghdr* header() { return reinterpret_cast<nlmsghdr*>(buffer_); }

  private:
    void append(const void* data, std::size_t size);

    alignas(nlmsghdr) char buffer_[512]{};
};

// Sends one rtnetlink request that expects an ACK; returns 0 or the kernel's errno. Throws
// std::system_error "<what>: netlink ..." when the socket itself fails.
int netlink_request(nlmsghdr* request, const std::string& what);

[[noreturn]] void fail(int error, const std::string& what);
[[noreturn]] void fail_errno(const std::string& what);

// Address, prefix and broadcast in one step (RTM_NEWADDR). Throws std::system_error.
void add_ipv4_address(const std::string& interface, std::uint32_t address, std::uint32_t netmask,
                      const std::string& what);
// Sets IFF_UP (SIOCSIFFLAGS). Throws std::system_error.
void set_interface_up(const std::string& interface, bool up, const std::string& what);
// A default route via `gateway` on `interface` (RTM_NEWROUTE). Throws std::system_error.
void add_default_route(const std::string& interface, std::uint32_t gateway,
                       const std::string& what);
// A veth pair: `host_name` here, `peer_name` created directly in the namespace `peer_netns_fd`
// (RTM_NEWLINK with IFLA_NET_NS_FD in the peer's info). EEXIST when `host_name` is taken.
void create_veth_pair(const std::string& host_name, const std::string& peer_name, int peer_netns_fd,
                      const std::string& what);
// The ethtool driver name of an interface ("tun", "veth"); "" when it does not exist.
std::string interface_driver(const std::string& name);

}  // namespace unifaas::net_detail
