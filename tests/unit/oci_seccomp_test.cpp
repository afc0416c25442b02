// The containers' seccomp filter: compiled once, handed to crun as base64 BPF, and really
// enforced — a child process installs it and tries what it denies.
#include <gtest/gtest.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sched.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <string>
#include <vector>

#include "sandbox/oci_bundle.h"
#include "sandbox/oci_seccomp.h"

namespace unifaas {
namespace {

std::vector<unsigned char> decode_base64(const std::string& text) {
    auto value = [](char c) -> int {
        if (c >= 'A' && c <= 'Z')
            return c - 'A';
        if (c >= 'a' && c <= 'z')
            return c - 'a' + 26;
        if (c >= '0' && c <= '9')
            return c - '0' + 52;
        if (c == '+')
            return 62;
        if (c == '/')
            return 63;
        return -1;
    };
    std::vector<unsigned char> out;
    unsigned bits = 0;
    int count = 0;
    for (char c : text) {
        if (c == '=') {
            break;
        }
        int v = value(c);
        EXPECT_GE(v, 0) << "not base64: " << c;
        bits = (bits << 6) | static_cast<unsigned>(v);
        count += 6;
        if (count >= 8) {
            count -= 8;
            out.push_back(static_cast<unsigned char>((bits >> count) & 0xff));
        }
    }
    return out;
}

// In a child: installs the filter, then reports what the calls it denies return.
int child_exit_code(const std::vector<unsigned char>& bpf) {
    pid_t pid = fork();
    if (pid == 0) {
        sock_fprog prog{static_cast<unsigned short>(bpf.size() / sizeof(sock_filter)),
                        reinterpret_cast<sock_filter*>(const_cast<unsigned char*>(bpf.data()))};
        if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 ||
            syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog) != 0) {
            _exit(10);
        }
        if (unshare(CLONE_NEWUSER) != -1 || errno != EPERM) {
            _exit(11);
        }
        if (syscall(SYS_clone3, nullptr, 0) != -1 || errno != ENOSYS) {
            _exit(12);
        }
        if (syscall(SYS_mount, "none", "/", "tmpfs", 0, nullptr) != -1 || errno != EPERM) {
            _exit(13);
        }
        if (syscall(SYS_ptrace, 0, 0, 0, 0) != -1 || errno != EPERM) {
            _exit(14);
        }
        // A clone with a namespace flag is refused, a plain fork still works.
        if (syscall(SYS_clone, CLONE_NEWNET | SIGCHLD, 0, 0, 0, 0) != -1 || errno != EPERM) {
            _exit(15);
        }
        pid_t inner = fork();
        if (inner == 0) {
            _exit(0);
        }
        int status = 0;
        if (inner < 0 || waitpid(inner, &status, 0) != inner || status != 0) {
            _exit(16);
        }
        _exit(getpid() > 0 ? 0 : 17);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 100 + WTERMSIG(status);
}

TEST(OciSeccompTest, FilterIsBpfAndDeniesWhatItSays) {
    const std::string& text = oci_seccomp_bpf_base64();
    EXPECT_EQ(&text, &oci_seccomp_bpf_base64()) << "compiled more than once";
    auto bpf = decode_base64(text);
    ASSERT_FALSE(bpf.empty());
    ASSERT_EQ(bpf.size() % sizeof(sock_filter), 0u);
    EXPECT_EQ(child_exit_code(bpf), 0);
}

TEST(OciSeccompTest, CrunGetsTheAnnotationOtherRuntimesTheSection) {
    OciLaunch crun;
    crun.seccomp_bpf_base64 = oci_seccomp_bpf_base64();
    crun.seccomp_profile = oci_seccomp_profile();
    auto config = oci_config(crun);
    EXPECT_EQ(config["annotations"]["run.oci.seccomp_bpf_data"], crun.seccomp_bpf_base64);
    EXPECT_FALSE(config["linux"].contains("seccomp")) << "crun would compile it again";

    OciLaunch runc;
    runc.seccomp_profile = oci_seccomp_profile();
    config = oci_config(runc);
    EXPECT_FALSE(config.contains("annotations"));
    const auto& seccomp = config["linux"]["seccomp"];
    EXPECT_EQ(seccomp["defaultAction"], "SCMP_ACT_ALLOW");
    auto names = seccomp["syscalls"][0]["names"];
    EXPECT_NE(std::find(names.begin(), names.end(), "mount"), names.end());
    EXPECT_NE(std::find(names.begin(), names.end(), "unshare"), names.end());
    EXPECT_EQ(seccomp["syscalls"][1]["names"][0], "clone3");
    EXPECT_EQ(seccomp["syscalls"][1]["errnoRet"], ENOSYS);
}

}  // namespace
}  // namespace unifaas
