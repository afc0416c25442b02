// FirecrackerBackend: microVM functions on Firecracker (hypervisor type "firecracker").
//
// Each instance is one `firecracker --api-sock <workdir>/api.sock --id <instance id>` process
// configured and booted through its REST API (machine-config, boot-source, drive "rootfs",
// network interface "eth0" on the instance's tap, InstanceStart). The guest's serial console is
// Firecracker's standard output, kept in <workdir>/firecracker.log. With copy-rootfs (the
// default) every instance boots a private, sparse copy of the image, writable and deleted with
// the working directory; otherwise all instances share the image read-only. The process is
// watched through its pidfd, so an exit is reported at once.
#pragma once

#include <chrono>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "sandbox/firecracker_api.h"
#include "sandbox/sandbox.h"
#include "sandbox/vm_common.h"
#include "sandbox/vm_template.h"
#include "sandbox/vm_template_builder.h"

namespace unifaas {

// The firecracker executable to run: `configured` (daemon config) when non-empty, else
// $FIRECRACKER_EXE when set and non-empty, else "firecracker" looked up in PATH; each resolved
// with find_executable(). "" when the chosen one is not an executable (or none is found).
std::string find_firecracker(const std::string& configured);

enum class CopyMethod { Reflink, DataExtents };

// Copies the regular file `from` to `to` (created with mode 0600; must not exist yet) keeping
// its holes: a reflink (ioctl FICLONE) when `allow_reflink` and the filesystem shares extents,
// else only the data extents found with SEEK_DATA/SEEK_HOLE (copy_file_range, or read/write
// skipping zero blocks where that cannot be used), then the size set with ftruncate. Removes
// `to` and throws std::system_error naming the file on failure.
CopyMethod copy_sparse(const std::filesystem::path& from, const std::filesystem::path& to,
                       bool allow_reflink = true);

// The boot plan of one instance: spec resources, the command line with its placeholders
// substituted, the root drive and the tap.
BootPlan plan_boot(const VmSpec& vm, const GuestAddressing& addressing,
                   const std::filesystem::path& rootfs, bool rootfs_read_only,
                   const std::string& tap, const std::string& mac);

// argv of one instance's firecracker process.
std::vector<std::string> firecracker_command_line(const std::string& executable,
                                                  const std::filesystem::path& api_socket,
                                                  const std::string& instance_id);

enum class SocketWait { Ready, ProcessExited, TimedOut };

// Waits (inotify on the socket's directory and the process's pidfd; no polling) until the unix
// socket `socket` exists and accepts connections, the process behind `pidfd` exits, or `timeout`
// passes. A socket that exists but refuses (bound, not yet listening) is retried briefly.
// Throws std::system_error when it cannot watch at all.
SocketWait wait_for_api_socket(const std::filesystem::path& socket, int pidfd,
                               std::chrono::milliseconds timeout);

class FirecrackerBackend : public Backend {
  public:
    // executable: from find_firecracker(); "" makes every start fail with 501.
    FirecrackerBackend(VmEnvironment env, std::string executable);

    // Throws SandboxError: 501 firecracker or the tap network unavailable, 500 the function is not
    // a firecracker function or its kernel/image/initrd cannot be read, 503 every tap leased,
    // 502 anything else (firecracker exited, refused a request: "firecracker rejected PUT
    // /boot-source: <fault_message>", ...).
    std::unique_ptr<Instance> start(const InstanceContext& ctx) override;

    const std::string& executable() const { return executable_; }

  private:
    std::unique_ptr<Instance> boot(const InstanceContext& ctx);
    // A clone of the attempt's template (run by builder_.restore_or_build): load_clone, where a
    // SandboxError 502 (this firecracker exited or refused the snapshot) is a failed restore.
    void restore(RestoreAttempt& attempt);
    // A fresh firecracker loading the template's snapshot on its own tap, acknowledged on its own
    // address.
    void load_clone(RestoreAttempt& attempt);
    // Boots the template VM of one build, pauses it, saves a Full snapshot, stops it.
    SavedTemplate save_template(TemplateBuild& build);

    VmEnvironment env_;
    std::string executable_;
    TemplateBuilder builder_{env_};  // last: its builds are joined before the rest goes
};

}  // namespace unifaas
