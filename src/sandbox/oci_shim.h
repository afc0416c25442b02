// The daemon's side of the OCI shim (src/shim/shim.h: one small process per spare container, as
// conmon or containerd-shim), so the daemon learns how a container started from a spare ended:
// `crun create` exits once the container is made, and its orphaned init would be reaped by PID 1
// with its status lost. The shim, a child subreaper, runs create (held until the daemon has put it
// in the instance's scope), adopts the init and ends as the init ends. The daemon watches the shim
// as it watches a foreground `crun run` (ChildProcess, pidfd), and words its end the same way
// (oci_exit_reason). The shim runs in the daemon's cgroup, not the container's, so it is never
// charged to (nor killed by) the container's memory limit. It dies with the daemon thread that
// started it (PR_SET_PDEATHSIG, set by ChildProcess); so does a create it still holds.
// It is a separate static executable (unifaas-oci-shim): exec'ing the daemon's own binary cost
// 1.2 MB of private memory per shim and ~20 ms more per spare on the test machine.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "sandbox/child_process.h"
#include "util/unique_fd.h"

namespace unifaas {

inline constexpr const char* kOciShimName = "unifaas-oci-shim";

// The shim's path: next to the daemon's executable (a build tree), or <prefix>/libexec/unifaas/
// (installed, the daemon in <prefix>/bin). Empty when it is in neither.
std::string oci_shim_executable();

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
    // Starts the shim (`shim`: its executable) with stdout and stderr appended to `output`.
    // Throws std::system_error.
    OciShim(const std::string& shim, const std::vector<std::string>& create_argv,
            const std::filesystem::path& pid_file, const std::filesystem::path& output);
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
        UniqueFd ours;
        UniqueFd theirs;
    };
    static Channel socket_pair();  // throws std::system_error
    Channel channel_ = socket_pair();
    ChildProcess child_;
};

}  // namespace unifaas
