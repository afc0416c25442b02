// Tap devices and the interface queries around them. Everything acts on the network namespace of
// the calling thread (sockets and /dev/net/tun are opened per call), so a test can run it inside
// a namespace of its own. Needs CAP_NET_ADMIN.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "net/subnet.h"

namespace unifaas {

// The guest behind a tap: its address and the MAC its hypervisor gives it ("02:fa:0a:64:00:02").
struct TapGuest {
    std::uint32_t address;
    std::string mac;
};

// One persistent tap (IFF_TAP | IFF_NO_PI), created through /dev/net/tun (TUNSETIFF,
// TUNSETPERSIST), given `host_ip` with `netmask` in one step (RTM_NEWADDR) and brought up
// (SIOCSIFFLAGS). It is persistent so that a hypervisor can attach to it by name
// (QEMU `-netdev tap,ifname=`, Firecracker `host_dev_name`); this object keeps no fd open on it.
// With a `guest`, the tap also gets a permanent neighbour entry guest address -> guest MAC
// (RTM_NEWNEIGH, NUD_PERMANENT): the host's first packets to a booting guest (the SYN-ACK of its
// readiness callback) leave at once instead of waiting for ARP resolution (up to about 1 s).
// The entry survives the hypervisor attaching and detaching (carrier changes), not a down.
// The destructor deletes the device. Errors are std::system_error "tap NAME: STEP: reason".
class TapDevice {
  public:
    // Fails with EEXIST when an interface of that name already exists (a tap is never adopted),
    // EINVAL when the guest MAC is not six hex bytes separated by colons.
    TapDevice(std::string name, std::uint32_t host_ip, std::uint32_t netmask,
              std::optional<TapGuest> guest = std::nullopt);
    ~TapDevice();  // deletes the device; never throws (a failure is logged)
    TapDevice(const TapDevice&) = delete;
    TapDevice& operator=(const TapDevice&) = delete;

    const std::string& name() const { return name_; }
    std::uint32_t host_ip() const { return host_ip_; }
    std::uint32_t netmask() const { return netmask_; }

    const std::optional<TapGuest>& guest() const { return guest_; }

    // Down then up: drops the neighbour entries and cached state of the previous guest (the down
    // flushes every entry of the device, permanent ones too); the address stays and its route
    // comes back; then the guest's permanent entry is installed again. Throws std::system_error.
    void reset();
    // The guest now answers with `mac` (a VM restored from a snapshot keeps the MAC it was saved
    // with): its permanent neighbour entry is replaced, and reset() installs this one. Throws
    // std::system_error (EINVAL for a malformed MAC).
    void set_guest_mac(const std::string& mac);

  private:
    void add_guest_neighbour();

    std::string name_;
    std::uint32_t host_ip_;
    std::uint32_t netmask_;
    std::optional<TapGuest> guest_;
    std::array<unsigned char, 6> guest_mac_{};
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
