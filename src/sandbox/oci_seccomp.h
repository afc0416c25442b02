// The seccomp filter of engine = "oci" containers, compiled once per daemon (libseccomp) and
// handed to crun precompiled (annotation run.oci.seccomp_bpf_data): crun compiling a profile of
// ~440 syscall names itself added ~17 ms to every cold start here, the precompiled filter ~2 ms.
//
// A deny list, EPERM: what a function server has no business calling and what lets a process
// escape or attack the host — kernel modules, kexec, reboot, swap, clock setting, mounts and
// pivot_root, new namespaces (unshare, setns, clone with namespace flags, clone3 answered
// ENOSYS so libc falls back to clone), ptrace and process_vm_*, perf/bpf/userfaultfd, the kernel
// keyring, open_by_handle_at, quotactl, personality changes, iopl/ioperm, the obsolete calls.
// Only the native architecture: a call through another ABI (x32, i386) kills the process.
// x86-64 only for now (the names and the JSON profile's architecture).
#pragma once

#include <string>

#include <nlohmann/json.hpp>

namespace unifaas {

// The filter as classic BPF, base64-encoded (the annotation's format). Throws std::runtime_error
// when libseccomp cannot build it.
const std::string& oci_seccomp_bpf_base64();

// The same filter as an OCI runtime-spec seccomp section, for runtimes without the annotation
// (runc compiles it at every start).
nlohmann::json oci_seccomp_profile();

}  // namespace unifaas
