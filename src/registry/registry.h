// Registry: the function directories under one path, each <dir>/<name>/function.toml, read on
// demand and re-read whenever the file changes, so edits apply without a restart.
// Changes are seen through inotify (a watch on the registry directory and on each function
// directory looked up): a definition stays cached, without a stat per lookup, until an event
// names its function.toml or directory. Where a watch cannot vouch for the file (inotify
// unavailable or out of watches, function.toml a symlink, the registry directory moved away), a
// lookup compares one stat() of function.toml with the one the cached definition was read at.
#pragma once

#include <chrono>
#include <filesystem>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "config/function_spec.h"
#include "util/unique_fd.h"

namespace unifaas {

class Registry {
  public:
    // ConfigError if dir is not a directory; stores the absolute path. A definition that failed to
    // load is retried after error_retry even when function.toml did not change, since the error
    // may be about another file (a kernel or image created later).
    explicit Registry(std::filesystem::path dir,
                      std::chrono::milliseconds error_retry = std::chrono::seconds(1));

    struct Entry {
        std::shared_ptr<const FunctionSpec> spec;  // set when function.toml loads
        std::string error;                         // set (the ConfigError text) when it does not
    };

    // How a lookup makes sure that the definition it returns is current.
    enum class Freshness {
        Checked,  // reads the pending change events first (one syscall): any edit finished
                  // before the call is seen
        Watched,  // trusts the caller's event loop to serve watch_fd() before its other events
                  // (EventLoop::add_first): no syscall when nothing changed
    };

    // The current definition of `name`. nullopt when the name is invalid (is_valid_function_name)
    // or <dir>/<name>/function.toml does not exist. Re-parses only when the file changed;
    // otherwise returns the cached Entry (same shared_ptr). Thread-safe; parsing happens outside
    // the lock.
    std::optional<Entry> lookup(std::string_view name, Freshness freshness = Freshness::Checked);

    // Readable when a change event is pending (-1 without inotify); drain_changes() reads them.
    int watch_fd() const { return inotify_.get(); }
    void drain_changes();
    // Called after a drain that saw a function appear, change or go, on the draining thread with
    // the registry's lock held (so it must not call back into the registry). Empty: nothing.
    // A directory created in the registry is watched at once, so its function.toml written later
    // is such a change too.
    void on_change(std::function<void()> hook);

    // Names of the function directories present now (valid names containing function.toml),
    // sorted. Empty when the registry directory cannot be read.
    std::vector<std::string> scan() const;

    const std::filesystem::path& dir() const { return dir_; }

  private:
    // Identity and version of function.toml as seen by one stat().
    struct FileStamp {
        std::uint64_t dev = 0, ino = 0;
        std::int64_t size = 0;
        std::int64_t mtime_sec = 0, mtime_nsec = 0, ctime_sec = 0, ctime_nsec = 0;
        bool operator==(const FileStamp&) const = default;
    };
    struct Cached {
        FileStamp stamp;
        Entry entry;
        std::chrono::steady_clock::time_point loaded;
        bool watched = false;  // a watch vouches for it: dropped from the cache on any change
    };
    struct NameHash {
        using is_transparent = void;
        std::size_t operator()(std::string_view name) const {
            return std::hash<std::string_view>{}(name);
        }
    };

    std::optional<Entry> read(std::string_view name);
    std::optional<Entry> cached(std::string_view name, const FileStamp& stamp);
    Entry load(std::string_view name) const;
    // Mutex held. A watch on <dir>/<name> (added once); false when none can vouch for it.
    bool watch_function_dir_locked(const std::string& name);
    void drain_changes_locked();
    void changed_locked(int wd, std::uint32_t mask, std::string_view file);
    void forget_name_watch_locked(const std::string& name);

    std::filesystem::path dir_;
    std::chrono::milliseconds error_retry_;
    std::mutex mutex_;
    std::unordered_map<std::string, Cached, NameHash, std::equal_to<>> cache_;
    // Change watching. `changes_` counts drained events: a read that saw it move may have raced
    // an edit and is not cached as watched.
    UniqueFd inotify_;
    int registry_wd_ = -1;  // -1: no watch vouches for anything (inotify unusable, dir moved)
    std::unordered_map<int, std::vector<std::string>> names_by_wd_;
    std::unordered_map<std::string, int> wd_by_name_;
    std::uint64_t changes_ = 0;
    std::function<void()> on_change_;
};

}  // namespace unifaas
