#include "util/thread_scheduling.h"

#include <sched.h>

#include <cerrno>

namespace unifaas {

std::error_code prefer_batch_scheduling() {
    int policy = sched_getscheduler(0);
    if (policy < 0) {
        return {errno, std::generic_category()};
    }
    if ((policy & ~SCHED_RESET_ON_FORK) != SCHED_OTHER) {
        return {};
    }
    sched_param param{};
    if (sched_setscheduler(0, SCHED_BATCH | SCHED_RESET_ON_FORK, &param) != 0) {
        return {errno, std::generic_category()};
    }
    return {};
}

}  // namespace unifaas
