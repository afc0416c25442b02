// Registry: the function directories under one path, each <dir>/<name>/function.toml, read on
// demand and re-read whenever the file changes, so edits apply without a restart.
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

    // The current definition of `name`. nullopt when the name is invalid (is_valid_function_name)
    // or <dir>/<name>/function.toml does not exist. Re-parses only when the file changed on disk
    // since the last call (st_dev, st_ino, st_size, st_mtim, st_ctim of one stat()); otherwise
    // returns the cached Entry (same shared_ptr). Thread-safe; parsing happens outside the lock.
    std::optional<Entry> lookup(std::string_view name);

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
    };
    struct NameHash {
        using is_transparent = void;
        std::size_t operator()(std::string_view name) const {
            return std::hash<std::string_view>{}(name);
        }
    };

    std::optional<Entry> cached(std::string_view name, const FileStamp& stamp);
    Entry load(std::string_view name) const;

    std::filesystem::path dir_;
    std::chrono::milliseconds error_retry_;
    std::mutex mutex_;
    std::unordered_map<std::string, Cached, NameHash, std::equal_to<>> cache_;
};

}  // namespace unifaas
