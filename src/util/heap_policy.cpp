#include "util/heap_policy.h"

#include <malloc.h>

namespace unifaas {

bool bound_heap_retention() noexcept {
    // Setting either threshold also turns glibc's dynamic adjustment off.
    bool mmap_set = mallopt(M_MMAP_THRESHOLD, static_cast<int>(kMmapThreshold)) == 1;
    bool trim_set = mallopt(M_TRIM_THRESHOLD, static_cast<int>(kTrimThreshold)) == 1;
    return mmap_set && trim_set;
}

}  // namespace unifaas
