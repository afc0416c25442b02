// ChildProcess: started as a clone sharing the daemon's memory until exec (CLONE_VFORK when not
// held; a held child waits at its gate on a stack of its own), with real programs.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <sched.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <system_error>
#include <thread>

#include "sandbox/child_process.h"
#include "util/thread_scheduling.h"

namespace unifaas {
namespace {

namespace fs = std::filesystem;

class ChildProcessTest : public ::testing::Test {
  protected:
    void SetUp() override {
        dir_ = fs::temp_directory_path() / ("child-process-test-" + std::to_string(getpid()));
        fs::create_directories(dir_);
    }
    void TearDown() override { fs::remove_all(dir_); }

    std::string read(const fs::path& file) {
        std::ifstream in(file);
        std::stringstream text;
        text << in.rdbuf();
        return text.str();
    }

    fs::path dir_;
};

TEST_F(ChildProcessTest, RunsWithOutputAndEnvironmentAndReportsItsExit) {
    ChildProcess child({"/bin/sh", "-c", "echo out $EXTRA; echo err >&2; exit 7"}, dir_ / "out.log",
                       {"EXTRA=value"});
    EXPECT_GT(child.pidfd(), 0);
    EXPECT_EQ(child.wait(), 7);
    EXPECT_EQ(read(dir_ / "out.log"), "out value\nerr\n");
}

// A thread that runs SCHED_BATCH for itself (an invocation loop) starts children under the
// normal policy: the kernel's reset-on-fork passes SCHED_BATCH on.
TEST_F(ChildProcessTest, ChildOfABatchThreadRunsTheNormalPolicy) {
    std::string policies;
    std::thread batch([&] {
        ASSERT_FALSE(prefer_batch_scheduling());
        policies = std::to_string(sched_getscheduler(0));
        ChildProcess child({"/bin/sh", "-c", "cut -d' ' -f41 /proc/$$/stat"}, dir_ / "out.log");
        EXPECT_EQ(child.wait(), 0);
    });
    batch.join();
    EXPECT_EQ(policies, std::to_string(SCHED_BATCH | SCHED_RESET_ON_FORK));
    EXPECT_EQ(read(dir_ / "out.log"), std::to_string(SCHED_OTHER) + "\n");
}

// pass_fd is the child's fd 3, open across its exec.
TEST_F(ChildProcessTest, PassedDescriptorIsItsFd3) {
    int fds[2];
    ASSERT_EQ(pipe2(fds, O_CLOEXEC), 0);
    ChildProcess child({"/bin/sh", "-c", "echo through >&3"}, dir_ / "out.log", {}, false, {},
                       fds[1]);
    close(fds[1]);
    EXPECT_EQ(child.wait(), 0);
    char buf[16] = {};
    EXPECT_EQ(::read(fds[0], buf, sizeof buf), 8);
    close(fds[0]);
    EXPECT_EQ(std::string(buf), "through\n");
}

TEST_F(ChildProcessTest, HeldChildExecsOnlyAfterRelease) {
    ChildProcess child({"/bin/sh", "-c", "echo released"}, dir_ / "out.log", {}, /*held=*/true);
    // Waiting at its gate: still this program (not /bin/sh), nothing written, not exited.
    EXPECT_EQ(fs::read_symlink("/proc/" + std::to_string(child.pid()) + "/exe"),
              fs::read_symlink("/proc/self/exe"));
    pollfd p{child.pidfd(), POLLIN, 0};
    EXPECT_EQ(poll(&p, 1, 50), 0) << "the held child ended before release()";
    EXPECT_EQ(read(dir_ / "out.log"), "");
    child.release();
    EXPECT_EQ(child.wait(), 0);
    EXPECT_EQ(read(dir_ / "out.log"), "released\n");
}

TEST_F(ChildProcessTest, HeldChildNeverReleasedIsGone) {
    pid_t pid = 0;
    {
        ChildProcess child({"/bin/sleep", "60"}, dir_ / "out.log", {}, /*held=*/true);
        pid = child.pid();
        EXPECT_TRUE(fs::exists("/proc/" + std::to_string(pid)));
    }
    EXPECT_FALSE(fs::exists("/proc/" + std::to_string(pid))) << "not reaped";
}

TEST_F(ChildProcessTest, ExecFailureIsAnErrorNamingTheProgram) {
    fs::path bad = dir_ / "not-a-program";
    std::ofstream(bad) << "\x7f"
                       << "garbage";
    fs::permissions(bad, fs::perms::owner_all);
    try {
        ChildProcess child({bad.string()}, dir_ / "out.log");
        FAIL() << "started";
    } catch (const std::system_error& e) {
        EXPECT_NE(std::string(e.what()).find(bad.string()), std::string::npos) << e.what();
    }
    ChildProcess held({bad.string()}, dir_ / "out.log", {}, /*held=*/true);
    EXPECT_THROW(held.release(), std::system_error);
}

}  // namespace
}  // namespace unifaas
