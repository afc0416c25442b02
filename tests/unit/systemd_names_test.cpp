// The pure parts of the systemd integration: unit names, scope memory limits, the log-message
// convention the journal fields come from, STATUS text, Docker's cgroup parent forms, the
// observer fan-out and the JOURNAL_STREAM check.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>

#include "pool/observer_list.h"
#include "sandbox/docker_backend.h"
#include "systemd/journal_sink.h"
#include "systemd/notify.h"
#include "systemd/scope_manager.h"

namespace unifaas {
namespace {

constexpr std::uint64_t MiB = 1024 * 1024;

// What the real `systemd-escape` prints for `text`; nullopt when it is not installed.
std::optional<std::string> systemd_escape(const std::string& text) {
    if (access("/usr/bin/systemd-escape", X_OK) != 0) {
        return std::nullopt;
    }
    std::string command = "/usr/bin/systemd-escape -- '" + text + "'";
    std::unique_ptr<FILE, int (*)(FILE*)> pipe(popen(command.c_str(), "r"), pclose);
    std::string out;
    std::array<char, 512> buf{};
    while (pipe && fgets(buf.data(), buf.size(), pipe.get())) {
        out += buf.data();
    }
    if (!out.empty() && out.back() == '\n') {
        out.pop_back();
    }
    return out;
}

TEST(UnitNames, EscapeLikeSystemdEscape) {
    EXPECT_EQ(escape_unit_name("hello"), "hello");
    EXPECT_EQ(escape_unit_name("hello-world"), "hello\\x2dworld");
    EXPECT_EQ(escape_unit_name("a_b.c:d"), "a_b.c:d");
    EXPECT_EQ(escape_unit_name(".hidden"), "\\x2ehidden");
    EXPECT_EQ(escape_unit_name("a b"), "a\\x20b");
    EXPECT_EQ(escape_unit_name("a\\b"), "a\\x5cb");
    EXPECT_EQ(escape_unit_name("a/b"), "a-b");
    EXPECT_EQ(escape_unit_name("caf\xc3\xa9"), "caf\\xc3\\xa9");
    for (std::string text : {"hello-world", ".x.y", "a b", "Fn_1.2-3", "caf\xc3\xa9", "x@y+z"}) {
        if (auto expected = systemd_escape(text)) {
            EXPECT_EQ(escape_unit_name(text), *expected) << text;
        }
    }
}

TEST(UnitNames, ScopeName) {
    EXPECT_EQ(scope_unit_name("hello", "0123456789ab"), "unifaas-hello-0123456789ab.scope");
    EXPECT_EQ(scope_unit_name("my-fn", "0123456789ab"), "unifaas-my\\x2dfn-0123456789ab.scope");
}

TEST(UnitNames, LongFunctionNamesAreCutOutsideEscapes) {
    for (std::size_t length = 200; length < 300; ++length) {
        std::string function(length, 'a');
        for (std::size_t i = 3; i < length; i += 7) {
            function[i] = '-';  // "\x2d" in the unit name
        }
        std::string name = scope_unit_name(function, "0123456789ab");
        ASSERT_LE(name.size(), 255u) << length;
        ASSERT_TRUE(name.ends_with("-0123456789ab.scope"));
        std::string middle = name.substr(8, name.size() - 8 - 19);
        // Every backslash starts a complete "\xNN".
        for (std::size_t i = middle.find('\\'); i != std::string::npos;
             i = middle.find('\\', i + 1)) {
            ASSERT_LE(i + 4, middle.size()) << name;
            ASSERT_EQ(middle.substr(i, 4), "\\x2d") << name;
        }
    }
}

TEST(ScopeMemory, GuestPlusTenPercentPlusOverhead) {
    EXPECT_EQ(scope_memory_max(128), (128 + 13 + 64) * MiB);
    EXPECT_EQ(scope_memory_max(1000), (1000 + 100 + 64) * MiB);
    EXPECT_EQ(scope_memory_max(0), 64 * MiB);
    EXPECT_EQ(scope_memory_max(256, 256), (256 + 26 + 64 + 256) * MiB);
}

TEST(LogSubject, FunctionAndInstance) {
    auto s = parse_log_subject("function hello instance 0123456789ab: ready in 812 ms");
    EXPECT_EQ(s.function, "hello");
    EXPECT_EQ(s.instance, "0123456789ab");
}

TEST(LogSubject, FunctionOnly) {
    auto s = parse_log_subject("function my-fn.v2: instance 0123456789ab was stopped (idle)");
    EXPECT_EQ(s.function, "my-fn.v2");
    EXPECT_EQ(s.instance, "");
}

TEST(LogSubject, NotAboutAFunction) {
    for (const char* text : {
             "unifaas 0.1.0 serving 3 functions",
             "docker: hello instance 0123456789ab: container 3f2a at 172.17.0.2",
             "function \"x\" is not a container function",
             "function hello",
             "function hello is broken",
             "function : empty",
             "function -x: bad first character",
             "functions loaded: 3",
         }) {
        auto s = parse_log_subject(text);
        EXPECT_EQ(s.function, "") << text;
        EXPECT_EQ(s.instance, "") << text;
    }
}

TEST(LogSubject, MalformedInstanceGivesNoFields) {
    for (const char* text : {
             "function hello instance 0123456789a: short id",
             "function hello instance 0123456789abc: long id",
             "function hello instance 0123456789AB: upper case",
             "function hello instance 0123456789ab",
         }) {
        auto s = parse_log_subject(text);
        EXPECT_EQ(s.function, "") << text;
        EXPECT_EQ(s.instance, "") << text;
    }
}

TEST(LogSubject, Priorities) {
    EXPECT_EQ(journal_priority(spdlog::level::trace), 7);
    EXPECT_EQ(journal_priority(spdlog::level::debug), 7);
    EXPECT_EQ(journal_priority(spdlog::level::info), 6);
    EXPECT_EQ(journal_priority(spdlog::level::warn), 4);
    EXPECT_EQ(journal_priority(spdlog::level::err), 3);
    EXPECT_EQ(journal_priority(spdlog::level::critical), 2);
}

TEST(Status, Plurals) {
    EXPECT_EQ(format_status({1, 0, 1, 0}), "1 function, 1 instance");
    EXPECT_EQ(format_status({3, 0, 2, 1}), "3 functions, 2 instances (1 booting)");
    EXPECT_EQ(format_status({0, 0, 0, 0}), "0 functions, 0 instances");
    EXPECT_EQ(format_status({3, 1, 0, 0}), "3 functions (1 with errors), 0 instances");
}

TEST(DockerCgroups, ParentFormPerDriver) {
    EXPECT_EQ(docker_cgroup_parent("systemd", "unifaas.slice"), "unifaas.slice");
    EXPECT_EQ(docker_cgroup_parent("cgroupfs", "unifaas.slice"), "/unifaas.slice");
    EXPECT_EQ(docker_cgroup_parent("none", "unifaas.slice"), "");
    EXPECT_EQ(docker_container_unit("systemd", "unifaas.slice", "abc"), "docker-abc.scope");
    EXPECT_EQ(docker_container_unit("cgroupfs", "/unifaas.slice", "abc"), "/unifaas.slice/abc");
    EXPECT_EQ(docker_container_unit("cgroupfs", "", "abc"), "");
}

class Counting : public PoolObserver {
  public:
    void instance_started(const InstanceSnapshot&) override { ++started; }
    void instance_changed(const InstanceSnapshot&) override { ++changed; }
    void instance_stopped(const InstanceSnapshot&, const std::string& reason) override {
        ++stopped;
        last_reason = reason;
    }
    int started = 0, changed = 0, stopped = 0;
    std::string last_reason;
};

TEST(ObserverList, ForwardsToEveryObserver) {
    Counting a, b;
    ObserverList list;
    EXPECT_TRUE(list.empty());
    list.add(&a);
    list.add(nullptr);
    list.add(&b);
    InstanceSnapshot s;
    list.instance_started(s);
    list.instance_changed(s);
    list.instance_changed(s);
    list.instance_stopped(s, "keepalive");
    for (auto* c : {&a, &b}) {
        EXPECT_EQ(c->started, 1);
        EXPECT_EQ(c->changed, 2);
        EXPECT_EQ(c->stopped, 1);
        EXPECT_EQ(c->last_reason, "keepalive");
    }
}

// Restores an environment variable on scope exit.
class EnvGuard {
  public:
    explicit EnvGuard(const char* name) : name_(name) {
        if (const char* v = std::getenv(name)) {
            old_ = v;
        }
    }
    ~EnvGuard() {
        if (old_) {
            setenv(name_, old_->c_str(), 1);
        } else {
            unsetenv(name_);
        }
    }

  private:
    const char* name_;
    std::optional<std::string> old_;
};

TEST(JournalStream, MatchesStderrOnly) {
    EnvGuard guard("JOURNAL_STREAM");
    struct stat st {};
    ASSERT_EQ(fstat(STDERR_FILENO, &st), 0);
    std::string mine = std::to_string(st.st_dev) + ":" + std::to_string(st.st_ino);
    setenv("JOURNAL_STREAM", mine.c_str(), 1);
    EXPECT_TRUE(running_under_journal());
    setenv("JOURNAL_STREAM", (mine + "1").c_str(), 1);
    EXPECT_FALSE(running_under_journal());
    setenv("JOURNAL_STREAM", "garbage", 1);
    EXPECT_FALSE(running_under_journal());
    unsetenv("JOURNAL_STREAM");
    EXPECT_FALSE(running_under_journal());
}

// On a machine whose init is not systemd, connect() refuses with a reason (and never throws).
TEST(ScopeManagerConnect, ExplainsWhyWithoutSystemd) {
    struct stat st {};
    if (stat("/run/systemd/system", &st) == 0) {
        GTEST_SKIP() << "systemd is the init system here";
    }
    std::string reason;
    auto scopes = ScopeManager::connect(reason);
    EXPECT_EQ(scopes, nullptr);
    EXPECT_NE(reason.find("systemd is not the init system"), std::string::npos) << reason;
}

}  // namespace
}  // namespace unifaas
