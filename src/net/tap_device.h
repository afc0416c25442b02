// Tap devices and the interface queries around them. Everything acts on the network namespace of
// the calling thread (sockets and /dev/net/tun are opened per call), so a test can run it inside
// a namespace of its own. Needs CAP_NET_ADMIN.
#pragma once

#include <cstdint>
#include <set>
#include <string>
#include <vector>

#include "net/subnet.h"

namespace unifaas {

// One persistent tap (IFF_TAP | IFF_NO_PI), created through /dev/net/tun (TUNSETIFF,
// TUNSETPERSIST), given `host_ip` with `netmask` in one step (RTM_NEWADDR) and brought up
// (SIOCSIFFLAGS). It is persistent so that a hypervisor can attach to it by name
// (QEMU `-netdev tap,ifname=`, Firecracker `host_dev_name`); this object keeps no fd open on it.
// The destructor deletes the device. Errors are std::system_error "tap NAME: STEP: reason".
class TapDevice {
  public:
    // Fails with EEXIST when an interface of that name already exists (a tap is never adopted).
    TapDevice(std::string name, std::uint32_t host_ip, std::uint32_t netmask);
    ~TapDevice();  // deletes the device; never throws (a failure is logged)
    TapDevice(const TapDevice&) = delete;
    TapDevice& operator=(const TapDevice&) = delete;

    const std::string& name() const { return name_; }
    std::uint32_t host_ip() const { return host_ip_; }
    std::uint32_t netmask() const { return netmask_; }

    // Down then up: drops the neighbour entries and cached state of the previous guest; the
    // address stays and its route comes back. Throws std::system_error.
    void reset();

  private:
    std::string name_;
    std::uint32_t host_ip_;
    std::uint32_t netmask_;
};

// An IPv4 address configured on an interface, with the network it implies.
struct InterfaceAddress {
    std::string interface;
    std::uint32_t address;
    Ipv4Net network;  // address/prefix with host bits cleared
};

// IPv4 addresses of every interface (getifaddrs). Throws std::system_error.
std::vector<InterfaceAddress> interface_addresses();
// Names of every interface. Throws std::system_error.
std::vector<std::string> interface_names();
bool interface_exists(const std::string& name);
// Whether `name` is a tun/tap device (ethtool driver "tun"); false when it does not exist.
bool is_tun_device(const std::string& name);
// The interface flags (IFF_UP, ...). Throws std::system_error (ENODEV when it does not exist).
unsigned interface_flags(const std::string& name);
// Deletes an interface (netlink RTM_DELLINK). Throws std::system_error "interface NAME: ...".
void delete_interface(const std::string& name);

// Deletes every tun/tap device named <prefix><digits> (faas0, faas12) that is not in `keep`:
// taps a crashed run left behind. Other interfaces are never touched. Returns the count.
unsigned remove_taps_with_prefix(const std::string& prefix, const std::set<std::string>& keep = {});

}  // namespace unifaas
