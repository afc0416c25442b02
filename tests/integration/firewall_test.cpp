// Firewall against the real kernel and nftables: guests are network namespaces joined to the
// test's private namespace by veth pairs whose host ends carry tap names (faas1, faas2). The
// firewall keys on interface names only, so a veth end stands for a tap exactly; real connections
// from the guest namespaces show what a guest can reach. Every namespace here is private to the
// test and goes away with it.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <thread>

#include <gtest/gtest.h>

#include "private_netns.h"

#include "net/firewall.h"
#include "util/unique_fd.h"

namespace unifaas::test {
namespace {

constexpr std::uint16_t kCallbackPort = 8124;
constexpr std::uint16_t kInvokePort = 8123;
constexpr std::uint16_t kOtherPort = 22;  // "SSH": any other service on the host
constexpr std::uint16_t kGuestPort = 8080;
constexpr std::uint16_t kOutsidePort = 80;

// Output and exit status of a shell command run in the calling thread's namespace.
std::pair<int, std::string> sh(const std::string& command) {
    std::string out;
    FILE* pipe = ::popen((command + " 2>&1").c_str(), "r");
    if (pipe == nullptr) {
        return {-1, "popen failed"};
    }
    std::array<char, 4096> buf{};
    while (std::size_t n = std::fread(buf.data(), 1, buf.size(), pipe)) {
        out.append(buf.data(), n);
    }
    int status = ::pclose(pipe);
    return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
}

void must(const std::string& command) {
    auto [status, out] = sh(command);
    ASSERT_EQ(status, 0) << command << "\n" << out;
}

// A network namespace of its own, alive while this object holds its descriptor.
class Namespace {
  public:
    Namespace() {
        std::thread([this] {
            if (::unshare(CLONE_NEWNET) == 0) {
                fd_ = UniqueFd(::open("/proc/thread-self/ns/net", O_RDONLY));
            }
        }).join();
        if (!fd_) {
            throw std::runtime_error("cannot make a network namespace");
        }
        must(in("ip link set lo up"));
    }
    std::string path() const {
        return "/proc/" + std::to_string(::getpid()) + "/fd/" + std::to_string(fd_.get());
    }
    std::string in(const std::string& command) const {
        return "nsenter --net=" + path() + " " + command;
    }
    // Runs `fn` on a thread inside this namespace.
    template <typename F>
    void run(F fn) const {
        std::thread([&] {
            if (::setns(fd_.get(), CLONE_NEWNET) == 0) {
                fn();
            } else {
                ADD_FAILURE() << "setns: " << std::strerror(errno);
            }
        }).join();
    }

  private:
    UniqueFd fd_;
};

// A TCP socket listening on 0.0.0.0:port in the calling thread's namespace.
UniqueFd listen_on(std::uint16_t port) {
    UniqueFd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    int one = 1;
    ::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(port);
    if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
        ::listen(fd.get(), 16) != 0) {
        ADD_FAILURE() << "listen on " << port << ": " << std::strerror(errno);
    }
    return fd;
}

// Whether a TCP connection from `from` to ip:port completes within a second.
bool can_connect(const Namespace& from, const std::string& ip, std::uint16_t port) {
    bool connected = false;
    from.run([&] {
        UniqueFd fd(::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
        sockaddr_in addr{};
        addr.sin_family = AF_INET;
        addr.sin_port = htons(port);
        ::inet_pton(AF_INET, ip.c_str(), &addr.sin_addr);
        if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 &&
            errno != EINPROGRESS) {
            return;
        }
        pollfd p{fd.get(), POLLOUT, 0};
        if (::poll(&p, 1, 1000) != 1) {
            return;
        }
        int error = 0;
        socklen_t len = sizeof error;
        ::getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &error, &len);
        connected = error == 0;
    });
    return connected;
}

// The peer address of the next connection waiting on `listener` ("" when none within a second).
std::string accept_peer(int listener) {
    pollfd p{listener, POLLIN, 0};
    if (::poll(&p, 1, 1000) != 1) {
        return "";
    }
    sockaddr_in peer{};
    socklen_t len = sizeof peer;
    UniqueFd conn(::accept4(listener, reinterpret_cast<sockaddr*>(&peer), &len, SOCK_CLOEXEC));
    char text[INET_ADDRSTRLEN] = {};
    ::inet_ntop(AF_INET, &peer.sin_addr, text, sizeof text);
    return text;
}

std::string map_elements() {
    return sh("nft list map inet unifaas guests").second;
}

bool table_exists() {
    return sh("nft list table inet unifaas").first == 0;
}

// Host (the test's private namespace) with two guests behind faas1 and faas2 and an "outside"
// network behind wan0, routed like the daemon's /30s.
struct Lab {
    Namespace guest1, guest2, outside;

    Lab() {
        must("sysctl -qw net.ipv4.ip_forward=1");
        must("ip link set lo up");
        link(guest1, "faas1", "10.100.0.1/30", "10.100.0.2/30");
        link(guest2, "faas2", "10.100.0.5/30", "10.100.0.6/30");
        link(outside, "wan0", "192.0.2.1/24", "192.0.2.2/24", false);
    }

    static void link(const Namespace& ns, const std::string& host_end, const std::string& host_ip,
                     const std::string& guest_ip, bool default_route = true) {
        must("ip link add " + host_end + " type veth peer name peer0 netns " + ns.path());
        must("ip addr add " + host_ip + " dev " + host_end);
        must("ip link set " + host_end + " up");
        must(ns.in("ip addr add " + guest_ip + " dev peer0"));
        must(ns.in("ip link set peer0 up"));
        if (default_route) {
            std::string gateway = host_ip.substr(0, host_ip.find('/'));
            must(ns.in("ip route add default via " + gateway));
        }
    }

    static FirewallConfig config(std::string egress = "") {
        return FirewallConfig{
            kCallbackPort, kInvokePort, std::move(egress), {"faas"}, {Ipv4Net{0x0a640000, 16}}};
    }
};

TEST(FirewallTest, DefaultPolicyLetsAGuestReachOnlyItsCallbackPort) {
    in_private_netns([] {
        Lab lab;
        UniqueFd callback = listen_on(kCallbackPort), invoke = listen_on(kInvokePort),
                 other = listen_on(kOtherPort);
        UniqueFd in_guest2;
        lab.guest2.run([&] { in_guest2 = listen_on(kGuestPort); });

        // Without the firewall everything is open: the checks below could fail.
        EXPECT_TRUE(can_connect(lab.guest1, "10.100.0.1", kOtherPort));
        EXPECT_TRUE(can_connect(lab.guest1, "10.100.0.5", kCallbackPort));
        EXPECT_TRUE(can_connect(lab.guest1, "10.100.0.6", kGuestPort));

        Firewall firewall(Lab::config());
        auto g1 = firewall.attach("faas1", {});
        auto g2 = firewall.attach("faas2", {});
        EXPECT_TRUE(can_connect(lab.guest1, "10.100.0.1", kCallbackPort));
        EXPECT_FALSE(can_connect(lab.guest1, "10.100.0.1", kInvokePort));
        EXPECT_FALSE(can_connect(lab.guest1, "10.100.0.1", kOtherPort));
        // Another guest's host-side address and the other guest itself.
        EXPECT_FALSE(can_connect(lab.guest1, "10.100.0.5", kCallbackPort));
        EXPECT_FALSE(can_connect(lab.guest1, "10.100.0.6", kGuestPort));
        // The host's other addresses, and the outside (no forwarding).
        EXPECT_FALSE(can_connect(lab.guest1, "192.0.2.1", kCallbackPort));
        EXPECT_FALSE(can_connect(lab.guest1, "127.0.0.1", kCallbackPort));
        UniqueFd out_listener;
        lab.outside.run([&] { out_listener = listen_on(kOutsidePort); });
        EXPECT_FALSE(can_connect(lab.guest1, "192.0.2.2", kOutsidePort));
        // The host still reaches the guest (the gateway forwarding a request): replies pass.
        UniqueFd in_guest1;
        lab.guest1.run([&] { in_guest1 = listen_on(kGuestPort); });
        EXPECT_EQ(sh("timeout 3 bash -c 'exec 3<>/dev/tcp/10.100.0.2/8080'").first, 0);
    });
}

TEST(FirewallTest, AllowInvokeAddsTheGatewayPortOnly) {
    in_private_netns([] {
        Lab lab;
        UniqueFd callback = listen_on(kCallbackPort), invoke = listen_on(kInvokePort),
                 other = listen_on(kOtherPort);
        Firewall firewall(Lab::config());
        auto g1 = firewall.attach("faas1", {.egress = false, .allow_invoke = true});
        auto g2 = firewall.attach("faas2", {});
        EXPECT_TRUE(can_connect(lab.guest1, "10.100.0.1", kInvokePort));
        EXPECT_TRUE(can_connect(lab.guest1, "10.100.0.1", kCallbackPort));
        EXPECT_FALSE(can_connect(lab.guest1, "10.100.0.1", kOtherPort));
        EXPECT_FALSE(can_connect(lab.guest2, "10.100.0.5", kInvokePort));
    });
}

TEST(FirewallTest, EgressIsNatedThroughTheEgressInterfaceOnlyForItsGuests) {
    in_private_netns([] {
        Lab lab;
        UniqueFd other = listen_on(kOtherPort);
        UniqueFd out_listener;
        lab.outside.run([&] { out_listener = listen_on(kOutsidePort); });
        Firewall firewall(Lab::config("wan0"));
        auto g1 = firewall.attach("faas1", {.egress = true, .allow_invoke = false});
        auto g2 = firewall.attach("faas2", {});
        // The outside has no route to 10.100/16: only the masquerade makes the reply come back.
        EXPECT_TRUE(can_connect(lab.guest1, "192.0.2.2", kOutsidePort));
        EXPECT_EQ(accept_peer(out_listener.get()), "192.0.2.1");
        EXPECT_FALSE(can_connect(lab.guest2, "192.0.2.2", kOutsidePort));
        // Egress is not a way onto the host or to other guests.
        EXPECT_FALSE(can_connect(lab.guest1, "192.0.2.1", kOtherPort));
        EXPECT_FALSE(can_connect(lab.guest1, "10.100.0.1", kOtherPort));
        UniqueFd in_guest2;
        lab.guest2.run([&] { in_guest2 = listen_on(kGuestPort); });
        EXPECT_FALSE(can_connect(lab.guest1, "10.100.0.6", kGuestPort));
    });
}

TEST(FirewallTest, AnInterfaceWithThePrefixButNoElementIsShutOut) {
    in_private_netns([] {
        Lab lab;
        UniqueFd callback = listen_on(kCallbackPort);
        Firewall firewall(Lab::config());
        EXPECT_FALSE(can_connect(lab.guest1, "10.100.0.1", kCallbackPort));
        auto g1 = firewall.attach("faas1", {});
        EXPECT_TRUE(can_connect(lab.guest1, "10.100.0.1", kCallbackPort));
        g1.reset();
        EXPECT_FALSE(can_connect(lab.guest1, "10.100.0.1", kCallbackPort));
    });
}

TEST(FirewallTest, OneElementPerAttachmentAndTheTableGoesWithTheFirewall) {
    in_private_netns([] {
        {
            Firewall firewall(Lab::config());
            ASSERT_TRUE(table_exists());
            auto a = firewall.attach("faas7", {});
            auto b = firewall.attach("faas8", {.egress = false, .allow_invoke = true});
            std::string elements = map_elements();
            EXPECT_NE(elements.find("\"faas7\" : jump callback_only"), std::string::npos)
                << elements;
            EXPECT_NE(elements.find("\"faas8\" : jump callback_invoke"), std::string::npos)
                << elements;
            EXPECT_EQ(firewall.attached(), 2u);
            a.reset();
            elements = map_elements();
            EXPECT_EQ(elements.find("faas7"), std::string::npos) << elements;
            EXPECT_NE(elements.find("faas8"), std::string::npos) << elements;
            EXPECT_EQ(firewall.attached(), 1u);
            // Attachments may outlive the firewall: nothing left to remove then.
            b.reset();
        }
        EXPECT_FALSE(table_exists());
    });
}

TEST(FirewallTest, ATableLeftByACrashedRunIsReplaced) {
    in_private_netns([] {
        must("nft add table inet unifaas");
        must("nft add map inet unifaas guests '{ type ifname : verdict; }'");
        must("nft add chain inet unifaas stale");
        must("nft add element inet unifaas guests '{ \"faas3\" : jump stale }'");
        Firewall firewall(Lab::config());
        std::string table = sh("nft list table inet unifaas").second;
        EXPECT_EQ(table.find("stale"), std::string::npos) << table;
        EXPECT_EQ(table.find("faas3"), std::string::npos) << table;
        EXPECT_NE(table.find("chain callback_only"), std::string::npos) << table;
    });
}

TEST(FirewallTest, RefusesEgressWithoutAnEgressInterfaceAndOddNames) {
    in_private_netns([] {
        Firewall firewall(Lab::config());
        EXPECT_THROW(firewall.attach("faas1", {.egress = true, .allow_invoke = false}),
                     FirewallError);
        EXPECT_THROW(firewall.attach("faas1\" } ; flush ruleset ; {", {}), FirewallError);
        EXPECT_EQ(firewall.attached(), 0u);
        EXPECT_THROW(Firewall(FirewallConfig{0, 0, "", {"faas"}, {}}), FirewallError);
    });
}

}  // namespace
}  // namespace unifaas::test
