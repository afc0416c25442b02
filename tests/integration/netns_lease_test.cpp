// Network's container namespaces (lease_netns) against the real kernel, in a private network
// namespace per test: the veth pair, addresses, route, the pool, reuse, cleanup.
#include <stdio.h>
#include <stdlib.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <thread>

#include <gtest/gtest.h>

#include "net/network.h"
#include "net/tap_device.h"
#include "net/veth_namespace.h"
#include "private_netns.h"

namespace unifaas::test {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

std::string capture(const std::string& command) {
    std::string out;
    if (FILE* pipe = ::popen(command.c_str(), "r")) {
        char buffer[256];
        while (std::fgets(buffer, sizeof buffer, pipe) != nullptr) {
            out += buffer;
        }
        EXPECT_EQ(::pclose(pipe), 0) << command;
    }
    return out;
}

bool eventually(const std::function<bool()>& condition) {
    auto deadline = std::chrono::steady_clock::now() + 5s;
    while (!condition()) {
        if (std::chrono::steady_clock::now() > deadline) {
            return false;
        }
        std::this_thread::sleep_for(2ms);
    }
    return true;
}

class NetnsLeaseTest : public ::testing::Test {
  protected:
    void SetUp() override {
        char tmpl[] = "/tmp/unifaas-netns-XXXXXX";
        ASSERT_NE(mkdtemp(tmpl), nullptr);
        dir_ = tmpl;
    }
    void TearDown() override {
        EXPECT_TRUE(fs::is_empty(dir_ / "netns")) << "namespace files left";
        fs::remove_all(dir_);
    }
    NetworkConfig config(unsigned prealloc) {
        NetworkConfig c;
        c.subnet = Ipv4Net::parse("10.100.0.0/16");
        c.prealloc = prealloc;
        c.netns_dir = dir_ / "netns";
        return c;
    }
    static std::size_t veths() {
        std::size_t n = 0;
        for (const auto& name : interface_names()) {
            n += name.starts_with("faasv") ? 1 : 0;
        }
        return n;
    }
    fs::path dir_;
};

TEST_F(NetnsLeaseTest, LeaseIsAddressedRoutedAndPooled) {
    in_private_netns([&] {
        {
            Network net(config(2));
            auto lease = net.lease_netns();  // the first one is made now, then the pool fills
            unsigned block = lease->block();
            std::string veth = "faasv" + std::to_string(block);
            EXPECT_EQ(lease->host_interface(), veth);
            EXPECT_EQ(lease->host_ip(), ipv4_to_string(0x0a640000 + 4 * block + 1));
            EXPECT_EQ(lease->guest_ip(), ipv4_to_string(0x0a640000 + 4 * block + 2));
            EXPECT_EQ(lease->netns_path(), dir_ / "netns" / veth);
            EXPECT_NE(
                capture("ip -4 -o addr show dev " + veth).find("inet " + lease->host_ip() + "/30"),
                std::string::npos);
            std::string inside = "nsenter --net=" + lease->netns_path().string() + " ";
            EXPECT_NE(capture(inside + "ip -4 -o addr show dev eth0")
                          .find("inet " + lease->guest_ip() + "/30"),
                      std::string::npos);
            EXPECT_NE(
                capture(inside + "ip route").find("default via " + lease->host_ip() + " dev eth0"),
                std::string::npos);
            EXPECT_NE(capture(inside + "ip -o link show lo").find("UP"), std::string::npos);
            // A tap lease takes another block of the same subnet.
            auto tap = net.lease();
            EXPECT_NE(tap->block(), block);
            EXPECT_TRUE(eventually([&] { return veths() == 3; }));  // 1 leased + 2 ready

            // The next lease comes from the pool, already made.
            auto second = net.lease_netns();
            EXPECT_NE(second->block(), block);
            EXPECT_TRUE(fs::exists(second->netns_path()));
            EXPECT_TRUE(eventually([&] { return veths() == 4; }));
            // Given back, it waits in the pool for the next lease (up to twice its size).
            lease.reset();
            EXPECT_EQ(veths(), 4u);
            EXPECT_TRUE(fs::exists(dir_ / "netns" / veth));
            // cleanup_taps: the idle namespaces (3) and taps go (a tap or namespace the filler
            // was making meanwhile may survive it), the leased one stays.
            EXPECT_GE(net.cleanup_taps(), 3u);
            EXPECT_LE(veths(), 2u);
            EXPECT_TRUE(interface_exists(second->host_interface()));
            EXPECT_TRUE(fs::exists(second->netns_path()));
        }
        EXPECT_EQ(veths(), 0u);
    });
}

TEST_F(NetnsLeaseTest, LeftoversOfACrashAreRemoved) {
    in_private_netns([&] {
        auto c = config(0);
        // What a killed daemon leaves: a namespace with its veth, and a namespace file alone.
        auto left = std::make_unique<VethNamespace>(c.netns_dir, "faasv7", Block30{0x0a64001c});
        left.release();  // never destroyed, as after kill -9
        { std::ofstream(c.netns_dir / "faasv9").flush(); }
        EXPECT_EQ(veths(), 1u);
        Network net(c);
        EXPECT_EQ(veths(), 0u);
        EXPECT_FALSE(fs::exists(c.netns_dir / "faasv7"));
        EXPECT_FALSE(fs::exists(c.netns_dir / "faasv9"));
    });
}

}  // namespace
}  // namespace unifaas::test
