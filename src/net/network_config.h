// NetworkConfig: the guest network settings of unifaas.toml (subnet, tap-prefix, tap-prealloc).
// A plain struct plus its validation, so config/ can hold and check it without linking tap code.
#pragma once

#include <filesystem>
#include <optional>
#include <string>

#include "net/subnet.h"

namespace unifaas {

struct NetworkConfig {
    Ipv4Net subnet{0x0a640000, 16};   // 10.100.0.0/16: 16384 /30 blocks, one per guest
    std::string tap_prefix = "faas";  // taps are <prefix><block index>: faas0, faas1, ...
    unsigned prealloc = 4;            // taps kept created and addressed ahead of need
    // Containers' network namespaces are kept here (files named like their veth host end); empty:
    // no container namespaces. Set by the daemon to <runtime-dir>/netns.
    std::filesystem::path netns_dir;
};

// Limits checked by the config loader and by Network.
inline constexpr unsigned kMinSubnetPrefix = 8;
inline constexpr unsigned kMaxSubnetPrefix = 30;
inline constexpr std::size_t kMaxTapPrefixLength = 10;
inline constexpr unsigned kMaxTapPrealloc = 64;
inline constexpr std::size_t kMaxInterfaceName = 15;  // IFNAMSIZ - 1

// Each returns a short problem ("must be ...") or nullopt when the value is acceptable.
std::optional<std::string> subnet_problem(const Ipv4Net& subnet);
// The prefix alone (characters, length), and whether <prefix><largest block index> still fits
// in an interface name.
std::optional<std::string> tap_prefix_problem(const std::string& prefix, const Ipv4Net& subnet);
std::optional<std::string> prealloc_problem(unsigned prealloc);

// The tap name of block `index`: tap_name("faas", 12) == "faas12".
std::string tap_name(const std::string& prefix, unsigned index);
// The block index in a name of the form <prefix><digits> (no leading zeros), else nullopt.
std::optional<unsigned> tap_index(const std::string& prefix, const std::string& name);

// Throws std::invalid_argument naming the first problem, e.g. "tap-prefix: must ...".
void validate(const NetworkConfig& config);

}  // namespace unifaas
