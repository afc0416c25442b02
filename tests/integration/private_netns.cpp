#include "private_netns.h"

#include <gtest/gtest.h>
#include <sched.h>
#include <sys/stat.h>

#include <cerrno>
#include <cstring>
#include <thread>

namespace unifaas::test {

namespace {

ino_t netns_inode(const char* path) {
    struct stat st {};
    return ::stat(path, &st) == 0 ? st.st_ino : 0;
}

}  // namespace

void in_private_netns(const std::function<void()>& body) {
    std::thread worker([&] {
        ino_t before = netns_inode("/proc/thread-self/ns/net");
        if (::unshare(CLONE_NEWNET) != 0) {
            ADD_FAILURE() << "unshare(CLONE_NEWNET): " << std::strerror(errno);
            return;
        }
        ino_t inside = netns_inode("/proc/thread-self/ns/net");
        if (before == 0 || inside == 0 || inside == before ||
            inside == netns_inode("/proc/1/ns/net")) {
            ADD_FAILURE() << "not in a private network namespace; refusing to touch interfaces";
            return;
        }
        try {
            body();
        } catch (const std::exception& e) {
            ADD_FAILURE() << "exception: " << e.what();
        }
    });
    worker.join();
}

}  // namespace unifaas::test
