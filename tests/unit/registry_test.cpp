// Registry: lookups, caching (by change events, else by file identity), edits picked up without
// restart, scan().
#include "registry/registry.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

namespace unifaas {
namespace {

namespace fs = std::filesystem;

const std::string kContainer = "[container]\nimage = \"hello\"\n";

class RegistryTest : public ::testing::Test {
  protected:
    void SetUp() override {
        char pattern[] = "/tmp/unifaas-registry-test-XXXXXX";
        ASSERT_NE(mkdtemp(pattern), nullptr);
        dir_ = pattern;
    }
    void TearDown() override { fs::remove_all(dir_); }

    fs::path toml(const std::string& name) const { return dir_ / name / "function.toml"; }

    void write(const std::string& name, const std::string& content) {
        fs::create_directories(dir_ / name);
        std::ofstream(toml(name)) << content;
    }

    // Replaces function.toml the way editors do: a new file renamed over the old one.
    void replace(const std::string& name, const std::string& content) {
        fs::path tmp = dir_ / name / ".function.toml.tmp";
        std::ofstream(tmp) << content;
        fs::rename(tmp, toml(name));
    }

    fs::path dir_;
};

TEST_F(RegistryTest, ConstructorNeedsADirectory) {
    EXPECT_THROW(Registry(dir_ / "missing"), ConfigError);
    std::ofstream(dir_ / "file").flush();
    EXPECT_THROW(Registry(dir_ / "file"), ConfigError);
    try {
        Registry registry(dir_ / "missing");
    } catch (const ConfigError& e) {
        EXPECT_EQ(std::string(e.what()), (dir_ / "missing").string() +
                                             ": cannot open registry: No such file or directory");
    }
    try {
        Registry registry(dir_ / "file");
    } catch (const ConfigError& e) {
        EXPECT_EQ(std::string(e.what()),
                  (dir_ / "file").string() + ": registry is not a directory");
    }
}

TEST_F(RegistryTest, DirIsAbsolute) {
    EXPECT_EQ(Registry(dir_.string() + "/").dir(), dir_);
    EXPECT_EQ(Registry(dir_ / "." / "x" / "..").dir(), dir_);  // lexical: "x" need not exist
    fs::path cwd = fs::current_path();
    fs::current_path(dir_.parent_path());
    Registry relative(dir_.filename());
    fs::current_path(cwd);
    EXPECT_EQ(relative.dir(), dir_);
}

TEST_F(RegistryTest, LookupLoadsSpec) {
    write("hello", kContainer);
    Registry registry(dir_);
    auto entry = registry.lookup("hello");
    ASSERT_TRUE(entry.has_value());
    ASSERT_NE(entry->spec, nullptr);
    EXPECT_TRUE(entry->error.empty());
    EXPECT_EQ(entry->spec->name, "hello");
    EXPECT_EQ(entry->spec->dir, dir_ / "hello");
    EXPECT_EQ(entry->spec->container().image, "hello");
}

TEST_F(RegistryTest, UnchangedFileGivesSamePointer) {
    write("hello", kContainer);
    Registry registry(dir_);
    auto first = registry.lookup("hello");
    auto second = registry.lookup("hello");
    ASSERT_TRUE(first && second);
    EXPECT_EQ(first->spec.get(), second->spec.get());
}

TEST_F(RegistryTest, EditIsPickedUp) {
    write("hello", kContainer);
    Registry registry(dir_);
    auto before = registry.lookup("hello");
    write("hello", "keepalive = 5\n" + kContainer);  // in place, different size
    auto after = registry.lookup("hello");
    ASSERT_TRUE(before && after && after->spec);
    EXPECT_NE(before->spec.get(), after->spec.get());
    EXPECT_EQ(before->spec->keepalive, Seconds(60));  // old instances keep their spec
    EXPECT_EQ(after->spec->keepalive, Seconds(5));
    EXPECT_EQ(registry.lookup("hello")->spec.get(), after->spec.get());
}

TEST_F(RegistryTest, SameSizeReplacementIsPickedUp) {
    write("hello", "keepalive = 1\n" + kContainer);
    Registry registry(dir_);
    auto before = registry.lookup("hello");
    replace("hello", "keepalive = 2\n" + kContainer);  // new inode, same size
    auto after = registry.lookup("hello");
    ASSERT_TRUE(after && after->spec);
    EXPECT_EQ(after->spec->keepalive, Seconds(2));
}

TEST_F(RegistryTest, SameSizeInPlaceEditIsPickedUp) {
    write("hello", "keepalive = 1\n" + kContainer);
    Registry registry(dir_);
    auto before = registry.lookup("hello");
    ASSERT_TRUE(before && before->spec);
    struct stat st {};
    ASSERT_EQ(stat(toml("hello").c_str(), &st), 0);

    write("hello", "keepalive = 2\n" + kContainer);  // same inode, same size
    // The edit may land within the same timestamp tick; give it a distinct mtime so the test does
    // not depend on the filesystem's timestamp granularity.
    timespec times[2] = {st.st_atim, st.st_mtim};
    times[1].tv_nsec = (times[1].tv_nsec + 1) % 1000000000;
    ASSERT_EQ(utimensat(AT_FDCWD, toml("hello").c_str(), times, 0), 0);

    auto after = registry.lookup("hello");
    ASSERT_TRUE(after && after->spec);
    EXPECT_EQ(after->spec->keepalive, Seconds(2));
}

// The same inode, the same size, and (most of the time) the same timestamp tick: a stat cannot
// tell the versions apart, the change event can.
TEST_F(RegistryTest, SameSizeInPlaceEditInOneTickIsPickedUp) {
    write("hello", "keepalive = 1\n" + kContainer);
    Registry registry(dir_);
    ASSERT_GE(registry.watch_fd(), 0) << "no inotify here";
    for (int i = 2; i <= 9; ++i) {
        write("hello", "keepalive = " + std::to_string(i) + "\n" + kContainer);
        auto entry = registry.lookup("hello");
        ASSERT_TRUE(entry && entry->spec);
        EXPECT_EQ(entry->spec->keepalive, Seconds(i));
    }
}

// A Watched lookup costs no syscall: it trusts its event loop to drain the change watch first.
// Until that happens it keeps the cached definition; the watch is readable from the edit on.
TEST_F(RegistryTest, WatchedLookupSeesAnEditOnceTheWatchIsDrained) {
    write("hello", "keepalive = 1\n" + kContainer);
    Registry registry(dir_);
    ASSERT_GE(registry.watch_fd(), 0) << "no inotify here";
    auto before = registry.lookup("hello", Registry::Freshness::Watched);
    ASSERT_TRUE(before && before->spec);
    pollfd p{registry.watch_fd(), POLLIN, 0};
    EXPECT_EQ(poll(&p, 1, 0), 0);  // nothing pending

    replace("hello", "keepalive = 22\n" + kContainer);
    EXPECT_EQ(poll(&p, 1, 0), 1);  // the event is queued when the rename returns
    auto stale = registry.lookup("hello", Registry::Freshness::Watched);
    ASSERT_TRUE(stale && stale->spec);
    EXPECT_EQ(stale->spec.get(), before->spec.get());

    registry.drain_changes();
    EXPECT_EQ(poll(&p, 1, 0), 0);
    auto after = registry.lookup("hello", Registry::Freshness::Watched);
    ASSERT_TRUE(after && after->spec);
    EXPECT_EQ(after->spec->keepalive, Seconds(22));
    // Cached again: the same definition until the next change.
    EXPECT_EQ(registry.lookup("hello", Registry::Freshness::Watched)->spec.get(),
              after->spec.get());
}

// Other files of a function's directory (an image being built there) keep its definition cached.
TEST_F(RegistryTest, OtherFilesInTheFunctionDirectoryKeepTheDefinition) {
    write("hello", kContainer);
    Registry registry(dir_);
    auto before = registry.lookup("hello", Registry::Freshness::Watched);
    ASSERT_TRUE(before && before->spec);
    std::ofstream(dir_ / "hello" / "rootfs.img") << std::string(4096, 'x');
    fs::create_directories(dir_ / "hello" / "rootfs");
    registry.drain_changes();
    EXPECT_EQ(registry.lookup("hello", Registry::Freshness::Watched)->spec.get(),
              before->spec.get());
    EXPECT_EQ(registry.lookup("hello")->spec.get(), before->spec.get());
}

// A linked function.toml is edited where it points: the watch cannot see that, so such a file is
// compared by stat on every lookup, Watched or not.
TEST_F(RegistryTest, SymlinkedFunctionTomlIsStatEveryTime) {
    fs::create_directories(dir_ / "elsewhere");
    std::ofstream(dir_ / "elsewhere" / "real.toml") << "keepalive = 1\n" << kContainer;
    fs::create_directories(dir_ / "linked");
    fs::create_symlink(dir_ / "elsewhere" / "real.toml", toml("linked"));
    Registry registry(dir_);
    auto before = registry.lookup("linked", Registry::Freshness::Watched);
    ASSERT_TRUE(before && before->spec);
    std::ofstream(dir_ / "elsewhere" / "new.toml") << "keepalive = 333\n" << kContainer;
    fs::rename(dir_ / "elsewhere" / "new.toml", dir_ / "elsewhere" / "real.toml");
    auto after = registry.lookup("linked", Registry::Freshness::Watched);
    ASSERT_TRUE(after && after->spec);
    EXPECT_EQ(after->spec->keepalive, Seconds(333));
}

// A function directory swapped for another (mv old away, mv new in): the new one is read, and
// later edits of the new one are seen too (the watch follows the name, not the old directory).
TEST_F(RegistryTest, SwappedFunctionDirectoryIsWatchedAfresh) {
    write("hello", "keepalive = 1\n" + kContainer);
    Registry registry(dir_);
    ASSERT_TRUE(registry.lookup("hello", Registry::Freshness::Watched));
    write("next", "keepalive = 2\n" + kContainer);
    fs::rename(dir_ / "hello", dir_ / "old");
    fs::rename(dir_ / "next", dir_ / "hello");
    registry.drain_changes();
    auto swapped = registry.lookup("hello", Registry::Freshness::Watched);
    ASSERT_TRUE(swapped && swapped->spec);
    EXPECT_EQ(swapped->spec->keepalive, Seconds(2));

    write("old", "keepalive = 7\n" + kContainer);  // the directory watched before: not "hello"
    registry.drain_changes();
    EXPECT_EQ(registry.lookup("hello", Registry::Freshness::Watched)->spec->keepalive, Seconds(2));
    replace("hello", "keepalive = 3\n" + kContainer);
    registry.drain_changes();
    EXPECT_EQ(registry.lookup("hello", Registry::Freshness::Watched)->spec->keepalive, Seconds(3));
}

// Two names linked to one directory share its watch; an edit reaches both.
TEST_F(RegistryTest, TwoNamesForOneDirectoryBothSeeAnEdit) {
    write("hello", "keepalive = 1\n" + kContainer);
    fs::create_directory_symlink(dir_ / "hello", dir_ / "alias");
    Registry registry(dir_);
    ASSERT_TRUE(registry.lookup("hello", Registry::Freshness::Watched));
    ASSERT_TRUE(registry.lookup("alias", Registry::Freshness::Watched));
    replace("hello", "keepalive = 5\n" + kContainer);
    registry.drain_changes();
    EXPECT_EQ(registry.lookup("hello", Registry::Freshness::Watched)->spec->keepalive, Seconds(5));
    EXPECT_EQ(registry.lookup("alias", Registry::Freshness::Watched)->spec->keepalive, Seconds(5));
}

// The change hook runs once per drain that saw a function appear, change or go, and not for other
// files. A directory made in the registry is watched at once: its function.toml written after it
// (nothing looked the name up) is a change too.
TEST_F(RegistryTest, ChangeHookSeesFunctionsAppearChangeAndGo) {
    write("hello", "keepalive = 1\n" + kContainer);
    Registry registry(dir_);
    int calls = 0;
    registry.on_change([&] { ++calls; });
    ASSERT_TRUE(registry.lookup("hello"));
    registry.drain_changes();
    EXPECT_EQ(calls, 0) << "nothing changed";

    std::ofstream(dir_ / "hello" / "image.tar") << "not the definition";
    registry.drain_changes();
    EXPECT_EQ(calls, 0) << "another file of a function directory";

    replace("hello", "keepalive = 2\n" + kContainer);
    registry.drain_changes();
    EXPECT_EQ(calls, 1) << "function.toml replaced";

    fs::create_directory(dir_ / "later");
    registry.drain_changes();
    EXPECT_EQ(calls, 2) << "a directory appeared";
    std::ofstream(toml("later")) << kContainer;
    registry.drain_changes();
    EXPECT_EQ(calls, 3) << "function.toml of a directory never looked up";

    fs::remove_all(dir_ / "hello");
    registry.drain_changes();
    EXPECT_EQ(calls, 4) << "a function went";

    registry.on_change(nullptr);
    replace("later", "keepalive = 3\n" + kContainer);
    registry.drain_changes();
    EXPECT_EQ(calls, 4) << "the hook was removed";
}

TEST_F(RegistryTest, NewDirectoryAppears) {
    Registry registry(dir_);
    EXPECT_FALSE(registry.lookup("later").has_value());
    write("later", kContainer);
    auto entry = registry.lookup("later");
    ASSERT_TRUE(entry && entry->spec);
    EXPECT_EQ(entry->spec->name, "later");
}

TEST_F(RegistryTest, DeletedDirectoryDisappears) {
    write("gone", kContainer);
    Registry registry(dir_);
    ASSERT_TRUE(registry.lookup("gone").has_value());
    fs::remove_all(dir_ / "gone");
    EXPECT_FALSE(registry.lookup("gone").has_value());
    write("gone", "keepalive = 7\n" + kContainer);
    auto entry = registry.lookup("gone");
    ASSERT_TRUE(entry && entry->spec);
    EXPECT_EQ(entry->spec->keepalive, Seconds(7));
}

TEST_F(RegistryTest, DirectoryWithoutFunctionTomlIsAbsent) {
    fs::create_directories(dir_ / "empty");
    std::ofstream(dir_ / "plainfile").flush();
    Registry registry(dir_);
    EXPECT_FALSE(registry.lookup("empty").has_value());
    EXPECT_FALSE(registry.lookup("plainfile").has_value());
    EXPECT_FALSE(registry.lookup("nothing").has_value());
}

TEST_F(RegistryTest, BrokenThenFixed) {
    write("hello", "concurrent-requests = 0\n" + kContainer);
    Registry registry(dir_);
    auto broken = registry.lookup("hello");
    ASSERT_TRUE(broken.has_value());
    EXPECT_EQ(broken->spec, nullptr);
    EXPECT_EQ(broken->error,
              toml("hello").string() + ": concurrent-requests: must be at least 1 (got 0)");

    write("hello", "concurrent-requests = 2\n" + kContainer);
    auto fixed = registry.lookup("hello");
    ASSERT_TRUE(fixed && fixed->spec);
    EXPECT_TRUE(fixed->error.empty());
    EXPECT_EQ(fixed->spec->concurrent_requests, 2u);
}

TEST_F(RegistryTest, SyntaxErrorEntry) {
    write("hello", "concurrent-requests = = 1\n");
    Registry registry(dir_);
    auto entry = registry.lookup("hello");
    ASSERT_TRUE(entry.has_value());
    EXPECT_EQ(entry->spec, nullptr);
    EXPECT_TRUE(entry->error.starts_with(toml("hello").string() + ":1:")) << entry->error;
}

const std::string kVm =
    "[vm]\nkernel = \"vmlinux\"\nimage = \"rootfs\"\nhypervisor = { type = \"firecracker\" }\n";

TEST_F(RegistryTest, ErrorEntryIsCachedWithinRetryInterval) {
    write("vm", kVm);
    Registry registry(dir_, std::chrono::hours(1));
    auto first = registry.lookup("vm");
    ASSERT_TRUE(first && !first->spec);
    EXPECT_NE(first->error.find("vm.kernel: " + (dir_ / "vm" / "vmlinux").string()),
              std::string::npos)
        << first->error;
    std::ofstream(dir_ / "vm" / "vmlinux").flush();
    std::ofstream(dir_ / "vm" / "rootfs").flush();
    auto second = registry.lookup("vm");
    ASSERT_TRUE(second.has_value());
    EXPECT_EQ(second->spec, nullptr);  // function.toml unchanged, retry not due yet
}

TEST_F(RegistryTest, ErrorEntryIsRetriedForFilesOtherThanFunctionToml) {
    write("vm", kVm);
    Registry registry(dir_, std::chrono::milliseconds(0));
    auto first = registry.lookup("vm");
    ASSERT_TRUE(first && !first->spec);
    std::ofstream(dir_ / "vm" / "vmlinux").flush();
    std::ofstream(dir_ / "vm" / "rootfs").flush();
    auto second = registry.lookup("vm");
    ASSERT_TRUE(second && second->spec) << second->error;
    EXPECT_EQ(registry.lookup("vm")->spec.get(), second->spec.get());  // specs stay cached
}

TEST_F(RegistryTest, InvalidNamesAreNeverLookedUp) {
    // Every one of these would find a function.toml if it were used as a path.
    fs::path reg = dir_ / "reg";
    std::ofstream(dir_ / "function.toml") << kContainer;  // reached by ".."
    fs::create_directories(reg / "x");
    std::ofstream(reg / "function.toml") << kContainer;  // reached by "." and ""
    std::ofstream(reg / "x" / "function.toml") << kContainer;
    for (const char* dir : {".hidden", "-a", "a b", "a/b", "x/y"}) {
        fs::create_directories(reg / dir);
        std::ofstream(reg / dir / "function.toml") << kContainer;
    }
    Registry registry(reg);
    ASSERT_TRUE(registry.lookup("x").has_value());
    for (const std::string& name : std::vector<std::string>{
             "", ".", "..", ".hidden", "a/b", "x/y", "../reg/x", "./x", "x/", "a b", "-a",
             (reg / "x").string(), std::string(129, 'a'), std::string("x\0", 2)}) {
        EXPECT_FALSE(registry.lookup(name).has_value()) << name;
    }
    EXPECT_EQ(registry.scan(), std::vector<std::string>{"x"});
}

TEST_F(RegistryTest, ScanListsValidFunctionDirsSorted) {
    write("zeta", kContainer);
    write("alpha", kContainer);
    write("broken", "nonsense = \n");  // listed: present, even if it does not load
    write(".hidden", kContainer);
    fs::create_directories(dir_ / "no-toml");
    std::ofstream(dir_ / "file.toml").flush();
    Registry registry(dir_);
    EXPECT_EQ(registry.scan(), (std::vector<std::string>{"alpha", "broken", "zeta"}));
    fs::remove_all(dir_ / "zeta");
    write("beta", kContainer);
    EXPECT_EQ(registry.scan(), (std::vector<std::string>{"alpha", "beta", "broken"}));
}

TEST_F(RegistryTest, ScanOfVanishedRegistryIsEmpty) {
    fs::path sub = dir_ / "reg";
    fs::create_directories(sub / "fn");
    std::ofstream(sub / "fn" / "function.toml") << kContainer;
    Registry registry(sub);
    EXPECT_EQ(registry.scan(), std::vector<std::string>{"fn"});
    fs::remove_all(sub);
    EXPECT_TRUE(registry.scan().empty());
    EXPECT_FALSE(registry.lookup("fn").has_value());
}

TEST_F(RegistryTest, ConcurrentLookupsWhileEditing) {
    write("hello", kContainer);
    Registry registry(dir_);
    std::atomic<bool> stop{false};
    std::atomic<int> bad{0};
    std::vector<std::thread> readers;
    for (int i = 0; i < 4; ++i) {
        readers.emplace_back([&] {
            while (!stop) {
                auto entry = registry.lookup("hello");
                // Mid-rename the name may briefly have no spec; never a null spec without error.
                if (entry && !entry->spec && entry->error.empty()) {
                    ++bad;
                }
            }
        });
    }
    for (int i = 1; i <= 50; ++i) {
        replace("hello", "keepalive = " + std::to_string(i) + "\n" + kContainer);
    }
    stop = true;
    for (auto& reader : readers) {
        reader.join();
    }
    EXPECT_EQ(bad, 0);
    auto last = registry.lookup("hello");
    ASSERT_TRUE(last && last->spec);
    EXPECT_EQ(last->spec->keepalive, Seconds(50));
}

}  // namespace
}  // namespace unifaas
