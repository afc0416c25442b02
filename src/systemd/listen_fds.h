// Sockets passed by systemd socket activation (sd_listen_fds_with_names).
#pragma once

#include <string>
#include <vector>

namespace unifaas {

struct ActivatedSocket {
    int fd;
    std::string name;  // FileDescriptorName=, "unknown" when unnamed
};

// Takes the activated sockets (and unsets LISTEN_* so children do not inherit them).
std::vector<ActivatedSocket> take_activated_sockets();

// The socket named `name`; unnamed sockets stand for the names in `order` by position
// (an unnamed first socket is "http"). -1 when absent.
int pick_socket(const std::vector<ActivatedSocket>& sockets, const std::string& name,
                const std::vector<std::string>& order);

}  // namespace unifaas
