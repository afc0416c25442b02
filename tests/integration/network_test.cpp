// Network and TapDevice against the real kernel. Every test runs its tap work on a thread of its
// own that first moves into a fresh network namespace (unshare(CLONE_NEWNET) is per thread, and
// threads created from it inherit the namespace); the namespace and whatever is left in it
// disappear when that thread ends. Nothing here touches the namespace the process started in.
#include <fcntl.h>
#include <linux/if_tun.h>
#include <net/if.h>
#include <poll.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <future>
#include <iostream>
#include <iterator>
#include <mutex>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "private_netns.h"

#include "net/network.h"
#include "net/tap_device.h"

namespace unifaas::test {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

double ms_since(Clock::time_point start) {
    return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

// Interfaces named <prefix><digits> in the calling thread's namespace.
std::set<std::string> taps_with_prefix(const std::string& prefix) {
    std::set<std::string> taps;
    for (const std::string& name : interface_names()) {
        bool digits = name.size() > prefix.size() &&
                      std::all_of(name.begin() + static_cast<long>(prefix.size()), name.end(),
                                  [](char c) { return c >= '0' && c <= '9'; });
        if (name.starts_with(prefix) && digits) {
            taps.insert(name);
        }
    }
    return taps;
}

// Runs a command (iproute2) in the calling thread's namespace: a forked child inherits it.
void run(const std::string& command) {
    int status = std::system(command.c_str());
    ASSERT_EQ(status, 0) << command;
}

// A command's standard output.
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

// A persistent tap nobody owns, like one a crashed daemon left behind.
void make_stray_tap(const std::string& name) {
    int fd = ::open("/dev/net/tun", O_RDWR | O_CLOEXEC);
    ASSERT_GE(fd, 0) << std::strerror(errno);
    ifreq ifr{};
    std::strncpy(ifr.ifr_name, name.c_str(), IFNAMSIZ - 1);
    ifr.ifr_flags = IFF_TAP | IFF_NO_PI;
    bool ok = ::ioctl(fd, TUNSETIFF, &ifr) == 0 && ::ioctl(fd, TUNSETPERSIST, 1) == 0;
    int error = errno;
    ::close(fd);
    ASSERT_TRUE(ok) << name << ": " << std::strerror(error);
}

// Attaches to the tap by name as a hypervisor would (QEMU -netdev tap,ifname=...), sends an ARP
// request from the guest's address for the host's and waits for the kernel's reply.
bool host_answers_arp(const NetworkLease& lease) {
    int fd = ::open("/dev/net/tun", O_RDWR | O_CLOEXEC);
    if (fd < 0) {
        ADD_FAILURE() << "open /dev/net/tun: " << std::strerror(errno);
        return false;
    }
    ifreq ifr{};
    std::strncpy(ifr.ifr_name, lease.tap().c_str(), IFNAMSIZ - 1);
    ifr.ifr_flags = IFF_TAP | IFF_NO_PI;
    if (::ioctl(fd, TUNSETIFF, &ifr) != 0) {
        ADD_FAILURE() << "attach to " << lease.tap() << ": " << std::strerror(errno);
        ::close(fd);
        return false;
    }
    unsigned mac[6];
    std::sscanf(lease.mac().c_str(), "%x:%x:%x:%x:%x:%x", &mac[0], &mac[1], &mac[2], &mac[3],
                &mac[4], &mac[5]);
    auto guest = *parse_ipv4(lease.guest_ip());
    auto host = *parse_ipv4(lease.host_ip());
    std::vector<unsigned char> frame(42, 0);
    std::fill_n(frame.begin(), 6, 0xff);                            // to: broadcast
    std::copy(mac, mac + 6, frame.begin() + 6);                     // from: the guest
    frame[12] = 0x08, frame[13] = 0x06;                             // ARP
    frame[14] = 0, frame[15] = 1, frame[16] = 0x08, frame[17] = 0;  // Ethernet, IPv4
    frame[18] = 6, frame[19] = 4, frame[20] = 0, frame[21] = 1;     // request
    std::copy(mac, mac + 6, frame.begin() + 22);
    for (int i = 0; i < 4; ++i) {
        frame[28 + i] = static_cast<unsigned char>(guest >> (24 - 8 * i));
        frame[38 + i] = static_cast<unsigned char>(host >> (24 - 8 * i));
    }
    // Like a guest, ask again every 100 ms: replies are dropped until the kernel's link watcher
    // has activated the qdisc after the carrier came on (attach), which can take up to 1 s.
    bool answered = false;
    auto start = Clock::now();
    auto next_request = start;
    unsigned char reply[2048];
    while (!answered && Clock::now() < start + 3s) {
        if (Clock::now() >= next_request) {
            EXPECT_EQ(::write(fd, frame.data(), frame.size()), static_cast<ssize_t>(frame.size()));
            next_request += 100ms;
        }
        pollfd p{fd, POLLIN, 0};
        if (::poll(&p, 1, 20) != 1) {
            continue;
        }
        ssize_t n = ::read(fd, reply, sizeof reply);
        answered = n >= 42 && reply[12] == 0x08 && reply[13] == 0x06 && reply[21] == 2 &&
                   std::equal(reply + 28, reply + 32, frame.begin() + 38);
    }
    if (answered && ms_since(start) > 50) {
        std::cout << "[ info     ] ARP answered after " << ms_since(start) << " ms on "
                  << lease.tap() << "\n";
    }
    ::close(fd);
    return answered;
}

std::optional<InterfaceAddress> ipv4_of(const std::string& interface) {
    for (const InterfaceAddress& address : interface_addresses()) {
        if (address.interface == interface) {
            return address;
        }
    }
    return std::nullopt;
}

// The lease's tap exists, is up, and carries the lease's host address as a /30.
void expect_ready_tap(const NetworkLease& lease) {
    ASSERT_TRUE(interface_exists(lease.tap())) << lease.tap();
    EXPECT_TRUE(is_tun_device(lease.tap()));
    EXPECT_TRUE(interface_flags(lease.tap()) & IFF_UP) << lease.tap();
    auto address = ipv4_of(lease.tap());
    ASSERT_TRUE(address) << lease.tap() << " has no IPv4 address";
    EXPECT_EQ(ipv4_to_string(address->address), lease.host_ip());
    EXPECT_EQ(address->network.prefix, 30u);
}

// One line of `ip -4 neigh show dev TAP`: "10.100.0.2 lladdr 02:fa:0a:64:00:02 PERMANENT".
struct Neighbour {
    std::string address;
    std::string mac;    // empty when the entry has none (INCOMPLETE, FAILED)
    std::string state;  // the last word: PERMANENT, REACHABLE, STALE, ...
    bool operator==(const Neighbour&) const = default;
};

std::ostream& operator<<(std::ostream& out, const Neighbour& n) {
    return out << n.address << " lladdr " << n.mac << " " << n.state;
}

// The IPv4 neighbour entries of `tap`, read back by iproute2 (independently of the code under
// test).
std::vector<Neighbour> neighbours_of(const std::string& tap) {
    std::vector<Neighbour> entries;
    std::istringstream lines(capture("ip -4 neigh show dev " + tap));
    std::string line;
    while (std::getline(lines, line)) {
        std::istringstream words(line);
        std::vector<std::string> w{std::istream_iterator<std::string>(words), {}};
        if (w.empty()) {
            continue;
        }
        Neighbour n{w.front(), "", w.back()};
        auto lladdr = std::find(w.begin(), w.end(), "lladdr");
        if (lladdr != w.end() && lladdr + 1 != w.end()) {
            n.mac = *(lladdr + 1);
        }
        entries.push_back(n);
    }
    return entries;
}

// The lease's tap has exactly one IPv4 neighbour entry: its guest, permanent, with its MAC.
void expect_guest_neighbour(const NetworkLease& lease) {
    EXPECT_EQ(neighbours_of(lease.tap()),
              (std::vector<Neighbour>{{lease.guest_ip(), lease.mac(), "PERMANENT"}}))
        << lease.tap();
}

// Entries for `address` on any interface of the namespace.
std::string neighbour_entries_for(const std::string& address) {
    return capture("ip -4 neigh show to " + address);
}

// Test helper only: the daemon never waits like this (the pool fills on a condition variable).
bool eventually(const std::function<bool()>& condition) {
    auto deadline = Clock::now() + 5s;
    while (!condition()) {
        if (Clock::now() > deadline) {
            return false;
        }
        std::this_thread::sleep_for(2ms);
    }
    return true;
}

NetworkConfig config(const std::string& subnet, unsigned prealloc,
                     const std::string& prefix = "faas") {
    NetworkConfig config;
    config.subnet = Ipv4Net::parse(subnet);
    config.tap_prefix = prefix;
    config.prealloc = prealloc;
    return config;
}

TEST(NetworkTest, LeaseGivesAnAddressedTapThatIsUp) {
    in_private_netns([] {
        {
            Network net(config("10.100.0.0/16", 2));
            ASSERT_TRUE(eventually([&] { return net.stats().idle == 2; }));
            auto lease = net.lease();  // the lowest idle block
            EXPECT_EQ(lease->tap(), "faas0");
            EXPECT_EQ(lease->host_ip(), "10.100.0.1");
            EXPECT_EQ(lease->guest_ip(), "10.100.0.2");
            EXPECT_EQ(lease->netmask(), "255.255.255.252");
            EXPECT_EQ(lease->mac(), "02:fa:0a:64:00:02");
            expect_ready_tap(*lease);
            EXPECT_NE(
                capture("ip -4 -o addr show dev faas0").find("inet 10.100.0.1/30 brd 10.100.0.3 "),
                std::string::npos);
            expect_guest_neighbour(*lease);
            EXPECT_TRUE(host_answers_arp(*lease));  // usable by a hypervisor attaching by name
            // Carrier on and off (attach, detach) and the guest's ARP leave the entry as it was.
            expect_guest_neighbour(*lease);
            EXPECT_EQ(net.stats().leased, 1u);
            EXPECT_EQ(net.stats().capacity, 16384u);

            auto second = net.lease();
            EXPECT_NE(second->tap(), lease->tap());
            EXPECT_NE(second->guest_ip(), lease->guest_ip());
            expect_ready_tap(*second);
            expect_guest_neighbour(*second);

            // The pool tops itself up to `prealloc` idle taps after leases took from it.
            EXPECT_TRUE(eventually([&] { return net.stats().idle == 2; }));
            EXPECT_EQ(taps_with_prefix("faas").size(), 4u);

            lease.reset();
            EXPECT_EQ(net.stats().leased, 1u);
        }
        EXPECT_EQ(taps_with_prefix("faas"), std::set<std::string>{});
    });
}

TEST(NetworkTest, ReturnedTapIsResetAndReused) {
    in_private_netns([] {
        {
            Network net(config("10.100.0.0/16", 1));
            auto lease = net.lease();
            EXPECT_TRUE(eventually([&] { return net.stats().idle == 1; }));
            EXPECT_EQ(net.cleanup_taps(), 1u);  // empties the pool: the lease comes back to it
            std::string tap = lease->tap();
            std::string guest = lease->guest_ip();
            // What the previous guest may leave: its entry with another MAC, another address.
            run("ip neigh replace " + guest + " lladdr 02:00:00:00:00:01 dev " + tap +
                " nud permanent");
            run("ip neigh replace 10.100.0.1 lladdr 02:00:00:00:00:02 dev " + tap +
                " nud reachable");
            EXPECT_EQ(neighbours_of(tap).size(), 2u) << capture("ip -4 neigh show dev " + tap);

            lease.reset();
            EXPECT_EQ(net.stats().idle, 1u);
            auto again = net.lease();
            EXPECT_EQ(again->tap(), tap);
            expect_ready_tap(*again);
            // The old guest's entries are gone; the guest's own is back, right MAC, permanent.
            expect_guest_neighbour(*again);
            EXPECT_TRUE(host_answers_arp(*again));
            expect_guest_neighbour(*again);
        }
        EXPECT_EQ(taps_with_prefix("faas"), std::set<std::string>{});
        EXPECT_EQ(neighbour_entries_for("10.100.0.2"), "");
        EXPECT_EQ(capture("ip -4 neigh show"), "");
    });
}

TEST(NetworkTest, EveryLeaseHasItsGuestsPermanentNeighbourEntry) {
    in_private_netns([] {
        {
            Network net(config("10.100.0.0/24", 2));
            ASSERT_TRUE(eventually([&] { return net.stats().idle == 2; }));
            // Pre-created taps carry the entry already: nothing to do at lease time.
            EXPECT_EQ(neighbours_of("faas1"),
                      (std::vector<Neighbour>{{"10.100.0.6", "02:fa:0a:64:00:06", "PERMANENT"}}));
            auto pooled = net.lease();
            expect_guest_neighbour(*pooled);
            EXPECT_EQ(pooled->mac(), "02:fa:0a:64:00:02");

            // Lease, give back (reset: down, up), lease again, several times: the tap comes back
            // from the pool with the same one entry every time.
            std::string tap = pooled->tap();
            for (int round = 0; round < 3; ++round) {
                ASSERT_TRUE(eventually([&] { return net.stats().idle == 2; }));
                EXPECT_EQ(net.cleanup_taps(), 2u);  // room in the pool: the lease goes back to it
                pooled.reset();
                ASSERT_EQ(net.stats().idle, 1u);
                pooled = net.lease();
                ASSERT_EQ(pooled->tap(), tap);
                expect_guest_neighbour(*pooled);
            }

            // Other leases on other taps: each tap only has its own guest.
            auto a = net.lease();
            auto b = net.lease();
            auto c = net.lease();
            for (const auto* lease : {a.get(), b.get(), c.get()}) {
                expect_guest_neighbour(*lease);
            }
            std::set<std::string> macs{pooled->mac(), a->mac(), b->mac(), c->mac()};
            EXPECT_EQ(macs.size(), 4u);
        }
        EXPECT_EQ(taps_with_prefix("faas"), std::set<std::string>{});
        EXPECT_EQ(capture("ip -4 neigh show"), "");  // nothing left with the taps

        // A tap made at lease time (no pool) has it too, and it goes with the tap.
        Network net(config("10.100.0.0/24", 0));
        auto made = net.lease();
        expect_guest_neighbour(*made);
        std::string guest = made->guest_ip();
        EXPECT_NE(neighbour_entries_for(guest), "");
        made.reset();
        EXPECT_EQ(taps_with_prefix("faas"), std::set<std::string>{});
        EXPECT_EQ(neighbour_entries_for(guest), "");
    });
}

TEST(NetworkTest, WithoutPreallocLeaseCreatesAndReturnDeletes) {
    in_private_netns([] {
        Network net(config("10.100.0.0/24", 0));
        EXPECT_EQ(net.stats().idle, 0u);
        auto lease = net.lease();
        expect_ready_tap(*lease);
        EXPECT_EQ(taps_with_prefix("faas"), std::set<std::string>{"faas0"});
        lease.reset();
        EXPECT_EQ(taps_with_prefix("faas"), std::set<std::string>{});
        EXPECT_EQ(net.stats().leased, 0u);
        EXPECT_EQ(net.stats().idle, 0u);
    });
}

TEST(NetworkTest, TinySubnetExhaustsWithAClearError) {
    in_private_netns([] {
        {
            Network net(config("10.100.0.0/29", 4));
            auto first = net.lease();
            auto second = net.lease();
            EXPECT_EQ((std::set<std::string>{first->host_ip(), second->host_ip()}),
                      (std::set<std::string>{"10.100.0.1", "10.100.0.5"}));
            try {
                net.lease();
                ADD_FAILURE() << "a third lease from a /29";
            } catch (const NetworkExhausted& e) {
                EXPECT_STREQ(e.what(), "subnet 10.100.0.0/29 exhausted: all 2 /30 blocks in use");
            }
            std::string freed = first->tap();
            first.reset();
            auto third = net.lease();
            EXPECT_EQ(third->tap(), freed);
            expect_ready_tap(*third);
            EXPECT_THROW(net.lease(), NetworkExhausted);
        }
        EXPECT_EQ(taps_with_prefix("faas"), std::set<std::string>{});
    });
}

TEST(NetworkTest, DestructorRemovesEveryTapAndLateLeasesCleanUp) {
    in_private_netns([] {
        std::unique_ptr<NetworkLease> survivor;
        {
            Network net(config("10.100.0.0/24", 3));
            auto a = net.lease();
            auto b = net.lease();
            survivor = net.lease();
            EXPECT_TRUE(eventually([&] { return net.stats().idle == 3; }));
            EXPECT_EQ(taps_with_prefix("faas").size(), 6u);
        }
        // The Network is gone; the lease still held keeps its tap until it ends.
        EXPECT_EQ(taps_with_prefix("faas"), std::set<std::string>{survivor->tap()});
        expect_ready_tap(*survivor);
        survivor.reset();
        EXPECT_EQ(taps_with_prefix("faas"), std::set<std::string>{});
    });
}

TEST(NetworkTest, StaleTapsAreRemovedAtConstructionOtherInterfacesKept) {
    in_private_netns([] {
        make_stray_tap("faas7");
        make_stray_tap("faas0");                             // would collide with block 0
        make_stray_tap("faasx");                             // not <prefix><digits>: not ours
        run("ip link add faas9 type veth peer name peer9");  // ours by name, not a tap: kept
        {
            Network net(config("10.100.0.0/16", 1));
            ASSERT_TRUE(eventually([&] { return net.stats().idle == 1; }));
            auto remaining = taps_with_prefix("faas");
            EXPECT_FALSE(remaining.contains("faas7"));
            EXPECT_TRUE(remaining.contains("faas9"));
            EXPECT_TRUE(interface_exists("faasx"));
            auto lease = net.lease();
            EXPECT_EQ(lease->tap(), "faas0");
            expect_ready_tap(*lease);
        }
        EXPECT_EQ(taps_with_prefix("faas"), std::set<std::string>{"faas9"});
        EXPECT_TRUE(interface_exists("faasx"));
    });
}

TEST(NetworkTest, AStaleTapAppearingLaterIsTakenBack) {
    in_private_netns([] {
        {
            Network net(config("10.100.0.0/16", 0));
            make_stray_tap("faas0");  // e.g. made by hand after the startup sweep
            auto lease = net.lease();
            EXPECT_EQ(lease->tap(), "faas0");
            expect_ready_tap(*lease);
        }
        EXPECT_EQ(taps_with_prefix("faas"), std::set<std::string>{});
    });
}

TEST(NetworkTest, RefusesASubnetOverlappingAConfiguredAddress) {
    in_private_netns([] {
        run("ip link add probe0 type veth peer name probe1");
        run("ip addr add 10.100.3.4/24 dev probe0");
        try {
            Network net(config("10.100.0.0/16", 2));
            ADD_FAILURE() << "started on a subnet in use";
        } catch (const std::runtime_error& e) {
            EXPECT_STREQ(e.what(),
                         "subnet 10.100.0.0/16 overlaps address 10.100.3.4/24 on interface "
                         "probe0; choose a free range with the `subnet` key of unifaas.toml");
        }
        // An address covering the subnet from outside overlaps too.
        run("ip addr add 172.16.0.1/12 dev probe0");
        EXPECT_THROW(Network(config("172.20.0.0/16", 0)), std::runtime_error);
        EXPECT_EQ(taps_with_prefix("faas"), std::set<std::string>{});
        // A neighbouring range is fine.
        Network net(config("10.101.0.0/16", 0));
        expect_ready_tap(*net.lease());
    });
}

TEST(NetworkTest, CleanupRemovesUnownedTapsAndKeepsLeasedOnes) {
    in_private_netns([] {
        {
            Network net(config("10.100.0.0/16", 2));
            auto held = net.lease();
            EXPECT_TRUE(eventually([&] { return net.stats().idle == 2; }));
            make_stray_tap("faas50");
            make_stray_tap("faas12345");
            EXPECT_EQ(net.cleanup_taps(), 4u);  // 2 idle + 2 strays
            EXPECT_EQ(taps_with_prefix("faas"), std::set<std::string>{held->tap()});
            expect_ready_tap(*held);
            EXPECT_EQ(net.stats().idle, 0u);
            EXPECT_EQ(net.stats().leased, 1u);
            EXPECT_EQ(net.cleanup_taps(), 0u);

            // The pool comes back with the next lease.
            auto next = net.lease();
            expect_ready_tap(*next);
            EXPECT_TRUE(eventually([&] { return net.stats().idle == 2; }));
        }
        EXPECT_EQ(taps_with_prefix("faas"), std::set<std::string>{});
    });
}

TEST(NetworkTest, ManyThreadsLeaseAndReturn) {
    in_private_netns([] {
        {
            Network net(config("10.100.0.0/28", 2));  // 4 blocks for 8 threads
            std::mutex mu;
            std::set<std::string> held;
            std::atomic<unsigned> leases{0}, exhausted{0}, duplicates{0};
            std::vector<std::thread> threads;
            for (int t = 0; t < 8; ++t) {
                threads.emplace_back([&] {  // inherits the private namespace
                    for (int i = 0; i < 25; ++i) {
                        try {
                            auto lease = net.lease();
                            {
                                std::lock_guard lock(mu);
                                duplicates += !held.insert(lease->tap()).second;
                            }
                            ++leases;
                            std::this_thread::sleep_for(100us);
                            std::lock_guard lock(mu);
                            held.erase(lease->tap());
                        } catch (const NetworkExhausted&) {
                            ++exhausted;
                        }
                    }
                });
            }
            for (auto& thread : threads) {
                thread.join();
            }
            EXPECT_EQ(duplicates, 0u);
            EXPECT_EQ(leases + exhausted, 200u);
            EXPECT_GT(leases, 0u);
            EXPECT_EQ(net.stats().leased, 0u);
            std::cout << "[ info     ] 8 threads: " << leases << " leases, " << exhausted
                      << " exhausted\n";
        }
        EXPECT_EQ(taps_with_prefix("faas"), std::set<std::string>{});
    });
}

TEST(NetworkTest, TapsAreNeverVisibleOutsideTheTestNamespace) {
    auto outside_before = taps_with_prefix("faas");
    std::promise<std::vector<std::string>> made;
    std::promise<void> checked;
    std::thread inside([&] {
        bool sent = false;
        in_private_netns([&] {
            Network net(config("10.100.0.0/16", 2));
            auto a = net.lease();
            auto b = net.lease();
            made.set_value({a->tap(), b->tap()});
            sent = true;
            checked.get_future().wait();
        });
        if (!sent) {
            made.set_value({});  // the failure is already recorded
        }
    });
    auto names = made.get_future().get();
    auto outside = interface_names();
    for (const std::string& name : names) {
        EXPECT_EQ(std::count(outside.begin(), outside.end(), name), 0) << name;
    }
    EXPECT_EQ(taps_with_prefix("faas"), outside_before);
    checked.set_value();
    inside.join();
}

TEST(TapDeviceTest, CreateAddressUpAndDeleteWithTimings) {
    in_private_netns([] {
        constexpr int kTaps = 20;
        std::vector<std::unique_ptr<TapDevice>> taps;
        auto start = Clock::now();
        for (int i = 0; i < kTaps; ++i) {
            Block30 block{0x0a640000u + 4u * static_cast<unsigned>(i)};
            taps.push_back(std::make_unique<TapDevice>("tdt" + std::to_string(i), block.host(),
                                                       Block30::netmask));
        }
        double create_ms = ms_since(start) / kTaps;
        EXPECT_EQ(taps_with_prefix("tdt").size(), static_cast<std::size_t>(kTaps));
        auto address = ipv4_of("tdt3");
        ASSERT_TRUE(address);
        EXPECT_EQ(address->network.to_string(), "10.100.0.12/30");
        EXPECT_TRUE(interface_flags("tdt3") & IFF_UP);

        start = Clock::now();
        taps.front()->reset();
        double reset_ms = ms_since(start);
        EXPECT_TRUE(interface_flags("tdt0") & IFF_UP);

        // The same with the guest's permanent neighbour entry (what Network makes).
        std::vector<std::unique_ptr<TapDevice>> guest_taps;
        start = Clock::now();
        for (int i = 0; i < kTaps; ++i) {
            Block30 block{0x0a650000u + 4u * static_cast<unsigned>(i)};
            guest_taps.push_back(std::make_unique<TapDevice>(
                "tdg" + std::to_string(i), block.host(), Block30::netmask,
                TapGuest{block.guest(), guest_mac(block.guest())}));
        }
        double create_guest_ms = ms_since(start) / kTaps;
        EXPECT_EQ(neighbours_of("tdg3"),
                  (std::vector<Neighbour>{{"10.101.0.14", "02:fa:0a:65:00:0e", "PERMANENT"}}));
        EXPECT_EQ(neighbours_of("tdt3"), std::vector<Neighbour>{});
        run("ip neigh replace 10.101.0.2 lladdr 02:00:00:00:00:01 dev tdg0 nud permanent");
        start = Clock::now();
        for (auto& tap : guest_taps) {
            tap->reset();
        }
        double reset_guest_ms = ms_since(start) / kTaps;
        EXPECT_EQ(neighbours_of("tdg0"),
                  (std::vector<Neighbour>{{"10.101.0.2", "02:fa:0a:65:00:02", "PERMANENT"}}));
        guest_taps.clear();
        EXPECT_EQ(capture("ip -4 neigh show to 10.101.0.0/16"), "");
        std::cout << "[ timing   ] tap with guest neighbour: create+address+up+neighbour "
                  << create_guest_ms << " ms, reset " << reset_guest_ms << " ms (mean of " << kTaps
                  << ")\n";

        // Creating an existing name fails with EEXIST and leaves the existing tap alone.
        try {
            TapDevice duplicate("tdt3", 0x0a640101, Block30::netmask);
            ADD_FAILURE() << "created tdt3 twice";
        } catch (const std::system_error& e) {
            EXPECT_EQ(e.code().value(), EEXIST);
            EXPECT_TRUE(std::string(e.what()).starts_with("tap tdt3: create (TUNSETIFF)"))
                << e.what();
        }
        EXPECT_TRUE(interface_exists("tdt3"));

        start = Clock::now();
        taps.clear();
        double delete_ms = ms_since(start) / kTaps;
        EXPECT_EQ(taps_with_prefix("tdt"), std::set<std::string>{});
        std::cout << "[ timing   ] tap create+address+up " << create_ms << " ms, reset " << reset_ms
                  << " ms, delete " << delete_ms << " ms (mean of " << kTaps << ")\n";
    });
}

TEST(TapDeviceTest, ErrorsNameTheTapAndTheStep) {
    in_private_netns([] {
        try {
            TapDevice tap("much-too-long-name", 0x0a640001, Block30::netmask);
            ADD_FAILURE() << "created a tap with a 18-character name";
        } catch (const std::system_error& e) {
            EXPECT_EQ(e.code().value(), EINVAL);
            EXPECT_TRUE(std::string(e.what()).starts_with("tap much-too-long-name: ")) << e.what();
        }
        try {
            TapDevice tap("tdm0", 0x0a640001, Block30::netmask,
                          TapGuest{0x0a640002, "02:fa:0a:64"});
            ADD_FAILURE() << "created a tap with a 4-byte guest MAC";
        } catch (const std::system_error& e) {
            EXPECT_EQ(e.code().value(), EINVAL);
            EXPECT_TRUE(std::string(e.what()).starts_with("tap tdm0: guest MAC \"02:fa:0a:64\""))
                << e.what();
        }
        EXPECT_FALSE(interface_exists("tdm0"));
        try {
            delete_interface("nosuch0");
            ADD_FAILURE() << "deleted a missing interface";
        } catch (const std::system_error& e) {
            EXPECT_EQ(e.code().value(), ENODEV);
            EXPECT_TRUE(std::string(e.what()).starts_with("interface nosuch0: delete")) << e.what();
        }
        EXPECT_EQ(remove_taps_with_prefix("faas"), 0u);
    });
}

TEST(NetworkTest, WarmLeaseIsFasterThanCold) {
    in_private_netns([] {
        Network net(config("10.100.0.0/16", 4));
        ASSERT_TRUE(eventually([&] { return net.stats().idle == 4; }));
        auto start = Clock::now();
        auto warm = net.lease();
        double warm_ms = ms_since(start);

        Network cold_net(config("10.101.0.0/16", 0, "cold"));
        start = Clock::now();
        auto cold = cold_net.lease();
        double cold_ms = ms_since(start);
        expect_ready_tap(*warm);
        expect_ready_tap(*cold);
        std::cout << "[ timing   ] lease from the pool " << warm_ms << " ms, without pool "
                  << cold_ms << " ms\n";
    });
}

}  // namespace
}  // namespace unifaas::test
