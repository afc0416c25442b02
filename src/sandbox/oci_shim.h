// The OCI shim: one small process per spare container (as conmon or containerd-shim), so the
// daemon learns how a container started from a spare ended. `crun create` exits once the
// container is made; its init, orphaned, would be reaped by PID 1 and its status lost. The shim
// is a mode of the daemon's own binary (`unifaas --oci-shim PID-FILE -- RUNTIME... create ...`,
// exec'd through /proc/self/exe, dispatched at the top of main()); it
//   1. makes itself a child subreaper (PR_SET_CHILD_SUBREAPER), so the orphaned init becomes its
//      child;
//   2. forks `crun create` held, tells the daemon its pid (fd 3, a socket) and runs it when the
//      daemon says so (after moving it into the instance's scope);
//   3. when create succeeded, reads the init's pid from PID-FILE and tells the daemon;
//   4. waits for the init (reaping any other orphan) and ends as it ended: the same exit code,
//      or killed by the same signal (without a core dump).
// A failed create: the shim ends as create did, its stderr in the output file. The daemon watches
// the shim as it watches a foreground `crun run` (ChildProcess, pidfd), and words its end the
// same way (oci_exit_reason). The shim runs in the daemon's cgroup, not the container's, so it
// is never charged to (nor killed by) the container's memory limit. It dies with the thread that
// started it (PR_SET_PDEATHSIG, set by ChildProcess); so does a create it still holds.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "sandbox/child_process.h"

namespace unifaas {

inline constexpr const char* kOciShimFlag = "--oci-shim";

// main() of the shim mode: argv = {exe, "--oci-shim", pid-file, "--", runtime argv...}. Returns
// only on a usage error (status 2); otherwise it ends as the container's init ended.
int oci_shim_main(int argc, char** argv);

// How a runtime child (foreground `crun run`, or a shim) ended, as the 502 text words it:
// `status` is its exit status, or 128 + the signal that killed it.
std::string oci_exit_reason(int status, std::uint64_t memory_mib);
// The same for a child that has ended and is not yet reaped (waitid WNOWAIT); "exited" when its
// status cannot be read.
std::string oci_exit_text(pid_t child, std::uint64_t memory_mib);

// The daemon's side of one shim: started with the create argv, it runs until the container's
// init ends (or it is destroyed: SIGKILL, then reaped).
class OciShim {
  public:
    // Starts the shim (through /proc/self/exe) with stdout and stderr appended to `output`.
    // Throws std::system_error.
    OciShim(const std::vector<std::string>& create_argv, const std::filesystem::path& pid_file,
            const std::filesystem::path& output);
    ~OciShim();
    OciShim(const OciShim&) = delete;
    OciShim& operator=(const OciShim&) = delete;

    // The pid of the held `crun create` (to move into a cgroup before it runs); 0 when the shim
    // ended first.
    pid_t create_pid();
    // Lets create run and waits until it has ended: the init's pid (now the shim's child), or 0
    // when create failed or the shim ended (then wait() tells how).
    pid_t run_create();
    // Waits for the shim's end and reaps it; its status as ChildProcess::wait.
    int wait() { return child_.wait(); }

    pid_t pid() const { return child_.pid(); }
    int pidfd() const { return child_.pidfd(); }

  private:
    pid_t read_pid();

    struct Channel {  // a socket pair: ours, and the shim's fd 3 until it has its copy
        int ours = -1;
        int theirs = -1;
        Channel();
        ~Channel();
    };
    Channel channel_;
    ChildProcess child_;
};

}  // namespace unifaas
