// OciOutputCap: an instance's output file stays bounded while the writer (the runtime, O_APPEND)
// keeps its descriptor; the rotated part still serves the last lines of an error message.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <string>
#include <thread>

#include "sandbox/oci_output.h"

namespace unifaas {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

class OciOutputTest : public ::testing::Test {
  protected:
    void SetUp() override {
        dir_ = fs::temp_directory_path() / ("oci-output-test-" + std::to_string(getpid()));
        fs::create_directories(dir_);
        file_ = dir_ / "output.log";
    }
    void TearDown() override { fs::remove_all(dir_); }

    // The cap works on its own thread after inotify: a bounded wait for the file to shrink.
    static bool shrinks_below(const fs::path& file, std::uintmax_t size) {
        auto deadline = std::chrono::steady_clock::now() + 5s;
        while (fs::file_size(file) >= size) {
            if (std::chrono::steady_clock::now() > deadline) {
                return false;
            }
            std::this_thread::sleep_for(5ms);
        }
        return true;
    }

    fs::path dir_;
    fs::path file_;
};

TEST_F(OciOutputTest, GrowingFileIsRotatedOnceAndWritesGoOn) {
    OciOutputCap cap(4096);
    CappedOutput capped(&cap, file_);
    int fd = open(file_.c_str(), O_WRONLY | O_APPEND | O_CLOEXEC);
    ASSERT_GE(fd, 0);
    std::string line(99, 'a');
    line += '\n';
    for (int i = 0; i < 50; ++i) {  // 5000 bytes > 4096
        ASSERT_EQ(write(fd, line.data(), line.size()), static_cast<ssize_t>(line.size()));
    }
    ASSERT_TRUE(shrinks_below(file_, 4096)) << fs::file_size(file_);
    ASSERT_TRUE(fs::exists(dir_ / "output.log.1"));
    EXPECT_GE(fs::file_size(dir_ / "output.log.1"), 4096u);
    // The writer's next line starts the file again (O_APPEND), no hole before it.
    std::string last = "the last line\n";
    ASSERT_EQ(write(fd, last.data(), last.size()), static_cast<ssize_t>(last.size()));
    close(fd);
    EXPECT_LE(fs::file_size(file_), 4096u);
    std::string tail = OciOutputCap::tail(file_, 3);
    EXPECT_EQ(tail, line + line.substr(0, 99) + "\n" + "the last line") << tail;
}

TEST_F(OciOutputTest, SmallFileIsLeftAlone) {
    OciOutputCap cap(4096);
    {
        CappedOutput capped(&cap, file_);
        int fd = open(file_.c_str(), O_WRONLY | O_APPEND | O_CLOEXEC);
        ASSERT_GE(fd, 0);
        ASSERT_EQ(write(fd, "one\ntwo\n", 8), 8);
        close(fd);
    }
    EXPECT_FALSE(fs::exists(dir_ / "output.log.1"));
    EXPECT_EQ(OciOutputCap::tail(file_, 5), "one\ntwo");
    CappedOutput none(nullptr, file_);  // no cap (under systemd): nothing happens
}

}  // namespace
}  // namespace unifaas
