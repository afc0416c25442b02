// Firewall: the daemon's nftables table `inet unifaas`, isolating every instance interface (tap,
// veth) from the host, from each other and from the outside.
//
// The table holds one verdict map `guests` (interface name -> policy chain) jumped to from the
// input and forward hooks, so adding or removing an instance is one map element, never a reload:
//
//   policy chain          the guest may reach (besides replies to connections the host opened)
//   callback_only         its host-side address, callback port
//   callback_invoke       its host-side address, callback and invocation ports
//   callback_egress       its host-side address, callback port; the outside via egress-interface
//   callback_invoke_egress  both
//
// Anything else from a guest is rejected (ICMP admin-prohibited: its connect() fails at once
// instead of hanging). Interfaces matching a configured prefix ("faas*") but not in the map (idle
// taps, the moment before attach) are rejected entirely; forwarded traffic towards any of them
// passes only as replies (egress), everything else is dropped.
// Packets leaving through the egress interface from the guest subnets are masqueraded.
//
// Everything happens in the network namespace of the thread that constructed the Firewall.
#pragma once

#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "net/network_policy.h"
#include "net/subnet.h"

namespace unifaas {

// nft refused a command, or a policy cannot be honoured. what() names the interface and cause.
class FirewallError : public std::runtime_error {
  public:
    using std::runtime_error::runtime_error;
};

struct FirewallConfig {
    std::uint16_t callback_port = 0;              // readiness callbacks (always reachable)
    std::uint16_t invoke_port = 0;                // the gateway (allow-invoke); 0: never
    std::string egress_interface;                 // "" : egress policies are refused
    std::vector<std::string> interface_prefixes;  // instance interfaces: "<prefix>*" (e.g. faas)
    std::vector<Ipv4Net> guest_subnets;           // masqueraded when leaving egress_interface
    std::uint16_t restore_port = 0;  // UDP acks of restored snapshot clones (always); 0: none
};

namespace net_detail {
class FirewallCore;
}

// One interface's element in the map; destroying it removes the element. May outlive the
// Firewall (then there is nothing left to remove).
class FirewallAttachment {
  public:
    ~FirewallAttachment();
    FirewallAttachment(const FirewallAttachment&) = delete;
    FirewallAttachment& operator=(const FirewallAttachment&) = delete;

    const std::string& interface() const { return ifname_; }
    const NetworkPolicy& policy() const { return policy_; }

  private:
    friend class Firewall;
    FirewallAttachment(std::shared_ptr<net_detail::FirewallCore> core, std::string ifname,
                       NetworkPolicy policy);

    std::shared_ptr<net_detail::FirewallCore> core_;
    std::string ifname_;
    NetworkPolicy policy_;
};

class Firewall {
  public:
    static constexpr const char* kFamily = "inet";
    static constexpr const char* kTable = "unifaas";
    static constexpr const char* kMap = "guests";

    // Replaces any table `inet unifaas` (left by a crashed run) with a fresh one. Throws
    // FirewallError (std::runtime_error) when nftables refuses, e.g. without CAP_NET_ADMIN.
    explicit Firewall(FirewallConfig config);
    // Deletes the table (every element with it).
    ~Firewall();
    Firewall(const Firewall&) = delete;
    Firewall& operator=(const Firewall&) = delete;

    // Puts `ifname` under `policy`: one element added atomically. Throws FirewallError for an
    // invalid name, for egress without an egress interface, or when nft refuses.
    std::unique_ptr<FirewallAttachment> attach(const std::string& ifname, NetworkPolicy policy);

    const FirewallConfig& config() const;
    unsigned attached() const;  // elements currently in the map

  private:
    std::shared_ptr<net_detail::FirewallCore> core_;
};

// Deletes a table inet unifaas left by a crashed daemon (for --cleanup-taps). Returns whether one
// was there; throws FirewallError when nftables refuses.
bool remove_firewall_table();

// The ruleset text Firewall installs (after deleting any older table); exposed for tests.
std::string firewall_ruleset(const FirewallConfig& config);

// The policy chain of the table that implements `policy`, e.g. "callback_only".
std::string firewall_chain(NetworkPolicy policy);

}  // namespace unifaas
