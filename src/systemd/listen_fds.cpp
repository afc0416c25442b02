#include "systemd/listen_fds.h"

#include <systemd/sd-daemon.h>

#include <cstdlib>
#include <system_error>

namespace unifaas {

std::vector<ActivatedSocket> take_activated_sockets() {
    char** names = nullptr;
    int n = sd_listen_fds_with_names(1, &names);
    if (n < 0) {
        throw std::system_error(-n, std::generic_category(), "sd_listen_fds_with_names");
    }
    std::vector<ActivatedSocket> out;
    for (int i = 0; i < n; ++i) {
        std::string name = names && names[i] ? names[i] : "unknown";
        out.push_back({SD_LISTEN_FDS_START + i, name});
    }
    if (names) {
        for (int i = 0; i < n; ++i) {
            free(names[i]);
        }
        free(names);
    }
    return out;
}

int pick_socket(const std::vector<ActivatedSocket>& sockets, const std::string& name,
                const std::vector<std::string>& order) {
    for (const auto& s : sockets) {
        if (s.name == name) {
            return s.fd;
        }
    }
    for (std::size_t i = 0; i < order.size() && i < sockets.size(); ++i) {
        if (order[i] == name && sockets[i].name == "unknown") {
            return sockets[i].fd;
        }
    }
    return -1;
}

}  // namespace unifaas
