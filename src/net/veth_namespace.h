// VethNamespace: a network namespace for one container, made ahead of use. The namespace is kept
// by a bind mount of its nsfs file at <netns dir>/<host name> (as `ip netns add` does), so an
// OCI runtime joins it by path. A veth pair links it to the daemon's namespace: the host end
// <tap prefix>v<block> stays here, addressed <block>.1/30 (a plain interface, so firewall rules
// keyed by interface name cover it like a tap); the container end `eth0` is inside, addressed
// <block>.2/30 and up, with the default route via the host end, and `lo` is up.
// Needs CAP_SYS_ADMIN (unshare, mount) and CAP_NET_ADMIN. Errors are std::system_error
// "veth NAME: STEP: reason".
#pragma once

#include <filesystem>
#include <set>
#include <string>

#include "net/subnet.h"

namespace unifaas {

class VethNamespace {
  public:
    // Fails with EEXIST when the host end's name or the namespace file is taken.
    VethNamespace(const std::filesystem::path& netns_dir, std::string host_name, Block30 addresses);
    // Deletes the veth pair, unmounts and removes the namespace file; never throws.
    ~VethNamespace();
    VethNamespace(const VethNamespace&) = delete;
    VethNamespace& operator=(const VethNamespace&) = delete;

    const std::string& host_name() const { return host_name_; }
    const std::filesystem::path& netns_path() const { return netns_path_; }

  private:
    void configure_inside(Block30 addresses);

    std::string host_name_;
    std::filesystem::path netns_path_;
};

// The name of the veth host end of block `index`: veth_name("faas", 3) == "faasv3".
std::string veth_name(const std::string& tap_prefix, unsigned index);

// Deletes every veth named <tap prefix>v<digits> not in `keep`, and every namespace file in
// `netns_dir` not named in `keep` (unmounted, then removed): what a crashed run left behind.
// Other interfaces and files are never touched. Returns the count of veths and files removed.
unsigned remove_veth_namespaces(const std::string& tap_prefix,
                                const std::filesystem::path& netns_dir,
                                const std::set<std::string>& keep = {});

}  // namespace unifaas
