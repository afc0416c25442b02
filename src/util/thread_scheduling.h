// The scheduling policy of the daemon's own threads.
#pragma once

#include <system_error>

namespace unifaas {

// Makes the calling thread SCHED_BATCH: a thread woken by data (a proxy's event loop) then does
// not preempt the thread that is still writing it, so a function's head and first body bytes, or
// a client's request, are read in one go once the writer blocks instead of piece by piece between
// forced context switches. Only from SCHED_OTHER: a policy chosen for the daemon (systemd's
// CPUSchedulingPolicy=) is kept. With SCHED_RESET_ON_FORK as its mark: the kernel resets only
// real-time policies on fork, so ChildProcess puts a child of a thread so marked back to
// SCHED_OTHER itself (crun, hypervisors never run batch). Returns what failed, if anything.
std::error_code prefer_batch_scheduling();

}  // namespace unifaas
