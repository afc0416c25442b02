#include "registry/registry.h"

#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <system_error>

namespace unifaas {

namespace fs = std::filesystem;

namespace {

constexpr const char* kSpecFile = "function.toml";

std::string errno_text(int err) {
    return std::error_code(err, std::generic_category()).message();
}

fs::path absolute_dir(const fs::path& dir) {
    fs::path out = fs::absolute(dir).lexically_normal();
    if (out.has_parent_path() && out.filename().empty()) {
        out = out.parent_path();
    }
    return out;
}

}  // namespace

Registry::Registry(fs::path dir, std::chrono::milliseconds error_retry)
    : dir_(absolute_dir(dir)), error_retry_(error_retry) {
    struct stat st {};
    if (::stat(dir_.c_str(), &st) != 0) {
        throw ConfigError(dir_.string() + ": cannot open registry: " + errno_text(errno));
    }
    if (!S_ISDIR(st.st_mode)) {
        throw ConfigError(dir_.string() + ": registry is not a directory");
    }
}

std::optional<Registry::Entry> Registry::lookup(std::string_view name) {
    if (!is_valid_function_name(name)) {
        return std::nullopt;
    }
    // Plain concatenation: fs::path's operator/ splits components (on every invocation).
    std::string file;
    file.reserve(dir_.native().size() + name.size() + 16);
    file.append(dir_.native()).append("/").append(name).append("/").append(kSpecFile);
    struct stat st {};
    if (::stat(file.c_str(), &st) != 0) {
        int err = errno;
        if (err == ENOENT || err == ENOTDIR) {
            std::lock_guard lock(mutex_);
            if (auto it = cache_.find(name); it != cache_.end()) {
                cache_.erase(it);
            }
            return std::nullopt;
        }
        return Entry{nullptr, file + ": cannot read: " + errno_text(err)};
    }
    FileStamp stamp{static_cast<std::uint64_t>(st.st_dev),
                    static_cast<std::uint64_t>(st.st_ino),
                    static_cast<std::int64_t>(st.st_size),
                    st.st_mtim.tv_sec,
                    st.st_mtim.tv_nsec,
                    st.st_ctim.tv_sec,
                    st.st_ctim.tv_nsec};
    if (auto entry = cached(name, stamp)) {
        return entry;
    }
    // The stat came first: an edit racing with this load leaves a newer stamp on disk than the
    // one stored, so the next lookup loads again rather than keeping stale content.
    Entry entry = load(name);
    std::lock_guard lock(mutex_);
    cache_.insert_or_assign(std::string(name),
                            Cached{stamp, entry, std::chrono::steady_clock::now()});
    return entry;
}

std::optional<Registry::Entry> Registry::cached(std::string_view name, const FileStamp& stamp) {
    std::lock_guard lock(mutex_);
    auto it = cache_.find(name);
    if (it == cache_.end() || it->second.stamp != stamp) {
        return std::nullopt;
    }
    const Cached& cached = it->second;
    if (!cached.entry.spec && std::chrono::steady_clock::now() - cached.loaded >= error_retry_) {
        return std::nullopt;
    }
    return cached.entry;
}

Registry::Entry Registry::load(std::string_view name) const {
    try {
        return Entry{load_function_spec(dir_ / name), {}};
    } catch (const std::exception& e) {
        return Entry{nullptr, e.what()};
    }
}

std::vector<std::string> Registry::scan() const {
    std::vector<std::string> names;
    std::error_code ec;
    for (fs::directory_iterator it(dir_, ec), end; !ec && it != end; it.increment(ec)) {
        std::string name = it->path().filename().string();
        struct stat st {};
        if (is_valid_function_name(name) && ::stat((it->path() / kSpecFile).c_str(), &st) == 0) {
            names.push_back(std::move(name));
        }
    }
    std::sort(names.begin(), names.end());
    return names;
}

}  // namespace unifaas
