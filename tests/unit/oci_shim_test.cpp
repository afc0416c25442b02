// The OCI shim's protocol and status mirroring, with /bin/sh standing in for `crun create`: it
// starts a background "init", writes its pid to the pid file and exits, as create does. The shim
// (the built unifaas-oci-shim, fd 3 a socket) must adopt that orphan and end as it ends.
#include <fcntl.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "sandbox/oci_shim.h"
#include "shim/shim.h"

namespace unifaas {
namespace {

namespace fs = std::filesystem;

struct ShimRun {
    pid_t create = 0;  // as the shim reported it
    pid_t init = 0;    // as the shim reported it (0: create failed)
    pid_t pid_file = 0;
    int status = 0;  // the shim's, from waitpid
    std::string output;
};

class OciShimTest : public ::testing::Test {
  protected:
    void SetUp() override {
        dir_ = fs::temp_directory_path() / ("oci-shim-test-" + std::to_string(getpid()));
        fs::create_directories(dir_);
    }
    void TearDown() override { fs::remove_all(dir_); }

    static pid_t read_line(int fd) {
        std::string line;
        char c = 0;
        while (::read(fd, &c, 1) == 1 && c != '\n') {
            line += c;
        }
        return line.empty() ? 0 : std::stoi(line);
    }

    // A create script whose background "init" (started by `starts_init`, which reads GATE
    // before it ends) ends only after create has exited, as crun's init waits on its exec.fifo:
    // an init that died first could be reaped by the shell, not adopted by the shim. The gate
    // is a fifo create holds open for writing until it exits.
    static std::string with_gate(const std::string& starts_init) {
        return "mkfifo GATE; " + starts_init + " echo $! > PIDFILE; exec 5>GATE; exit 0";
    }

    // `create` is the shell script standing in for `crun create`; PIDFILE and GATE in it are
    // replaced.
    ShimRun run(std::string create) {
        fs::path pid_file = dir_ / "init.pid";
        fs::path output = dir_ / "output.log";
        fs::remove(pid_file);
        fs::path gate = dir_ / "init.gate";
        fs::remove(gate);
        for (std::size_t at; (at = create.find("PIDFILE")) != std::string::npos;) {
            create.replace(at, 7, pid_file.string());
        }
        for (std::size_t at; (at = create.find("GATE")) != std::string::npos;) {
            create.replace(at, 4, gate.string());
        }
        int pair[2];
        EXPECT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair), 0);
        std::vector<std::string> args = {
            UNIFAAS_OCI_SHIM, pid_file.string(), "--", "/bin/sh", "-c", create};
        std::vector<char*> argv;
        for (auto& a : args) {
            argv.push_back(a.data());
        }
        argv.push_back(nullptr);
        pid_t shim = ::fork();
        if (shim == 0) {
            int out = ::open(output.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
            ::dup2(out, 1);
            ::dup2(out, 2);
            if (pair[1] == 3) {
                ::fcntl(3, F_SETFD, 0);  // dup2 onto itself would keep CLOEXEC
            } else {
                ::dup2(pair[1], 3);
            }
            ::execv(argv[0], argv.data());
            _exit(127);
        }
        ::close(pair[1]);
        ShimRun r;
        r.create = read_line(pair[0]);
        char go = 1;
        EXPECT_EQ(::send(pair[0], &go, 1, MSG_NOSIGNAL), 1);
        r.init = read_line(pair[0]);
        ::close(pair[0]);
        while (::waitpid(shim, &r.status, 0) < 0 && errno == EINTR) {
        }
        std::ifstream(pid_file) >> r.pid_file;
        std::stringstream text;
        text << std::ifstream(output).rdbuf();
        r.output = text.str();
        return r;
    }

    fs::path dir_;
};

TEST_F(OciShimTest, EndsWithTheInitsExitCode) {
    // Another orphan of create ends first: reaped, not mirrored.
    ShimRun r = run(with_gate("sh -c 'exit 9' & sh -c 'cat GATE >/dev/null; exit 7' &"));
    EXPECT_GT(r.create, 0);
    EXPECT_GT(r.init, 0);
    EXPECT_EQ(r.init, r.pid_file);
    ASSERT_TRUE(WIFEXITED(r.status)) << r.status;
    EXPECT_EQ(WEXITSTATUS(r.status), 7) << r.output;
    EXPECT_EQ(oci_exit_reason(WEXITSTATUS(r.status), 64), "exited with status 7");
}

TEST_F(OciShimTest, IsKilledByTheSignalThatKilledTheInitWithoutACoreDump) {
    ShimRun r = run(with_gate("sh -c 'cat GATE >/dev/null; kill -SEGV $$' &"));
    EXPECT_EQ(r.init, r.pid_file);
    ASSERT_TRUE(WIFSIGNALED(r.status)) << r.status << " " << r.output;
    EXPECT_EQ(WTERMSIG(r.status), SIGSEGV);
    EXPECT_FALSE(WCOREDUMP(r.status)) << "the shim is not dumpable";
    EXPECT_EQ(oci_exit_reason(128 + WTERMSIG(r.status), 64),
              "killed by signal 11 (Segmentation fault)");
}

TEST_F(OciShimTest, SigkillReadsAsOutOfMemory) {
    ShimRun r = run(with_gate("sh -c 'cat GATE >/dev/null; kill -KILL $$' &"));
    ASSERT_TRUE(WIFSIGNALED(r.status)) << r.status << " " << r.output;
    EXPECT_EQ(WTERMSIG(r.status), SIGKILL);
    EXPECT_EQ(oci_exit_reason(128 + WTERMSIG(r.status), 64),
              "killed by SIGKILL, most likely out of memory (limit 64 MiB)");
}

TEST_F(OciShimTest, FailedCreateEndsItWithCreatesStatusAndOutput) {
    ShimRun r = run("echo 'create: bad bundle' >&2; exit 4");
    EXPECT_GT(r.create, 0);
    EXPECT_EQ(r.init, 0) << "no init reported";
    ASSERT_TRUE(WIFEXITED(r.status));
    EXPECT_EQ(WEXITSTATUS(r.status), 4);
    EXPECT_NE(r.output.find("create: bad bundle"), std::string::npos) << r.output;
}

TEST_F(OciShimTest, AnInitThatIsNotItsChildIsRefused) {
    ShimRun r = run("echo 1 > PIDFILE; exit 0");
    EXPECT_EQ(r.init, 0);
    ASSERT_TRUE(WIFEXITED(r.status));
    EXPECT_EQ(WEXITSTATUS(r.status), 125);
    EXPECT_NE(r.output.find("is not ours"), std::string::npos) << r.output;
}

TEST_F(OciShimTest, WithoutItsChannelItIsAUsageError) {
    char arg0[] = "unifaas-oci-shim";
    char arg1[] = "/tmp/init.pid";
    char* argv[] = {arg0, arg1, nullptr};
    EXPECT_EQ(oci_shim_main(2, argv), 2);
}

}  // namespace
}  // namespace unifaas
