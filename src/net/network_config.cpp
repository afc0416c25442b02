#include "net/network_config.h"

#include <algorithm>
#include <stdexcept>

namespace unifaas {

namespace {

bool is_digit(char c) {
    return c >= '0' && c <= '9';
}
bool is_lower(char c) {
    return c >= 'a' && c <= 'z';
}

}  // namespace

std::optional<std::string> subnet_problem(const Ipv4Net& subnet) {
    if (subnet.prefix < kMinSubnetPrefix || subnet.prefix > kMaxSubnetPrefix) {
        return "must be a /" + std::to_string(kMinSubnetPrefix) + " to /" +
               std::to_string(kMaxSubnetPrefix) + " subnet (got " + subnet.to_string() + ")";
    }
    return std::nullopt;
}

std::optional<std::string> tap_prefix_problem(const std::string& prefix, const Ipv4Net& subnet) {
    bool chars_ok = std::all_of(prefix.begin(), prefix.end(), [](char c) {
        return is_lower(c) || is_digit(c) || c == '_' || c == '-';
    });
    if (prefix.empty() || prefix.size() > kMaxTapPrefixLength || !chars_ok) {
        return "must be 1 to " + std::to_string(kMaxTapPrefixLength) +
               " characters a-z, 0-9, '_' or '-' (got \"" + prefix + "\")";
    }
    if (!is_lower(prefix.front())) {
        return "must start with a letter a-z (got \"" + prefix + "\")";
    }
    if (is_digit(prefix.back())) {
        // "faas1" + "2" would read as "faas" + "12": taps of two prefixes would mix.
        return "must not end with a digit, taps are named <prefix><number> (got \"" + prefix +
               "\")";
    }
    unsigned blocks = blocks_in(subnet.prefix);
    if (blocks > 0) {
        std::string longest = tap_name(prefix, blocks - 1);
        if (longest.size() > kMaxInterfaceName) {
            return "\"" + prefix + "\" is too long for subnet " + subnet.to_string() +
                   ": its last tap \"" + longest + "\" exceeds the " +
                   std::to_string(kMaxInterfaceName) + "-character interface name limit";
        }
    }
    return std::nullopt;
}

std::optional<std::string> prealloc_problem(unsigned prealloc) {
    if (prealloc > kMaxTapPrealloc) {
        return "must be between 0 and " + std::to_string(kMaxTapPrealloc) + " (got " +
               std::to_string(prealloc) + ")";
    }
    return std::nullopt;
}

std::string tap_name(const std::string& prefix, unsigned index) {
    return prefix + std::to_string(index);
}

std::optional<unsigned> tap_index(const std::string& prefix, const std::string& name) {
    if (name.size() <= prefix.size() || !name.starts_with(prefix)) {
        return std::nullopt;
    }
    std::string digits = name.substr(prefix.size());
    bool numeric = std::all_of(digits.begin(), digits.end(), is_digit);
    if (!numeric || (digits.size() > 1 && digits[0] == '0') || digits.size() > 9) {
        return std::nullopt;
    }
    return static_cast<unsigned>(std::stoul(digits));
}

void validate(const NetworkConfig& config) {
    if (auto problem = subnet_problem(config.subnet)) {
        throw std::invalid_argument("subnet: " + *problem);
    }
    if (auto problem = tap_prefix_problem(config.tap_prefix, config.subnet)) {
        throw std::invalid_argument("tap-prefix: " + *problem);
    }
    if (auto problem = prealloc_problem(config.prealloc)) {
        throw std::invalid_argument("tap-prealloc: " + *problem);
    }
}

}  // namespace unifaas
