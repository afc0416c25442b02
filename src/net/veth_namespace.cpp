#include "net/veth_namespace.h"

#include <fcntl.h>
#include <sched.h>
#include <sys/mount.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <exception>
#include <system_error>
#include <thread>

#include <spdlog/spdlog.h>

#include "net/netlink.h"
#include "net/tap_device.h"
#include "util/unique_fd.h"

namespace unifaas {

namespace fs = std::filesystem;
using net_detail::fail;
using net_detail::fail_errno;

namespace {

constexpr const char* kContainerInterface = "eth0";

void unmount_and_remove(const fs::path& file) {
    if (::umount2(file.c_str(), MNT_DETACH) < 0 && errno != EINVAL && errno != ENOENT) {
        spdlog::warn("net: cannot unmount namespace {}: {}", file.string(),
                     std::error_code(errno, std::generic_category()).message());
    }
    std::error_code ec;
    fs::remove(file, ec);
}

bool is_veth_name(const std::string& prefix, const std::string& name) {
    std::string head = prefix + "v";
    return name.size() > head.size() && name.starts_with(head) &&
           std::all_of(name.begin() + static_cast<long>(head.size()), name.end(),
                       [](char c) { return c >= '0' && c <= '9'; });
}

// Runs fn on a thread of its own, which may change its network namespace without affecting the
// caller's; rethrows what fn threw.
template <class Fn>
void on_own_thread(Fn fn) {
    std::exception_ptr error;
    std::thread([&] {
        try {
            fn();
        } catch (...) {
            error = std::current_exception();
        }
    }).join();
    if (error) {
        std::rethrow_exception(error);
    }
}

}  // namespace

std::string veth_name(const std::string& tap_prefix, unsigned index) {
    return tap_prefix + "v" + std::to_string(index);
}

VethNamespace::VethNamespace(const fs::path& netns_dir, std::string host_name, Block30 addresses)
    : host_name_(std::move(host_name)), netns_path_(netns_dir / host_name_) {
    const std::string what = "veth " + host_name_ + ": ";
    if (host_name_.size() > 15) {
        fail(EINVAL, what + "name longer than 15 characters (shorten tap-prefix)");
    }
    std::error_code ec;
    fs::create_directories(netns_dir, ec);
    if (ec) {
        fail(ec.value(), what + "create " + netns_dir.string());
    }
    {
        UniqueFd file(::open(netns_path_.c_str(), O_RDONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0444));
        if (!file) {
            fail_errno(what + "create " + netns_path_.string());
        }
    }
    try {
        configure_inside(addresses);
        net_detail::add_ipv4_address(host_name_, addresses.host(), Block30::netmask,
                                     what + "set address " + ipv4_to_string(addresses.host()));
        net_detail::set_interface_up(host_name_, true, what + "bring up");
    } catch (...) {
        try {
            delete_interface(host_name_);
        } catch (const std::exception&) {
            // not made, or gone with its namespace
        }
        unmount_and_remove(netns_path_);
        throw;
    }
}

// On a thread of its own: a new namespace, kept by the bind mount; lo up; the veth pair made
// from inside (eth0 here, the host end in the daemon's namespace); eth0 addressed and routed.
void VethNamespace::configure_inside(Block30 addresses) {
    const std::string what = "veth " + host_name_ + ": ";
    on_own_thread([&] {
        UniqueFd daemon_ns(::open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC));
        if (!daemon_ns) {
            fail_errno(what + "open the daemon's network namespace");
        }
        if (::unshare(CLONE_NEWNET) < 0) {
            fail_errno(what + "unshare(CLONE_NEWNET)");
        }
        if (::mount("/proc/thread-self/ns/net", netns_path_.c_str(), nullptr, MS_BIND, nullptr) <
            0) {
            fail_errno(what + "bind mount the namespace on " + netns_path_.string());
        }
        net_detail::set_interface_up("lo", true, what + "bring up lo");
        net_detail::create_veth_pair(kContainerInterface, host_name_, daemon_ns.get(),
                                     what + "create veth pair (RTM_NEWLINK)");
        net_detail::add_ipv4_address(
            kContainerInterface, addresses.guest(), Block30::netmask,
            what + "set eth0 address " + ipv4_to_string(addresses.guest()));
        net_detail::set_interface_up(kContainerInterface, true, what + "bring up eth0");
        net_detail::add_default_route(
            kContainerInterface, addresses.host(),
            what + "default route via " + ipv4_to_string(addresses.host()));
    });
}

VethNamespace::~VethNamespace() {
    try {
        delete_interface(host_name_);  // its peer goes with it
    } catch (const std::system_error& e) {
        if (e.code().value() != ENODEV) {
            spdlog::warn("net: cannot delete veth {}: {}", host_name_, e.what());
        }
    } catch (const std::exception& e) {
        spdlog::warn("net: cannot delete veth {}: {}", host_name_, e.what());
    }
    unmount_and_remove(netns_path_);
}

unsigned remove_veth_namespaces(const std::string& tap_prefix, const fs::path& netns_dir,
                                const std::set<std::string>& keep) {
    unsigned removed = 0;
    for (const std::string& name : interface_names()) {
        if (!is_veth_name(tap_prefix, name) || keep.contains(name) ||
            net_detail::interface_driver(name) != "veth") {
            continue;
        }
        try {
            delete_interface(name);
            ++removed;
        } catch (const std::system_error& e) {
            if (e.code().value() != ENODEV) {
                throw;
            }
        }
    }
    std::error_code ec;
    for (const auto& entry : fs::directory_iterator(netns_dir, ec)) {
        std::string name = entry.path().filename().string();
        if (is_veth_name(tap_prefix, name) && !keep.contains(name)) {
            unmount_and_remove(entry.path());
            ++removed;
        }
    }
    return removed;
}

}  // namespace unifaas
