// Network: hands each microVM a tap and a /30 of the configured subnet.
//
// Block i of the subnet always belongs to tap <prefix>i (faas0 <-> 10.100.0.0/30), whose guest is
// always <block>.2 with MAC guest_mac(<block>.2). A background thread keeps `prealloc` taps
// created, addressed, up and with that guest's permanent neighbour entry (the host never ARPs for
// the guest), so a cold start takes a ready one.
// Everything runs in the network namespace of the thread that constructed the Network (its
// background thread inherits it); lease() and ~NetworkLease may be called from any thread of
// that namespace.
#pragma once

#include <filesystem>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>

#include "net/network_config.h"
#include "net/subnet.h"

namespace unifaas {

// lease() found every /30 block of the subnet in use.
class NetworkExhausted : public std::runtime_error {
  public:
    using std::runtime_error::runtime_error;
};

namespace net_detail {
class NetworkCore;
}

class TapDevice;
class FirewallAttachment;

// One tap and its /30, held by one sandbox. Destroying it gives both back to the Network (the tap
// is reset and kept for the next lease, or deleted). May outlive the Network: then it deletes its
// tap itself.
class NetworkLease {
  public:
    ~NetworkLease();
    NetworkLease(const NetworkLease&) = delete;
    NetworkLease& operator=(const NetworkLease&) = delete;

    const std::string& tap() const { return tap_; }  // "faas3"
    unsigned block() const { return block_; }        // 3
    std::string host_ip() const;                     // tap address, the guest's gateway
    std::string guest_ip() const;
    std::string netmask() const;  // "255.255.255.252"
    std::string mac() const;      // guest_mac(guest address), or the one given to use_guest_mac
    // The guest behind this tap uses `mac` instead (a clone restored from a snapshot keeps the
    // template's MAC): the host's neighbour entry follows; the tap gets its own back when the
    // lease ends. Throws std::system_error.
    void use_guest_mac(const std::string& mac);
    std::uint32_t guest_address() const { return addresses_.guest(); }
    // Keeps the tap's firewall element for as long as the lease: removed before the tap is
    // given back, so a reused tap never carries an earlier function's policy.
    void hold(std::unique_ptr<FirewallAttachment> rules);

  private:
    friend class net_detail::NetworkCore;
    NetworkLease(std::shared_ptr<net_detail::NetworkCore> core, std::unique_ptr<TapDevice> device,
                 unsigned block, Block30 addresses);

    std::shared_ptr<net_detail::NetworkCore> core_;
    std::unique_ptr<TapDevice> device_;
    std::string tap_;
    unsigned block_;
    Block30 addresses_;
    std::string mac_override_;
    std::unique_ptr<FirewallAttachment> rules_;
};

class VethNamespace;

// A container's network: a network namespace holding `eth0` with the guest address of a /30 of
// the same subnet as the taps, the veth's host end <prefix>v<block> with the host address.
// Destroying it gives both back to the Network (kept for a next lease, up to twice the pool
// size, or deleted); it may outlive the Network.
class NetnsLease {
  public:
    ~NetnsLease();
    NetnsLease(const NetnsLease&) = delete;
    NetnsLease& operator=(const NetnsLease&) = delete;

    const std::string& host_interface() const;  // "faasv3"
    const std::filesystem::path& netns_path() const;
    unsigned block() const { return block_; }
    std::string host_ip() const;   // the container's gateway and callback address
    std::string guest_ip() const;  // eth0 inside
    // Keeps the veth's firewall element for as long as the lease (see NetworkLease::hold).
    void hold(std::unique_ptr<FirewallAttachment> rules);

  private:
    friend class net_detail::NetworkCore;
    NetnsLease(std::shared_ptr<net_detail::NetworkCore> core, std::unique_ptr<VethNamespace> device,
               unsigned block, Block30 addresses);

    std::shared_ptr<net_detail::NetworkCore> core_;
    std::unique_ptr<VethNamespace> device_;
    unsigned block_;
    Block30 addresses_;
    std::unique_ptr<FirewallAttachment> rules_;
};

class Network {
  public:
    // Validates `config` (std::invalid_argument "tap-prefix: ..."), deletes taps <prefix><digits>
    // left by an earlier run, refuses a subnet that overlaps an address configured on any
    // interface (std::runtime_error naming interface and address), then starts pre-creating
    // `prealloc` taps in the background. Needs CAP_NET_ADMIN.
    explicit Network(NetworkConfig config);
    // Stops the background thread and deletes the idle taps. Taps still leased are deleted when
    // their leases end.
    ~Network();
    Network(const Network&) = delete;
    Network& operator=(const Network&) = delete;

    // A ready tap: from the pre-created pool, or created now when the pool is empty; the pool is
    // topped up in the background. Throws NetworkExhausted when every block is leased, and
    // std::system_error when a tap cannot be created ("tap faas3: create (TUNSETIFF): ...").
    std::unique_ptr<NetworkLease> lease();

    // A ready container namespace (needs config().netns_dir): from the pool, or made now. The
    // first call turns on keeping `prealloc` namespaces ready in the background. Throws as lease().
    std::unique_ptr<NetnsLease> lease_netns();

    // Deletes the taps with the prefix that no lease holds: the idle pool (refilled at the next
    // lease) and any stray ones; the same for container namespaces and their veths. Returns how
    // many were deleted.
    unsigned cleanup_taps();

    struct Stats {
        unsigned leased;
        unsigned idle;      // created and waiting in the pool
        unsigned capacity;  // /30 blocks in the subnet
    };
    Stats stats() const;
    const NetworkConfig& config() const;

  private:
    std::shared_ptr<net_detail::NetworkCore> core_;
    std::thread filler_;
};

}  // namespace unifaas
