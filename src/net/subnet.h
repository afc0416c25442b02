// IPv4 subnets and the /30 blocks a Network hands to guests. Pure: no sockets, no devices.
//
// The subnet is split into /30 blocks; block i serves one guest on one tap:
//   network = base + 4i, host (tap) = base + 4i + 1, guest = base + 4i + 2, netmask /30.
#pragma once

#include <cstdint>
#include <optional>
#include <set>
#include <string>

namespace unifaas {

// Addresses are host byte order throughout (10.100.0.1 == 0x0a640001).
struct Ipv4Net {
    std::uint32_t base = 0;  // no host bits set
    unsigned prefix = 0;     // 0..32

    // "A.B.C.D/N" with 0 <= N <= 32 and no host bits set in A.B.C.D; throws std::invalid_argument
    // with a message that quotes the text (and, when misaligned, the aligned form).
    static Ipv4Net parse(const std::string& text);
    // The network an interface address lies in (host bits cleared).
    static Ipv4Net containing(std::uint32_t address, unsigned prefix);

    std::string to_string() const;               // "10.100.0.0/16"
    std::uint32_t netmask() const;               // 0xffff0000 for /16
    bool contains(std::uint32_t address) const;  // address lies in the subnet
    bool overlaps(const Ipv4Net& other) const;   // the two share at least one address
    bool operator==(const Ipv4Net&) const = default;
};

std::uint32_t prefix_to_netmask(unsigned prefix);   // 0..32
std::string ipv4_to_string(std::uint32_t address);  // "10.100.0.1"
// Dotted quad to address; nullopt unless exactly four decimal numbers 0..255.
std::optional<std::uint32_t> parse_ipv4(const std::string& text);

// Locally administered unicast MAC for the guest owning `guest_ip`: 02:fa:<the 4 address bytes>,
// lowercase hex ("02:fa:0a:64:00:02" for 10.100.0.2). Unique per guest address.
std::string guest_mac(std::uint32_t guest_ip);

// The addresses of /30 block `index` of a subnet.
struct Block30 {
    std::uint32_t network;
    std::uint32_t host() const { return network + 1; }
    std::uint32_t guest() const { return network + 2; }
    static constexpr std::uint32_t netmask = 0xfffffffc;  // 255.255.255.252
};

// Hands out the /30 blocks of a subnet, lowest free index first. Not thread-safe.
class SubnetAllocator {
  public:
    // Throws std::invalid_argument for a subnet smaller than /30 (prefix > 30).
    explicit SubnetAllocator(Ipv4Net subnet);

    // The lowest free block, or nullopt when every block is in use.
    std::optional<unsigned> allocate();
    // Gives back an allocated block; throws std::logic_error for one that is not allocated.
    void release(unsigned index);
    bool is_allocated(unsigned index) const;

    Block30 block(unsigned index) const;  // throws std::out_of_range for index >= capacity()
    unsigned capacity() const { return capacity_; }
    unsigned in_use() const { return next_ - static_cast<unsigned>(released_.size()); }
    const Ipv4Net& subnet() const { return subnet_; }

  private:
    Ipv4Net subnet_;
    unsigned capacity_;
    unsigned next_ = 0;            // blocks [0, next_) have been handed out at least once
    std::set<unsigned> released_;  // blocks below next_ that are free again
};

// Number of /30 blocks in a subnet of this prefix (0 for prefixes above 30).
unsigned blocks_in(unsigned prefix);

}  // namespace unifaas
