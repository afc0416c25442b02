// QemuBackend: microVM functions on QEMU. type "qemu" is a q35 machine with virtio-*-pci
// devices; type "microvm" is QEMU's microvm machine with virtio-*-device (virtio-mmio). Each
// instance has its own tap (virtio-net with a unique MAC), its kernel command line with the
// placeholders substituted, its serial console in a file of its working directory, and its
// qemu process watched through a pidfd so an exit is noticed at once.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include "sandbox/accel.h"
#include "sandbox/sandbox.h"
#include "sandbox/vm_common.h"

namespace unifaas {

// Everything one qemu command line depends on.
struct QemuLaunch {
    std::string binary = "qemu-system-x86_64";
    Accel accel = Accel::Tcg;
    std::string name;  // shown by ps: "<function>-<instance id>"
    const VmSpec* vm = nullptr;
    std::string kernel_cmdline;  // placeholders already substituted
    std::string tap;
    std::string mac;
    std::filesystem::path console_log;
};

// The argv of one instance (pure: unit-tested against the compat corpus).
std::vector<std::string> qemu_command_line(const QemuLaunch& launch);

class QemuBackend : public Backend {
  public:
    QemuBackend(VmEnvironment env, std::string binary, Accel accel);

    std::unique_ptr<Instance> start(const InstanceContext& ctx) override;

  private:
    std::string kernel_cmdline(const VmSpec& vm, const GuestAddressing& addressing) const;

    VmEnvironment env_;
    std::string configured_binary_;
    std::string binary_;  // resolved path, "" when not installed
    Accel accel_;
    unsigned long tsc_khz_;
};

}  // namespace unifaas
