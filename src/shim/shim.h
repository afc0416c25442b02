// unifaas-oci-shim: one small process per spare OCI container (the daemon's side is
// sandbox/oci_shim.h). `unifaas-oci-shim PID-FILE -- RUNTIME... create ...`, with a socket from
// the daemon as fd 3:
//   1. makes itself a child subreaper (PR_SET_CHILD_SUBREAPER), so the init that create leaves
//      behind becomes its child;
//   2. forks the runtime held, writes its pid on fd 3 ("<pid>\n") and runs it when the daemon
//      sends a byte (the daemon has put it in the instance's scope meanwhile);
//   3. when create succeeded, reads the init's pid from PID-FILE, checks it is its child and
//      writes it on fd 3, then closes fd 3;
//   4. waits for the init (reaping any other orphan) and ends as it ended: the same exit code, or
//      killed by the same signal (not dumpable: no core of the shim).
// A failed create: it ends as create did (create's stderr is the shim's, the output file). It
// uses only libc: the executable is linked statically and costs little to start and to keep.
#pragma once

namespace unifaas {

// main() of unifaas-oci-shim: argv = {exe, pid-file, "--", runtime argv...}. Returns only on a
// usage error (status 2); otherwise it ends as the container's init ended.
int oci_shim_main(int argc, char** argv);

}  // namespace unifaas
