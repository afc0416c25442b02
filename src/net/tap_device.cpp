#include "net/tap_device.h"

#include "net/netlink.h"
#include "util/unique_fd.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <ifaddrs.h>
#include <linux/if_tun.h>
#include <linux/neighbour.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <linux/sockios.h>
#include <net/if.h>
#include <netinet/in.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <memory>
#include <optional>
#include <stdexcept>
#include <system_error>
#include <utility>

#include <spdlog/spdlog.h>

namespace unifaas {

using net_detail::add_ipv4_address;
using net_detail::fail;
using net_detail::fail_errno;
using net_detail::netlink_request;
using net_detail::NetlinkMessage;

namespace {

void check_name(const std::string& name, const std::string& what) {
    if (name.empty() || name.size() >= IFNAMSIZ) {
        fail(EINVAL,
             what + ": interface names have 1 to " + std::to_string(IFNAMSIZ - 1) + " characters");
    }
}

ifreq request_for(const std::string& name) {
    ifreq ifr{};
    std::memcpy(ifr.ifr_name, name.data(), std::min(name.size(), sizeof ifr.ifr_name - 1));
    return ifr;
}

// An AF_INET datagram socket: the handle for interface ioctls in this thread's namespace.
UniqueFd inet_socket(const std::string& what) {
    UniqueFd fd(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
    if (fd.get() < 0) {
        fail_errno(what + ": socket");
    }
    return fd;
}

short get_flags(int sock, const std::string& name, const std::string& what) {
    ifreq ifr = request_for(name);
    if (::ioctl(sock, SIOCGIFFLAGS, &ifr) < 0) {
        fail_errno(what);
    }
    return ifr.ifr_flags;
}

void set_up(int sock, const std::string& name, bool up, const std::string& what) {
    ifreq ifr = request_for(name);
    ifr.ifr_flags = get_flags(sock, name, what);
    ifr.ifr_flags = static_cast<short>(up ? (ifr.ifr_flags | IFF_UP) : (ifr.ifr_flags & ~IFF_UP));
    if (::ioctl(sock, SIOCSIFFLAGS, &ifr) < 0) {
        fail_errno(what);
    }
}

// Creates the persistent tap. EEXIST when the name is taken (IFF_TUN_EXCL).
void create_persistent_tap(const std::string& name, const std::string& what) {
    UniqueFd tun(::open("/dev/net/tun", O_RDWR | O_CLOEXEC));
    if (tun.get() < 0) {
        fail_errno(what + "open /dev/net/tun");
    }
    ifreq ifr = request_for(name);
    ifr.ifr_flags = IFF_TAP | IFF_NO_PI | IFF_TUN_EXCL;
    if (::ioctl(tun.get(), TUNSETIFF, &ifr) < 0) {
        int error = errno == EBUSY ? EEXIST : errno;  // EBUSY is IFF_TUN_EXCL's "exists"
        fail(error, what + "create (TUNSETIFF)");
    }
    if (::ioctl(tun.get(), TUNSETPERSIST, 1) < 0) {
        fail_errno(what + "make persistent (TUNSETPERSIST)");
    }
    // Closing `tun` detaches; the persistent device stays until deleted.
}

bool is_tap_name(const std::string& prefix, const std::string& name) {
    return name.size() > prefix.size() && name.starts_with(prefix) &&
           std::all_of(name.begin() + static_cast<long>(prefix.size()), name.end(),
                       [](char c) { return c >= '0' && c <= '9'; });
}

// A permanent IPv4 neighbour entry, created or replaced (whatever state and MAC the entry had).
void set_permanent_neighbour(const std::string& name, std::uint32_t address,
                             const std::array<unsigned char, 6>& mac, const std::string& what) {
    unsigned index = ::if_nametoindex(name.c_str());
    if (index == 0) {
        fail_errno(what);
    }
    NetlinkMessage request(RTM_NEWNEIGH, NLM_F_CREATE | NLM_F_REPLACE);
    ndmsg info{};
    info.ndm_family = AF_INET;
    info.ndm_ifindex = static_cast<int>(index);
    info.ndm_state = NUD_PERMANENT;
    info.ndm_type = RTN_UNICAST;
    request.fixed(info);
    std::uint32_t destination = htonl(address);
    request.attribute(NDA_DST, &destination, sizeof destination);
    request.attribute(NDA_LLADDR, mac.data(), mac.size());
    if (int error = netlink_request(request.header(), what); error != 0) {
        fail(error, what);
    }
}

// "02:fa:0a:64:00:02": exactly six two-digit hex bytes separated by colons.
std::optional<std::array<unsigned char, 6>> parse_mac(const std::string& text) {
    std::array<unsigned char, 6> mac{};
    if (text.size() != 17) {
        return std::nullopt;
    }
    auto hex = [](char c) -> int {
        if (c >= '0' && c <= '9') {
            return c - '0';
        }
        if (c >= 'a' && c <= 'f') {
            return c - 'a' + 10;
        }
        if (c >= 'A' && c <= 'F') {
            return c - 'A' + 10;
        }
        return -1;
    };
    for (std::size_t i = 0; i < mac.size(); ++i) {
        int high = hex(text[3 * i]);
        int low = hex(text[3 * i + 1]);
        if (high < 0 || low < 0 || (i + 1 < mac.size() && text[3 * i + 2] != ':')) {
            return std::nullopt;
        }
        mac[i] = static_cast<unsigned char>(high * 16 + low);
    }
    return mac;
}

}  // namespace

TapDevice::TapDevice(std::string name, std::uint32_t host_ip, std::uint32_t netmask,
                     std::optional<TapGuest> guest)
    : name_(std::move(name)), host_ip_(host_ip), netmask_(netmask), guest_(std::move(guest)) {
    const std::string what = "tap " + name_ + ": ";
    check_name(name_, "tap " + name_);
    if (guest_) {
        auto mac = parse_mac(guest_->mac);
        if (!mac) {
            fail(EINVAL, what + "guest MAC \"" + guest_->mac + "\" is not like 02:fa:0a:64:00:02");
        }
        guest_mac_ = *mac;
    }
    create_persistent_tap(name_, what);
    try {
        add_ipv4_address(name_, host_ip_, netmask_,
                         what + "set address " + ipv4_to_string(host_ip_) + "/" +
                             std::to_string(__builtin_popcount(netmask_)) + " (RTM_NEWADDR)");
        UniqueFd sock = inet_socket("tap " + name_);
        set_up(sock.get(), name_, true, what + "bring up (SIOCSIFFLAGS)");
        add_guest_neighbour();
    } catch (...) {
        try {
            delete_interface(name_);
        } catch (const std::exception& e) {
            spdlog::warn("net: cannot delete half-made {}: {}", name_, e.what());
        }
        throw;
    }
}

TapDevice::~TapDevice() {
    try {
        delete_interface(name_);
    } catch (const std::system_error& e) {
        if (e.code().value() != ENODEV) {  // already gone (namespace ended, manual removal)
            spdlog::warn("net: cannot delete tap {}: {}", name_, e.what());
        }
    } catch (const std::exception& e) {
        spdlog::warn("net: cannot delete tap {}: {}", name_, e.what());
    }
}

void TapDevice::reset() {
    UniqueFd sock = inet_socket("tap " + name_);
    set_up(sock.get(), name_, false, "tap " + name_ + ": bring down (SIOCSIFFLAGS)");
    set_up(sock.get(), name_, true, "tap " + name_ + ": bring up (SIOCSIFFLAGS)");
    add_guest_neighbour();
}

void TapDevice::set_guest_mac(const std::string& mac) {
    auto parsed = parse_mac(mac);
    if (!guest_ || !parsed) {
        fail(EINVAL, "tap " + name_ + ": guest MAC \"" + mac + "\" is not like 02:fa:0a:64:00:02");
    }
    guest_->mac = mac;
    guest_mac_ = *parsed;
    add_guest_neighbour();
}

void TapDevice::add_guest_neighbour() {
    if (guest_) {
        set_permanent_neighbour(name_, guest_->address, guest_mac_,
                                "tap " + name_ + ": set neighbour " +
                                    ipv4_to_string(guest_->address) + " lladdr " + guest_->mac +
                                    " permanent (RTM_NEWNEIGH)");
    }
}

std::vector<InterfaceAddress> interface_addresses() {
    ifaddrs* list = nullptr;
    if (::getifaddrs(&list) < 0) {
        fail_errno("getifaddrs");
    }
    std::unique_ptr<ifaddrs, void (*)(ifaddrs*)> owner(list, ::freeifaddrs);
    std::vector<InterfaceAddress> result;
    for (ifaddrs* entry = list; entry != nullptr; entry = entry->ifa_next) {
        if (entry->ifa_addr == nullptr || entry->ifa_addr->sa_family != AF_INET) {
            continue;
        }
        auto address =
            ntohl(reinterpret_cast<const sockaddr_in*>(entry->ifa_addr)->sin_addr.s_addr);
        std::uint32_t mask =
            entry->ifa_netmask == nullptr
                ? ~std::uint32_t{0}
                : ntohl(reinterpret_cast<const sockaddr_in*>(entry->ifa_netmask)->sin_addr.s_addr);
        auto prefix = static_cast<unsigned>(__builtin_popcount(mask));
        result.push_back({entry->ifa_name, address, Ipv4Net::containing(address, prefix)});
    }
    return result;
}

std::vector<std::string> interface_names() {
    struct if_nameindex* list = ::if_nameindex();
    if (list == nullptr) {
        fail_errno("if_nameindex");
    }
    std::unique_ptr<struct if_nameindex, void (*)(struct if_nameindex*)> owner(list,
                                                                               ::if_freenameindex);
    std::vector<std::string> names;
    for (struct if_nameindex* entry = list; entry->if_index != 0; ++entry) {
        names.emplace_back(entry->if_name);
    }
    return names;
}

bool interface_exists(const std::string& name) {
    return name.size() < IFNAMSIZ && ::if_nametoindex(name.c_str()) != 0;
}

bool is_tun_device(const std::string& name) {
    return net_detail::interface_driver(name) == "tun";
}

unsigned interface_flags(const std::string& name) {
    check_name(name, "interface " + name);
    UniqueFd sock = inet_socket("interface " + name);
    return static_cast<unsigned short>(
        get_flags(sock.get(), name, "interface " + name + ": SIOCGIFFLAGS"));
}

void delete_interface(const std::string& name) {
    const std::string what = "interface " + name + ": delete (RTM_DELLINK)";
    check_name(name, "interface " + name);
    NetlinkMessage request(RTM_DELLINK, 0);
    ifinfomsg info{};
    info.ifi_family = AF_UNSPEC;
    request.fixed(info);
    request.attribute(IFLA_IFNAME, name.c_str(), name.size() + 1);
    if (int error = netlink_request(request.header(), what); error != 0) {
        fail(error, what);
    }
}

unsigned remove_taps_with_prefix(const std::string& prefix, const std::set<std::string>& keep) {
    unsigned removed = 0;
    for (const std::string& name : interface_names()) {
        if (!is_tap_name(prefix, name) || keep.contains(name) || !is_tun_device(name)) {
            continue;
        }
        try {
            delete_interface(name);
            ++removed;
        } catch (const std::system_error& e) {
            if (e.code().value() != ENODEV) {  // gone in between: nothing to do
                throw;
            }
        }
    }
    return removed;
}

}  // namespace unifaas
