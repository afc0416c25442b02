#include "net/subnet.h"

#include <algorithm>
#include <cstdio>
#include <stdexcept>

namespace unifaas {

namespace {

bool is_digit(char c) {
    return c >= '0' && c <= '9';
}

// A decimal number without sign or leading zeros, at most `max`; nullopt otherwise.
std::optional<unsigned> parse_decimal(const std::string& text, unsigned max) {
    if (text.empty() || text.size() > 3 || (text.size() > 1 && text[0] == '0')) {
        return std::nullopt;
    }
    unsigned value = 0;
    for (char c : text) {
        if (!is_digit(c)) {
            return std::nullopt;
        }
        value = value * 10 + static_cast<unsigned>(c - '0');
    }
    if (value > max) {
        return std::nullopt;
    }
    return value;
}

std::string quoted(const std::string& text) {
    constexpr std::size_t kMax = 60;
    return "\"" + (text.size() > kMax ? text.substr(0, kMax) + "..." : text) + "\"";
}

}  // namespace

std::uint32_t prefix_to_netmask(unsigned prefix) {
    return prefix == 0 ? 0 : ~std::uint32_t{0} << (32 - prefix);
}

std::optional<std::uint32_t> parse_ipv4(const std::string& text) {
    std::uint32_t address = 0;
    std::size_t start = 0;
    for (int part = 0; part < 4; ++part) {
        std::size_t end = part < 3 ? text.find('.', start) : text.size();
        if (end == std::string::npos) {
            return std::nullopt;
        }
        auto byte = parse_decimal(text.substr(start, end - start), 255);
        if (!byte) {
            return std::nullopt;
        }
        address = (address << 8) | *byte;
        start = end + 1;
    }
    return address;
}

std::string ipv4_to_string(std::uint32_t address) {
    char text[16];
    std::snprintf(text, sizeof text, "%u.%u.%u.%u", address >> 24, (address >> 16) & 0xff,
                  (address >> 8) & 0xff, address & 0xff);
    return text;
}

std::string guest_mac(std::uint32_t guest_ip) {
    char text[18];
    std::snprintf(text, sizeof text, "02:fa:%02x:%02x:%02x:%02x", guest_ip >> 24,
                  (guest_ip >> 16) & 0xff, (guest_ip >> 8) & 0xff, guest_ip & 0xff);
    return text;
}

Ipv4Net Ipv4Net::parse(const std::string& text) {
    auto slash = text.find('/');
    auto address = parse_ipv4(text.substr(0, slash));
    auto prefix =
        slash == std::string::npos ? std::nullopt : parse_decimal(text.substr(slash + 1), 32);
    if (!address || !prefix) {
        throw std::invalid_argument("expected an IPv4 subnet A.B.C.D/N (e.g. 10.100.0.0/16), got " +
                                    quoted(text));
    }
    Ipv4Net net = containing(*address, *prefix);
    if (net.base != *address) {
        throw std::invalid_argument(quoted(text) + " is not aligned to its prefix (the /" +
                                    std::to_string(*prefix) + " containing it is " +
                                    net.to_string() + ")");
    }
    return net;
}

Ipv4Net Ipv4Net::containing(std::uint32_t address, unsigned prefix) {
    if (prefix > 32) {
        throw std::invalid_argument("IPv4 prefix length " + std::to_string(prefix) +
                                    " is above 32");
    }
    return Ipv4Net{address & prefix_to_netmask(prefix), prefix};
}

std::string Ipv4Net::to_string() const {
    return ipv4_to_string(base) + "/" + std::to_string(prefix);
}

std::uint32_t Ipv4Net::netmask() const {
    return prefix_to_netmask(prefix);
}

bool Ipv4Net::contains(std::uint32_t address) const {
    return (address & netmask()) == base;
}

bool Ipv4Net::overlaps(const Ipv4Net& other) const {
    // CIDR blocks either nest or are disjoint: compare both under the shorter prefix.
    std::uint32_t mask = prefix_to_netmask(std::min(prefix, other.prefix));
    return (base & mask) == (other.base & mask);
}

unsigned blocks_in(unsigned prefix) {
    return prefix > 30 ? 0 : 1u << (30 - prefix);
}

SubnetAllocator::SubnetAllocator(Ipv4Net subnet)
    : subnet_(subnet), capacity_(blocks_in(subnet.prefix)) {
    if (capacity_ == 0) {
        throw std::invalid_argument("subnet " + subnet.to_string() +
                                    " is smaller than one /30 block");
    }
}

std::optional<unsigned> SubnetAllocator::allocate() {
    if (!released_.empty()) {
        unsigned index = *released_.begin();
        released_.erase(released_.begin());
        return index;
    }
    if (next_ < capacity_) {
        return next_++;
    }
    return std::nullopt;
}

void SubnetAllocator::release(unsigned index) {
    if (!is_allocated(index)) {
        throw std::logic_error("block " + std::to_string(index) + " of " + subnet_.to_string() +
                               " released but not allocated");
    }
    if (index + 1 == next_) {
        // Keep `released_` small: shrink the high-water mark over trailing free blocks.
        --next_;
        while (next_ > 0 && released_.erase(next_ - 1) == 1) {
            --next_;
        }
        return;
    }
    released_.insert(index);
}

bool SubnetAllocator::is_allocated(unsigned index) const {
    return index < next_ && !released_.contains(index);
}

Block30 SubnetAllocator::block(unsigned index) const {
    if (index >= capacity_) {
        throw std::out_of_range("block " + std::to_string(index) + " is outside " +
                                subnet_.to_string() + " (" + std::to_string(capacity_) +
                                " blocks)");
    }
    return Block30{subnet_.base + 4 * index};
}

}  // namespace unifaas
