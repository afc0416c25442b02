// The host side of the guest restore protocol (guest/README.md, "Restore protocol"): a clone
// restored from a template learns its own address, gateway, readiness URL, the host's clock and
// fresh entropy from one UDP datagram broadcast on its tap, and acknowledges it.
#pragma once

#include <chrono>
#include <string>

namespace unifaas {

inline constexpr int kRestoreProtocolVersion = 1;
inline constexpr unsigned short kRestorePort = 8125;

struct RestoreMessage {
    std::string ip;
    std::string gateway;
    std::string netmask;
    std::string callback;  // the clone's own readiness URL
    std::string nonce;     // identifies this restore (hex)
};

// The datagram: "unifaas-restore=1\nip=...\ngw=...\nmask=...\ncallback=...\nnonce=...\n" plus
// "time=<CLOCK_REALTIME s.ns>\nentropy=<64 hex>\n" taken when called.
std::string format_restore_message(const RestoreMessage& message);

// Whether `datagram` acknowledges the restore with `nonce`.
bool is_restore_ack(const std::string& datagram, const std::string& nonce);

// Broadcasts the message out of `tap` (bound to the device, from its address) every 50 ms until
// the guest acknowledges (true) or `deadline` passes (false). Each send carries a fresh time.
// Throws std::system_error when no socket can be made.
bool send_restore(const std::string& tap, const RestoreMessage& message,
                  std::chrono::steady_clock::time_point deadline);

}  // namespace unifaas
