// ConsoleForwarder on real files with a collecting emitter: complete lines only, "\r\n" consoles,
// lines already written before add(), a file created by add() and truncated by its writer (as
// QEMU's -serial file: does), the last unterminated line on remove(), very long lines.
#include "systemd/console_forwarder.h"

#include <gtest/gtest.h>
#include <stdlib.h>

#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace unifaas {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

struct Line {
    std::string function, instance, text;
};

class Collector {
  public:
    ConsoleForwarder::Emit emit() {
        return [this](const std::string& f, const std::string& i, std::string_view text) {
            std::lock_guard lock(mu_);
            lines_.push_back({f, i, std::string(text)});
            cv_.notify_all();
        };
    }
    // Waits until `n` lines arrived; returns the texts of all of them.
    std::vector<std::string> wait_for(std::size_t n, std::chrono::milliseconds timeout = 3000ms) {
        std::unique_lock lock(mu_);
        cv_.wait_for(lock, timeout, [&] { return lines_.size() >= n; });
        return texts_locked();
    }
    std::vector<std::string> texts() {
        std::lock_guard lock(mu_);
        return texts_locked();
    }
    std::vector<Line> lines() {
        std::lock_guard lock(mu_);
        return lines_;
    }

  private:
    std::vector<std::string> texts_locked() const {
        std::vector<std::string> out;
        for (const auto& l : lines_) {
            out.push_back(l.text);
        }
        return out;
    }
    std::mutex mu_;
    std::condition_variable cv_;
    std::vector<Line> lines_;
};

class ConsoleForwarderTest : public ::testing::Test {
  protected:
    void SetUp() override {
        char tmpl[] = "/tmp/unifaas-console-XXXXXX";
        dir_ = mkdtemp(tmpl);
    }
    void TearDown() override { fs::remove_all(dir_); }

    void append(const fs::path& file, const std::string& text) {
        std::ofstream out(file, std::ios::app | std::ios::binary);
        out << text;
    }

    fs::path dir_;
    Collector collector_;
};

TEST_F(ConsoleForwarderTest, CompleteLinesTaggedWithFunctionAndInstance) {
    ConsoleForwarder forwarder(collector_.emit());
    fs::path file = dir_ / "console.log";
    auto id = forwarder.add(file, "hello", "0123456789ab");
    EXPECT_TRUE(fs::exists(file));  // created for the hypervisor to write into
    append(file, "[    0.000000] Linux version 6.1\r\n[    0.1] second");
    EXPECT_EQ(collector_.wait_for(1), std::vector<std::string>{"[    0.000000] Linux version 6.1"});
    append(file, " half\r\n\r\nthird\n");
    EXPECT_EQ(collector_.wait_for(3), (std::vector<std::string>{"[    0.000000] Linux version 6.1",
                                                                "[    0.1] second half", "third"}));
    auto lines = collector_.lines();
    EXPECT_EQ(lines[1].function, "hello");
    EXPECT_EQ(lines[1].instance, "0123456789ab");
    forwarder.remove(id);
}

TEST_F(ConsoleForwarderTest, LinesWrittenBeforeAddAndLastLineOnRemove) {
    ConsoleForwarder forwarder(collector_.emit());
    fs::path file = dir_ / "firecracker.log";
    append(file, "early 1\nearly 2\n");
    auto id = forwarder.add(file, "fc", "aaaaaaaaaaaa");
    EXPECT_EQ(collector_.texts(), (std::vector<std::string>{"early 1", "early 2"}));
    append(file, "Kernel panic - not syncing");  // no newline: the process died
    forwarder.remove(id);
    EXPECT_EQ(collector_.texts(),
              (std::vector<std::string>{"early 1", "early 2", "Kernel panic - not syncing"}));
    append(file, "after remove\n");
    std::this_thread::sleep_for(200ms);  // give a wrongly kept watch the chance to show
    EXPECT_EQ(collector_.texts().size(), 3u);
    forwarder.remove(id);  // twice: ignored
}

TEST_F(ConsoleForwarderTest, TruncatedFileStartsOver) {
    ConsoleForwarder forwarder(collector_.emit());
    fs::path file = dir_ / "console.log";
    append(file, "old line\n");
    auto id = forwarder.add(file, "q", "bbbbbbbbbbbb");
    ASSERT_EQ(collector_.texts().size(), 1u);
    // QEMU opens "-serial file:" with O_TRUNC: same inode, size back to 0.
    { std::ofstream(file, std::ios::trunc | std::ios::binary) << "new\n"; }
    EXPECT_EQ(collector_.wait_for(2), (std::vector<std::string>{"old line", "new"}));
    forwarder.remove(id);
}

TEST_F(ConsoleForwarderTest, SeveralFilesAtOnce) {
    ConsoleForwarder forwarder(collector_.emit());
    std::vector<ConsoleForwarder::Id> ids;
    for (int i = 0; i < 10; ++i) {
        ids.push_back(
            forwarder.add(dir_ / ("c" + std::to_string(i)), "f" + std::to_string(i), "i"));
    }
    for (int round = 0; round < 5; ++round) {
        for (int i = 0; i < 10; ++i) {
            append(dir_ / ("c" + std::to_string(i)), "line " + std::to_string(round) + "\n");
        }
    }
    auto texts = collector_.wait_for(50);
    EXPECT_EQ(texts.size(), 50u);
    std::map<std::string, int> per_function;
    for (const auto& l : collector_.lines()) {
        ++per_function[l.function];
    }
    EXPECT_EQ(per_function.size(), 10u);
    for (auto& [f, n] : per_function) {
        EXPECT_EQ(n, 5) << f;
    }
    for (auto id : ids) {
        forwarder.remove(id);
    }
}

TEST_F(ConsoleForwarderTest, VeryLongLinesComeInPieces) {
    ConsoleForwarder forwarder(collector_.emit());
    fs::path file = dir_ / "console.log";
    auto id = forwarder.add(file, "q", "cccccccccccc");
    append(file, std::string(ConsoleForwarder::kMaxLine * 2 + 10, 'x') + "\n");
    auto texts = collector_.wait_for(3);
    ASSERT_EQ(texts.size(), 3u);
    EXPECT_EQ(texts[0].size(), ConsoleForwarder::kMaxLine);
    EXPECT_EQ(texts[1].size(), ConsoleForwarder::kMaxLine);
    EXPECT_EQ(texts[2].size(), 10u);
    forwarder.remove(id);
}

TEST_F(ConsoleForwarderTest, ForwardedConsoleIsRaiiAndOptional) {
    ConsoleForwarder forwarder(collector_.emit());
    fs::path file = dir_ / "console.log";
    {
        ForwardedConsole console(&forwarder, file, "q", "dddddddddddd");
        append(file, "a\nb");
        collector_.wait_for(1);
    }
    EXPECT_EQ(collector_.texts(), (std::vector<std::string>{"a", "b"}));
    // Without a forwarder nothing happens; a file that cannot be opened is not fatal.
    ForwardedConsole none(nullptr, file, "q", "e");
    ForwardedConsole broken(&forwarder, dir_ / "no" / "such" / "dir", "q", "f");
}

TEST_F(ConsoleForwarderTest, UnreadableFileThrows) {
    ConsoleForwarder forwarder(collector_.emit());
    EXPECT_THROW(forwarder.add(dir_ / "missing-dir" / "console.log", "q", "x"), std::system_error);
}

}  // namespace
}  // namespace unifaas
