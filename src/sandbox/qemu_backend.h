// QemuBackend: microVM functions on QEMU. type "qemu" is a q35 machine with virtio-*-pci
// devices; type "microvm" is QEMU's microvm machine with virtio-*-device (virtio-mmio). Each
// instance has its own tap (virtio-net with a unique MAC), its kernel command line with the
// placeholders substituted, its serial console in a file of its working directory, and its
// qemu process watched through a pidfd so an exit is noticed at once.
#pragma once

#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "sandbox/accel.h"
#include "sandbox/sandbox.h"
#include "sandbox/vm_common.h"
#include "sandbox/vm_template.h"
#include "sandbox/vm_template_builder.h"

namespace unifaas {

class NetworkLease;
class VmTemplate;

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
    // Snapshots: guest RAM in this file (`-object memory-backend-file`), mapped shared (a
    // template, whose RAM the file keeps) or private (a clone: copy-on-write over the template's).
    struct MemoryFile {
        std::filesystem::path path;
        bool shared = false;
    };
    std::optional<MemoryFile> memory_file;
    std::filesystem::path qmp_socket;  // `-qmp unix:...` when not empty
    bool incoming = false;             // `-incoming defer` (a clone waiting for its state)
};

// The argv of one instance (pure: unit-tested against the compat corpus).
std::vector<std::string> qemu_command_line(const QemuLaunch& launch);

class QemuBackend : public Backend {
  public:
    QemuBackend(VmEnvironment env, std::string binary, Accel accel);

    std::unique_ptr<Instance> start(const InstanceContext& ctx) override;

  private:
    std::string kernel_cmdline(const VmSpec& vm, const GuestAddressing& addressing) const;
    // A tap under the function's [network] policy (every VM: booted, clone or template).
    std::unique_ptr<NetworkLease> lease_network(const FunctionSpec& spec);
    std::unique_ptr<Instance> boot(const InstanceContext& ctx);
    // A clone of the attempt's template (a qemu waiting for its state, loaded over QMP), up and
    // acknowledged on its own address (run by builder_.restore_or_build).
    void restore(RestoreAttempt& attempt);
    // Boots, saves and stops the template VM of one build (run by builder_ on its thread).
    SavedTemplate save_template(TemplateBuild& build);

    VmEnvironment env_;
    std::string configured_binary_;
    std::string binary_;  // resolved path, "" when not installed
    Accel accel_;
    unsigned long tsc_khz_;
    TemplateBuilder builder_{env_};  // last: its builds are joined before the rest goes
};

}  // namespace unifaas
