#include "net/network.h"

#include <cerrno>
#include <condition_variable>
#include <map>
#include <mutex>
#include <set>
#include <system_error>

#include <spdlog/spdlog.h>

#include "net/firewall.h"
#include "net/tap_device.h"
#include "net/veth_namespace.h"

namespace unifaas {

namespace net_detail {

// The state a Network and its leases share. One mutex; tap I/O runs without it, except for
// deleting stray taps in cleanup_taps() (rare, and must not race with taps being made).
//
// Every allocated block is in exactly one of: idle_ (tap ready in the pool), leased_ (held by a
// NetworkLease) or busy_ (a thread is creating, resetting or deleting its tap right now).
class NetworkCore : public std::enable_shared_from_this<NetworkCore> {
  public:
    explicit NetworkCore(NetworkConfig config)
        : config_(std::move(config)), blocks_(config_.subnet) {}

    const NetworkConfig& config() const { return config_; }

    std::unique_ptr<NetworkLease> lease();
    void give_back(unsigned block, std::unique_ptr<TapDevice> device);
    std::unique_ptr<NetnsLease> lease_netns();
    void give_back_netns(unsigned block, std::unique_ptr<VethNamespace> device);
    unsigned cleanup_taps();
    Network::Stats stats() const;
    void fill_pool();  // the background thread
    void close();      // stops fill_pool() and deletes the idle taps

  private:
    std::unique_ptr<TapDevice> make_tap(unsigned block);
    std::unique_ptr<VethNamespace> make_netns(unsigned block);
    std::unique_ptr<NetnsLease> make_netns_lease(unsigned block,
                                                 std::unique_ptr<VethNamespace> device);
    bool pool_wants_netns() const;
    // Allocates a block for the caller to make a device on, waiting while one is busy; throws
    // NetworkExhausted.
    unsigned allocate_block(std::unique_lock<std::mutex>& lock);
    std::unique_ptr<NetworkLease> make_lease(unsigned block, std::unique_ptr<TapDevice> device);
    bool pool_wants_tap() const;
    // The caller finished I/O on a busy block: wake lease() waiters and the filler.
    void unbusy(unsigned block);

    const NetworkConfig config_;
    mutable std::mutex mu_;
    std::condition_variable changed_;  // any of the sets below changed, or closed_
    SubnetAllocator blocks_;
    std::map<unsigned, std::unique_ptr<TapDevice>> idle_;  // lowest block leased first
    // Container namespaces ready for lease_netns() (made only once one was asked for).
    std::map<unsigned, std::unique_ptr<VethNamespace>> idle_netns_;
    bool netns_wanted_ = false;
    std::set<unsigned> leased_;
    std::set<unsigned> busy_;
    unsigned filling_ = 0;      // busy_ blocks the filler is creating
    bool fill_enabled_ = true;  // off after a failed creation or cleanup, on at the next lease
    bool closed_ = false;
};

std::unique_ptr<TapDevice> NetworkCore::make_tap(unsigned block) {
    std::string name = tap_name(config_.tap_prefix, block);
    Block30 addresses = blocks_.block(block);
    // The guest's permanent neighbour entry: the host never ARPs for it. Without it a SYN-ACK to
    // a booting guest could wait up to 1 s, e.g. when a connection to the previous guest at the
    // same address retransmitted: the host ARPed before the new guest was up, the guest learnt
    // the host's MAC from that request and never asked itself, and the host's entry stayed
    // incomplete until its next probe. It goes in while the tap is made (mostly by the pool
    // filler, off the lease path): a block's tap always serves the same guest address and MAC,
    // and reset() puts the entry back after its down/up.
    TapGuest guest{addresses.guest(), guest_mac(addresses.guest())};
    try {
        return std::make_unique<TapDevice>(name, addresses.host(), Block30::netmask, guest);
    } catch (const std::system_error& e) {
        // A tap named like ours that this Network did not make (created after the startup
        // sweep): <prefix>N names are ours by convention, so take it back, once.
        if (e.code().value() != EEXIST || !is_tun_device(name)) {
            throw;
        }
        spdlog::warn("net: deleting stale tap {} to reuse its block", name);
        try {
            delete_interface(name);
        } catch (const std::system_error& gone) {
            if (gone.code().value() != ENODEV) {
                throw;
            }
        }
        return std::make_unique<TapDevice>(name, addresses.host(), Block30::netmask, guest);
    }
}

std::unique_ptr<NetworkLease> NetworkCore::make_lease(unsigned block,
                                                      std::unique_ptr<TapDevice> device) {
    // Called with mu_ held; the constructor is private to NetworkLease.
    leased_.insert(block);
    fill_enabled_ = true;
    changed_.notify_all();
    return std::unique_ptr<NetworkLease>(
        new NetworkLease(shared_from_this(), std::move(device), block, blocks_.block(block)));
}

std::unique_ptr<NetworkLease> NetworkCore::lease() {
    std::unique_lock lock(mu_);
    std::optional<unsigned> block;
    for (;;) {
        if (closed_) {
            throw std::logic_error("Network::lease() after the Network was destroyed");
        }
        if (!idle_.empty()) {
            auto node = idle_.extract(idle_.begin());
            return make_lease(node.key(), std::move(node.mapped()));
        }
        if ((block = blocks_.allocate())) {
            break;
        }
        if (busy_.empty()) {
            throw NetworkExhausted("subnet " + config_.subnet.to_string() + " exhausted: all " +
                                   std::to_string(blocks_.capacity()) + " /30 blocks in use");
        }
        // A tap being made or given back will be free or idle in a moment.
        changed_.wait(lock);
    }
    busy_.insert(*block);
    lock.unlock();
    std::unique_ptr<TapDevice> device;
    try {
        device = make_tap(*block);
    } catch (...) {
        lock.lock();
        blocks_.release(*block);
        unbusy(*block);
        throw;
    }
    lock.lock();
    busy_.erase(*block);
    return make_lease(*block, std::move(device));
}

std::unique_ptr<VethNamespace> NetworkCore::make_netns(unsigned block) {
    if (config_.netns_dir.empty()) {
        throw std::logic_error("container namespaces need NetworkConfig::netns_dir");
    }
    return std::make_unique<VethNamespace>(config_.netns_dir, veth_name(config_.tap_prefix, block),
                                           blocks_.block(block));
}

std::unique_ptr<NetnsLease> NetworkCore::make_netns_lease(unsigned block,
                                                          std::unique_ptr<VethNamespace> device) {
    // Called with mu_ held.
    leased_.insert(block);
    netns_wanted_ = true;
    fill_enabled_ = true;
    changed_.notify_all();
    return std::unique_ptr<NetnsLease>(
        new NetnsLease(shared_from_this(), std::move(device), block, blocks_.block(block)));
}

unsigned NetworkCore::allocate_block(std::unique_lock<std::mutex>& lock) {
    for (;;) {
        if (closed_) {
            throw std::logic_error("Network used after it was destroyed");
        }
        if (auto block = blocks_.allocate()) {
            return *block;
        }
        if (busy_.empty()) {
            throw NetworkExhausted("subnet " + config_.subnet.to_string() + " exhausted: all " +
                                   std::to_string(blocks_.capacity()) + " /30 blocks in use");
        }
        changed_.wait(lock);
    }
}

std::unique_ptr<NetnsLease> NetworkCore::lease_netns() {
    std::unique_lock lock(mu_);
    if (!idle_netns_.empty()) {
        auto node = idle_netns_.extract(idle_netns_.begin());
        return make_netns_lease(node.key(), std::move(node.mapped()));
    }
    netns_wanted_ = true;
    unsigned block = allocate_block(lock);
    busy_.insert(block);
    lock.unlock();
    std::unique_ptr<VethNamespace> device;
    try {
        device = make_netns(block);
    } catch (...) {
        lock.lock();
        blocks_.release(block);
        unbusy(block);
        throw;
    }
    lock.lock();
    busy_.erase(block);
    return make_netns_lease(block, std::move(device));
}

// A namespace whose container is gone goes back to the pool while it has room: making and
// destroying a network namespace costs the kernel tens of milliseconds (and its locks, which
// the next cold start needs). The block, addresses and MACs stay the same, so no neighbour entry
// goes stale; the container's processes and sockets went with its pid namespace.
void NetworkCore::give_back_netns(unsigned block, std::unique_ptr<VethNamespace> device) {
    std::unique_lock lock(mu_);
    leased_.erase(block);
    // Up to twice the pool's size: the filler tops the pool up while a lease is out, so in a
    // steady stream of single-use instances a returned namespace would otherwise be destroyed
    // each time while the filler makes a new one.
    if (!closed_ && idle_netns_.size() < 2 * config_.prealloc) {
        idle_netns_.emplace(block, std::move(device));
        changed_.notify_all();
        return;
    }
    busy_.insert(block);
    lock.unlock();
    device.reset();
    lock.lock();
    blocks_.release(block);
    unbusy(block);
}

void NetworkCore::give_back(unsigned block, std::unique_ptr<TapDevice> device) {
    std::unique_lock lock(mu_);
    leased_.erase(block);
    busy_.insert(block);
    bool keep = !closed_ && idle_.size() + filling_ < config_.prealloc;
    lock.unlock();
    if (keep) {
        try {
            device->reset();
        } catch (const std::exception& e) {
            spdlog::warn("net: deleting tap {} instead of reusing it: {}", device->name(),
                         e.what());
            keep = false;
        }
    }
    if (!keep) {
        device.reset();  // deletes the tap before its block (and name) can be handed out again
    }
    lock.lock();
    if (device && !closed_) {
        idle_.emplace(block, std::move(device));
    } else {
        blocks_.release(block);
    }
    unbusy(block);
    lock.unlock();
    // Closed while resetting: nobody will empty the pool any more.
    device.reset();
}

void NetworkCore::unbusy(unsigned block) {
    busy_.erase(block);
    changed_.notify_all();
}

bool NetworkCore::pool_wants_netns() const {
    return fill_enabled_ && netns_wanted_ && idle_netns_.size() < config_.prealloc &&
           blocks_.in_use() < blocks_.capacity();
}

bool NetworkCore::pool_wants_tap() const {
    return fill_enabled_ && idle_.size() + filling_ < config_.prealloc &&
           blocks_.in_use() < blocks_.capacity();
}

void NetworkCore::fill_pool() {
    std::unique_lock lock(mu_);
    for (;;) {
        changed_.wait(lock, [&] { return closed_ || pool_wants_tap() || pool_wants_netns(); });
        if (closed_) {
            return;
        }
        bool tap = pool_wants_tap();
        unsigned block = *blocks_.allocate();
        busy_.insert(block);
        ++filling_;
        lock.unlock();
        std::unique_ptr<TapDevice> device;
        std::unique_ptr<VethNamespace> netns;
        std::string error;
        try {
            if (tap) {
                device = make_tap(block);
            } else {
                netns = make_netns(block);
            }
        } catch (const std::exception& e) {
            error = e.what();
        }
        lock.lock();
        --filling_;
        if (device) {
            idle_.emplace(block, std::move(device));
        } else if (netns) {
            idle_netns_.emplace(block, std::move(netns));
        } else {
            // Not again until the next lease, which then reports the problem to its caller.
            spdlog::warn("net: cannot pre-create a {}: {}", tap ? "tap" : "container namespace",
                         error);
            blocks_.release(block);
            fill_enabled_ = false;
        }
        unbusy(block);
    }
}

unsigned NetworkCore::cleanup_taps() {
    // The idle taps: deleted without the lock (about 20 ms each), their blocks busy meanwhile.
    std::map<unsigned, std::unique_ptr<TapDevice>> idle;
    std::map<unsigned, std::unique_ptr<VethNamespace>> idle_netns;
    std::unique_lock lock(mu_);
    idle.swap(idle_);
    idle_netns.swap(idle_netns_);
    for (const auto& [block, device] : idle) {
        busy_.insert(block);
    }
    for (const auto& [block, device] : idle_netns) {
        busy_.insert(block);
    }
    fill_enabled_ = false;
    lock.unlock();
    auto removed = static_cast<unsigned>(idle.size() + idle_netns.size());
    auto release = [&](unsigned block) {
        lock.lock();
        blocks_.release(block);
        unbusy(block);
        lock.unlock();
    };
    for (auto& [block, device] : idle) {
        device.reset();
        release(block);
    }
    for (auto& [block, device] : idle_netns) {
        device.reset();
        release(block);
    }
    // Strays (normally none) with the lock held: no block can be allocated and its tap created
    // between computing what to keep and deleting the rest.
    lock.lock();
    std::set<std::string> keep;
    for (const std::set<unsigned>* blocks : {&leased_, &busy_}) {
        for (unsigned block : *blocks) {
            keep.insert(tap_name(config_.tap_prefix, block));
        }
    }
    for (const auto& [block, device] : idle_) {  // a lease returned in the meantime
        keep.insert(device->name());
    }
    removed += remove_taps_with_prefix(config_.tap_prefix, keep);
    if (!config_.netns_dir.empty()) {
        std::set<std::string> keep_veths;
        for (const std::set<unsigned>* blocks : {&leased_, &busy_}) {
            for (unsigned block : *blocks) {
                keep_veths.insert(veth_name(config_.tap_prefix, block));
            }
        }
        for (const auto& [block, device] : idle_netns_) {
            keep_veths.insert(device->host_name());
        }
        removed += remove_veth_namespaces(config_.tap_prefix, config_.netns_dir, keep_veths);
    }
    return removed;
}

Network::Stats NetworkCore::stats() const {
    std::lock_guard lock(mu_);
    return {static_cast<unsigned>(leased_.size()), static_cast<unsigned>(idle_.size()),
            blocks_.capacity()};
}

void NetworkCore::close() {
    std::map<unsigned, std::unique_ptr<TapDevice>> idle;
    std::map<unsigned, std::unique_ptr<VethNamespace>> idle_netns;
    {
        std::unique_lock lock(mu_);
        closed_ = true;
        changed_.notify_all();
        // Wait for taps being made or reset (by lease() or give_back() on other threads).
        changed_.wait(lock, [&] { return busy_.empty(); });
        idle.swap(idle_);
        idle_netns.swap(idle_netns_);
    }
    idle.clear();
    idle_netns.clear();  // deletes the taps; their blocks are never handed out again
}

}  // namespace net_detail

// --- NetworkLease ---

NetworkLease::NetworkLease(std::shared_ptr<net_detail::NetworkCore> core,
                           std::unique_ptr<TapDevice> device, unsigned block, Block30 addresses)
    : core_(std::move(core)),
      device_(std::move(device)),
      tap_(device_->name()),
      block_(block),
      addresses_(addresses) {}

NetworkLease::~NetworkLease() {
    rules_.reset();
    if (!mac_override_.empty()) {
        try {
            device_->set_guest_mac(guest_mac(addresses_.guest()));
        } catch (const std::exception& e) {
            spdlog::warn("net: {}", e.what());
        }
    }
    core_->give_back(block_, std::move(device_));
}

void NetworkLease::hold(std::unique_ptr<FirewallAttachment> rules) {
    rules_ = std::move(rules);
}

std::string NetworkLease::host_ip() const {
    return ipv4_to_string(addresses_.host());
}
std::string NetworkLease::guest_ip() const {
    return ipv4_to_string(addresses_.guest());
}
std::string NetworkLease::netmask() const {
    return ipv4_to_string(Block30::netmask);
}
std::string NetworkLease::mac() const {
    return mac_override_.empty() ? guest_mac(addresses_.guest()) : mac_override_;
}

void NetworkLease::use_guest_mac(const std::string& mac) {
    device_->set_guest_mac(mac);
    mac_override_ = mac;
}

// --- NetnsLease ---

NetnsLease::NetnsLease(std::shared_ptr<net_detail::NetworkCore> core,
                       std::unique_ptr<VethNamespace> device, unsigned block, Block30 addresses)
    : core_(std::move(core)), device_(std::move(device)), block_(block), addresses_(addresses) {}

NetnsLease::~NetnsLease() {
    rules_.reset();
    core_->give_back_netns(block_, std::move(device_));
}

void NetnsLease::hold(std::unique_ptr<FirewallAttachment> rules) {
    rules_ = std::move(rules);
}

const std::string& NetnsLease::host_interface() const {
    return device_->host_name();
}
const std::filesystem::path& NetnsLease::netns_path() const {
    return device_->netns_path();
}
std::string NetnsLease::host_ip() const {
    return ipv4_to_string(addresses_.host());
}
std::string NetnsLease::guest_ip() const {
    return ipv4_to_string(addresses_.guest());
}

// --- Network ---

namespace {

void refuse_overlaps(const Ipv4Net& subnet) {
    for (const InterfaceAddress& configured : interface_addresses()) {
        if (configured.network.overlaps(subnet)) {
            throw std::runtime_error("subnet " + subnet.to_string() + " overlaps address " +
                                     ipv4_to_string(configured.address) + "/" +
                                     std::to_string(configured.network.prefix) + " on interface " +
                                     configured.interface +
                                     "; choose a free range with the `subnet` key of unifaas.toml");
        }
    }
}

}  // namespace

Network::Network(NetworkConfig config) {
    validate(config);
    if (unsigned stale = remove_taps_with_prefix(config.tap_prefix)) {
        spdlog::info("net: deleted {} stale tap(s) {}N left by an earlier run", stale,
                     config.tap_prefix);
    }
    if (!config.netns_dir.empty()) {
        if (unsigned stale = remove_veth_namespaces(config.tap_prefix, config.netns_dir)) {
            spdlog::info(
                "net: deleted {} stale container veth(s)/namespace(s) {}vN left by an "
                "earlier run",
                stale, config.tap_prefix);
        }
    }
    refuse_overlaps(config.subnet);
    core_ = std::make_shared<net_detail::NetworkCore>(std::move(config));
    filler_ = std::thread([core = core_.get()] { core->fill_pool(); });
    spdlog::debug("net: guests get /30 blocks of {} on taps {}N, {} kept ready",
                  core_->config().subnet.to_string(), core_->config().tap_prefix,
                  core_->config().prealloc);
}

Network::~Network() {
    // close() ends fill_pool()'s loop and deletes the idle taps; then the thread can be joined.
    core_->close();
    filler_.join();
}

std::unique_ptr<NetworkLease> Network::lease() {
    return core_->lease();
}

std::unique_ptr<NetnsLease> Network::lease_netns() {
    return core_->lease_netns();
}

unsigned Network::cleanup_taps() {
    return core_->cleanup_taps();
}

Network::Stats Network::stats() const {
    return core_->stats();
}

const NetworkConfig& Network::config() const {
    return core_->config();
}

}  // namespace unifaas
