// Subnets, /30 blocks, guest MACs and the network settings' validation (no devices involved).
#include <gtest/gtest.h>

#include <set>
#include <stdexcept>
#include <string>

#include "net/network_config.h"
#include "net/subnet.h"

namespace unifaas {
namespace {

std::string parse_error(const std::string& text) {
    try {
        Ipv4Net::parse(text);
    } catch (const std::invalid_argument& e) {
        return e.what();
    }
    ADD_FAILURE() << "parsed " << text;
    return "";
}

TEST(Ipv4NetTest, ParsesGoodSubnets) {
    EXPECT_EQ(Ipv4Net::parse("10.100.0.0/16"), (Ipv4Net{0x0a640000, 16}));
    EXPECT_EQ(Ipv4Net::parse("192.168.4.0/30"), (Ipv4Net{0xc0a80400, 30}));
    EXPECT_EQ(Ipv4Net::parse("0.0.0.0/0"), (Ipv4Net{0, 0}));
    EXPECT_EQ(Ipv4Net::parse("255.255.255.255/32"), (Ipv4Net{0xffffffff, 32}));
    EXPECT_EQ(Ipv4Net::parse("10.0.0.0/8").to_string(), "10.0.0.0/8");
    EXPECT_EQ(Ipv4Net::parse("172.16.0.8/29").to_string(), "172.16.0.8/29");
}

TEST(Ipv4NetTest, RejectsBadSyntax) {
    const std::string form = "expected an IPv4 subnet A.B.C.D/N (e.g. 10.100.0.0/16), got ";
    for (const char* text :
         {"", "10.100.0.0", "10.100.0.0/", "/16", "10.100.0/16", "10.100.0.0.0/16",
          "10.100.0.256/30", "10.100.0.0/33", "10.100.0.0/-1", "10.100.0.0/016", "010.1.0.0/16",
          "10.100.0.0/16 ", " 10.100.0.0/16", "a.b.c.d/8", "10.100.0.0/1x", "10..0.0/16",
          "10.100.0.0//16", "+10.100.0.0/16", "10.100.0.0/1e1"}) {
        EXPECT_EQ(parse_error(text), form + "\"" + text + "\"") << text;
    }
}

TEST(Ipv4NetTest, RejectsMisalignedBase) {
    EXPECT_EQ(parse_error("10.100.0.1/16"),
              "\"10.100.0.1/16\" is not aligned to its prefix (the /16 containing it is "
              "10.100.0.0/16)");
    EXPECT_EQ(parse_error("10.100.0.4/29"),
              "\"10.100.0.4/29\" is not aligned to its prefix (the /29 containing it is "
              "10.100.0.0/29)");
}

TEST(Ipv4NetTest, ContainsAndNetmask) {
    Ipv4Net net = Ipv4Net::parse("10.100.0.0/16");
    EXPECT_EQ(net.netmask(), 0xffff0000u);
    EXPECT_TRUE(net.contains(*parse_ipv4("10.100.255.255")));
    EXPECT_FALSE(net.contains(*parse_ipv4("10.101.0.0")));
    EXPECT_EQ(Ipv4Net::containing(*parse_ipv4("10.100.3.7"), 24).to_string(), "10.100.3.0/24");
    EXPECT_EQ(prefix_to_netmask(0), 0u);
    EXPECT_EQ(prefix_to_netmask(30), 0xfffffffcu);
    EXPECT_EQ(prefix_to_netmask(32), 0xffffffffu);
}

TEST(Ipv4NetTest, Overlaps) {
    auto net = [](const char* text) { return Ipv4Net::parse(text); };
    EXPECT_TRUE(net("10.100.0.0/16").overlaps(net("10.100.0.0/16")));
    EXPECT_TRUE(net("10.100.0.0/16").overlaps(net("10.100.7.0/24")));  // inner
    EXPECT_TRUE(net("10.100.7.0/24").overlaps(net("10.100.0.0/16")));  // symmetric
    EXPECT_TRUE(net("10.100.0.0/16").overlaps(net("10.0.0.0/8")));     // outer
    EXPECT_TRUE(net("10.100.0.0/16").overlaps(net("10.100.255.255/32")));
    EXPECT_TRUE(net("10.100.0.0/16").overlaps(net("0.0.0.0/0")));
    EXPECT_FALSE(net("10.100.0.0/16").overlaps(net("10.101.0.0/16")));
    EXPECT_FALSE(net("10.100.0.0/16").overlaps(net("10.99.255.255/32")));
    EXPECT_FALSE(net("10.100.0.0/30").overlaps(net("10.100.0.4/30")));
    EXPECT_FALSE(net("10.100.0.0/16").overlaps(net("127.0.0.0/8")));
}

TEST(Ipv4Test, FormatAndParse) {
    EXPECT_EQ(ipv4_to_string(0x0a640001), "10.100.0.1");
    EXPECT_EQ(ipv4_to_string(0), "0.0.0.0");
    EXPECT_EQ(ipv4_to_string(0xffffffff), "255.255.255.255");
    EXPECT_EQ(parse_ipv4("192.168.0.1"), 0xc0a80001u);
    EXPECT_FALSE(parse_ipv4("192.168.0"));
    EXPECT_FALSE(parse_ipv4("192.168.0.1.5"));
    EXPECT_FALSE(parse_ipv4("192.168.00.1"));
}

TEST(GuestMacTest, FormatIsLocallyAdministeredUnicast) {
    EXPECT_EQ(guest_mac(0x0a640002), "02:fa:0a:64:00:02");
    EXPECT_EQ(guest_mac(0xc0a8fffe), "02:fa:c0:a8:ff:fe");
    unsigned first = std::stoul(guest_mac(0x0a640002).substr(0, 2), nullptr, 16);
    EXPECT_EQ(first & 0x01, 0u);  // unicast
    EXPECT_EQ(first & 0x02, 2u);  // locally administered
}

TEST(GuestMacTest, UniquePerGuest) {
    SubnetAllocator blocks(Ipv4Net::parse("10.100.0.0/20"));
    std::set<std::string> macs;
    for (unsigned i = 0; i < blocks.capacity(); ++i) {
        macs.insert(guest_mac(blocks.block(i).guest()));
    }
    EXPECT_EQ(macs.size(), blocks.capacity());
}

TEST(SubnetAllocatorTest, BlockMath) {
    SubnetAllocator blocks(Ipv4Net::parse("10.100.0.0/16"));
    EXPECT_EQ(blocks.capacity(), 16384u);
    EXPECT_EQ(ipv4_to_string(blocks.block(0).network), "10.100.0.0");
    EXPECT_EQ(ipv4_to_string(blocks.block(0).host()), "10.100.0.1");
    EXPECT_EQ(ipv4_to_string(blocks.block(0).guest()), "10.100.0.2");
    EXPECT_EQ(ipv4_to_string(blocks.block(1).host()), "10.100.0.5");
    EXPECT_EQ(ipv4_to_string(blocks.block(1).guest()), "10.100.0.6");
    EXPECT_EQ(ipv4_to_string(blocks.block(64).host()), "10.100.1.1");
    EXPECT_EQ(ipv4_to_string(blocks.block(16383).host()), "10.100.255.253");
    EXPECT_EQ(ipv4_to_string(blocks.block(16383).guest()), "10.100.255.254");
    EXPECT_EQ(ipv4_to_string(Block30::netmask), "255.255.255.252");
    EXPECT_THROW(blocks.block(16384), std::out_of_range);
    EXPECT_EQ(blocks_in(8), 1u << 22);
    EXPECT_EQ(blocks_in(30), 1u);
    EXPECT_EQ(blocks_in(31), 0u);
}

TEST(SubnetAllocatorTest, A29HasTwoBlocksThenExhausts) {
    SubnetAllocator blocks(Ipv4Net::parse("10.100.0.0/29"));
    EXPECT_EQ(blocks.capacity(), 2u);
    EXPECT_EQ(blocks.allocate(), 0u);
    EXPECT_EQ(blocks.allocate(), 1u);
    EXPECT_EQ(blocks.in_use(), 2u);
    EXPECT_FALSE(blocks.allocate());
    blocks.release(0);
    EXPECT_EQ(blocks.in_use(), 1u);
    EXPECT_EQ(blocks.allocate(), 0u);
    EXPECT_FALSE(blocks.allocate());
}

TEST(SubnetAllocatorTest, LowestFreeFirstAndDoubleReleaseRejected) {
    SubnetAllocator blocks(Ipv4Net::parse("10.100.0.0/24"));
    for (unsigned i = 0; i < 6; ++i) {
        EXPECT_EQ(blocks.allocate(), i);
    }
    blocks.release(4);
    blocks.release(1);
    blocks.release(5);  // the highest: shrinks back over 4 as well
    EXPECT_EQ(blocks.in_use(), 3u);
    EXPECT_FALSE(blocks.is_allocated(4));
    EXPECT_TRUE(blocks.is_allocated(3));
    EXPECT_THROW(blocks.release(4), std::logic_error);
    EXPECT_THROW(blocks.release(63), std::logic_error);
    EXPECT_EQ(blocks.allocate(), 1u);
    EXPECT_EQ(blocks.allocate(), 4u);
    EXPECT_EQ(blocks.allocate(), 5u);
    EXPECT_EQ(blocks.allocate(), 6u);
}

TEST(SubnetAllocatorTest, FillsEveryBlockOnce) {
    SubnetAllocator blocks(Ipv4Net::parse("10.100.0.0/22"));
    std::set<unsigned> seen;
    while (auto index = blocks.allocate()) {
        EXPECT_TRUE(seen.insert(*index).second);
    }
    EXPECT_EQ(seen.size(), 256u);
    EXPECT_EQ(blocks.in_use(), 256u);
    for (unsigned index : seen) {
        blocks.release(index);
    }
    EXPECT_EQ(blocks.in_use(), 0u);
    EXPECT_EQ(blocks.allocate(), 0u);
}

TEST(SubnetAllocatorTest, RejectsSubnetsSmallerThanA30) {
    EXPECT_THROW(SubnetAllocator(Ipv4Net::parse("10.100.0.0/31")), std::invalid_argument);
    EXPECT_EQ(SubnetAllocator(Ipv4Net::parse("10.100.0.0/30")).capacity(), 1u);
}

TEST(NetworkConfigTest, DefaultsAreValid) {
    NetworkConfig config;
    EXPECT_EQ(config.subnet.to_string(), "10.100.0.0/16");
    EXPECT_EQ(config.tap_prefix, "faas");
    EXPECT_EQ(config.prealloc, 4u);
    EXPECT_NO_THROW(validate(config));
}

TEST(NetworkConfigTest, SubnetPrefixBounds) {
    EXPECT_FALSE(subnet_problem(Ipv4Net::parse("10.0.0.0/8")));
    EXPECT_FALSE(subnet_problem(Ipv4Net::parse("10.0.0.0/30")));
    EXPECT_EQ(subnet_problem(Ipv4Net::parse("10.0.0.0/7")),
              "must be a /8 to /30 subnet (got 10.0.0.0/7)");
    EXPECT_EQ(subnet_problem(Ipv4Net::parse("10.0.0.0/31")),
              "must be a /8 to /30 subnet (got 10.0.0.0/31)");
}

TEST(NetworkConfigTest, TapPrefixRules) {
    Ipv4Net net16 = Ipv4Net::parse("10.100.0.0/16");
    for (const char* good : {"faas", "f", "uf_tap-", "abcdefghij", "a1b"}) {
        EXPECT_FALSE(tap_prefix_problem(good, net16)) << good;
    }
    const std::string chars = "must be 1 to 10 characters a-z, 0-9, '_' or '-' (got ";
    EXPECT_EQ(tap_prefix_problem("", net16), chars + "\"\")");
    EXPECT_EQ(tap_prefix_problem("abcdefghijk", net16), chars + "\"abcdefghijk\")");
    EXPECT_EQ(tap_prefix_problem("Faas", net16), chars + "\"Faas\")");
    EXPECT_EQ(tap_prefix_problem("fa as", net16), chars + "\"fa as\")");
    EXPECT_EQ(tap_prefix_problem("fa/s", net16), chars + "\"fa/s\")");
    EXPECT_EQ(tap_prefix_problem("-faas", net16), "must start with a letter a-z (got \"-faas\")");
    EXPECT_EQ(tap_prefix_problem("faas1", net16),
              "must not end with a digit, taps are named <prefix><number> (got \"faas1\")");
    // /8: last tap number 4194303 (7 digits); 9 + 7 > 15. /11: 524287 (6 digits) fits.
    EXPECT_EQ(tap_prefix_problem("abcdefghi", Ipv4Net::parse("10.0.0.0/8")),
              "\"abcdefghi\" is too long for subnet 10.0.0.0/8: its last tap "
              "\"abcdefghi4194303\" exceeds the 15-character interface name limit");
    EXPECT_FALSE(tap_prefix_problem("abcdefgh", Ipv4Net::parse("10.0.0.0/8")));
    EXPECT_FALSE(tap_prefix_problem("abcdefghi", Ipv4Net::parse("10.0.0.0/11")));
    EXPECT_FALSE(tap_prefix_problem("abcdefghij", net16));  // "abcdefghij16383": 15
}

TEST(NetworkConfigTest, TapNames) {
    EXPECT_EQ(tap_name("faas", 0), "faas0");
    EXPECT_EQ(tap_name("faas", 12), "faas12");
    EXPECT_EQ(tap_index("faas", "faas12"), 12u);
    EXPECT_EQ(tap_index("faas", "faas0"), 0u);
    EXPECT_FALSE(tap_index("faas", "faas"));
    EXPECT_FALSE(tap_index("faas", "faas012"));
    EXPECT_FALSE(tap_index("faas", "faasx"));
    EXPECT_FALSE(tap_index("faas", "eth0"));
}

TEST(NetworkConfigTest, ValidateNamesTheKey) {
    NetworkConfig config;
    config.prealloc = 65;
    EXPECT_THROW(
        {
            try {
                validate(config);
            } catch (const std::invalid_argument& e) {
                EXPECT_STREQ(e.what(), "tap-prealloc: must be between 0 and 64 (got 65)");
                throw;
            }
        },
        std::invalid_argument);
    config = NetworkConfig{};
    config.tap_prefix = "Bad";
    EXPECT_THROW(validate(config), std::invalid_argument);
}

}  // namespace
}  // namespace unifaas
