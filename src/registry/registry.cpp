#include "registry/registry.h"

#include <sys/inotify.h>
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <system_error>

namespace unifaas {

namespace fs = std::filesystem;

namespace {

constexpr const char* kSpecFile = "function.toml";

// What is watched. The registry directory: function directories (or links to them) appearing,
// going or changing; the directory itself going. A function directory: its function.toml
// closed after writing, replaced, removed or touched; the directory itself going. Not IN_MODIFY:
// every write() to any file there (an image being built next to function.toml) would wake the
// loops, and a file half written is better not read before it is closed.
constexpr std::uint32_t kRegistryEvents = IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO |
                                          IN_ATTRIB | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR;
constexpr std::uint32_t kFunctionDirEvents = IN_CLOSE_WRITE | IN_ATTRIB | IN_CREATE | IN_DELETE |
                                             IN_MOVED_FROM | IN_MOVED_TO | IN_DELETE_SELF |
                                             IN_MOVE_SELF | IN_ONLYDIR;
constexpr std::uint32_t kWatchGone = IN_DELETE_SELF | IN_MOVE_SELF | IN_IGNORED;

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
    // Without a watch (no inotify, no watch left) every lookup compares a stat() instead.
    inotify_.reset(::inotify_init1(IN_NONBLOCK | IN_CLOEXEC));
    if (inotify_) {
        registry_wd_ = ::inotify_add_watch(inotify_.get(), dir_.c_str(), kRegistryEvents);
    }
}

std::optional<Registry::Entry> Registry::lookup(std::string_view name, Freshness freshness) {
    if (!is_valid_function_name(name)) {
        return std::nullopt;
    }
    {
        std::lock_guard lock(mutex_);
        if (freshness == Freshness::Checked) {
            drain_changes_locked();
        }
        if (auto it = cache_.find(name); it != cache_.end() && it->second.watched) {
            return it->second.entry;
        }
    }
    return read(name);
}

// A definition no watch vouches for (yet): stat function.toml, and parse it unless the cached
// definition was read from the very same file version.
std::optional<Registry::Entry> Registry::read(std::string_view name) {
    std::string key(name);
    bool watched;
    std::uint64_t changes_before;
    {
        std::lock_guard lock(mutex_);
        watched = watch_function_dir_locked(key);  // before the stat: no edit can slip between
        changes_before = changes_;
    }
    // Plain concatenation: fs::path's operator/ splits components (on every invocation).
    std::string file;
    file.reserve(dir_.native().size() + name.size() + 16);
    file.append(dir_.native()).append("/").append(name).append("/").append(kSpecFile);
    struct stat st {};
    int rc = ::lstat(file.c_str(), &st);
    if (rc == 0 && S_ISLNK(st.st_mode)) {
        watched = false;  // the watch sees the link, not edits of the file it points to
        rc = ::stat(file.c_str(), &st);
    }
    if (rc != 0) {
        int err = errno;
        if (err == ENOENT || err == ENOTDIR) {
            std::lock_guard lock(mutex_);
            cache_.erase(key);
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
    // A stamp can miss a same-size edit within one timestamp tick; for a watched file the change
    // event has dropped the cached definition by then.
    if (auto entry = cached(name, stamp)) {
        return entry;
    }
    // The stat came first: an edit racing with this load leaves a newer stamp on disk than the
    // one stored (or, watched, a change event), so a later lookup loads again.
    Entry entry = load(name);
    std::lock_guard lock(mutex_);
    if (watched && changes_ != changes_before) {
        cache_.erase(key);  // an event came in while reading; it may have been about this file
        return entry;
    }
    bool vouched = watched && entry.spec != nullptr && registry_wd_ >= 0;
    cache_.insert_or_assign(std::move(key),
                            Cached{stamp, entry, std::chrono::steady_clock::now(), vouched});
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

bool Registry::watch_function_dir_locked(const std::string& name) {
    if (registry_wd_ < 0) {
        return false;
    }
    if (wd_by_name_.count(name) != 0) {
        return true;
    }
    int wd = ::inotify_add_watch(inotify_.get(), (dir_ / name).c_str(), kFunctionDirEvents);
    if (wd < 0) {
        return false;  // gone, not a directory, or out of watches: stat instead
    }
    wd_by_name_.emplace(name, wd);
    auto& names = names_by_wd_[wd];  // several names may link to one directory
    if (std::find(names.begin(), names.end(), name) == names.end()) {
        names.push_back(name);
    }
    return true;
}

void Registry::drain_changes() {
    std::lock_guard lock(mutex_);
    drain_changes_locked();
}

void Registry::on_change(std::function<void()> hook) {
    std::lock_guard lock(mutex_);
    on_change_ = std::move(hook);
}

void Registry::drain_changes_locked() {
    if (!inotify_) {
        return;
    }
    std::uint64_t before = changes_;
    alignas(inotify_event) char buffer[16 * 1024];
    for (;;) {
        ssize_t n = ::read(inotify_.get(), buffer, sizeof(buffer));
        if (n <= 0) {
            break;  // EAGAIN: nothing pending
        }
        for (ssize_t at = 0; at < n;) {
            const auto* event = reinterpret_cast<const inotify_event*>(buffer + at);
            std::string_view file = event->len ? std::string_view(event->name) : std::string_view();
            changed_locked(event->wd, event->mask, file);
            at += static_cast<ssize_t>(sizeof(inotify_event) + event->len);
        }
    }
    if (changes_ != before && on_change_) {
        on_change_();
    }
}

void Registry::forget_name_watch_locked(const std::string& name) {
    auto it = wd_by_name_.find(name);
    if (it == wd_by_name_.end()) {
        return;
    }
    int wd = it->second;
    wd_by_name_.erase(it);
    auto names = names_by_wd_.find(wd);
    if (names == names_by_wd_.end()) {
        return;
    }
    std::erase(names->second, name);
    if (names->second.empty()) {
        names_by_wd_.erase(names);
        ::inotify_rm_watch(inotify_.get(), wd);
    }
}

void Registry::changed_locked(int wd, std::uint32_t mask, std::string_view file) {
    if (mask & IN_Q_OVERFLOW) {  // events were lost: nothing cached is vouched for any more
        ++changes_;
        std::erase_if(cache_, [](const auto& item) { return item.second.watched; });
        return;
    }
    if (wd == registry_wd_) {
        ++changes_;
        if (mask & kWatchGone) {  // the registry directory itself went: stat from now on
            registry_wd_ = -1;
            for (auto& [name, cached] : cache_) {
                cached.watched = false;
            }
            return;
        }
        // A function directory (or link) appeared, went or changed: it may be another one now.
        std::string name(file);
        cache_.erase(name);
        forget_name_watch_locked(name);
        if ((mask & (IN_CREATE | IN_MOVED_TO)) && is_valid_function_name(name)) {
            watch_function_dir_locked(name);  // its function.toml may come after the directory
        }
        return;
    }
    auto it = names_by_wd_.find(wd);
    bool gone = (mask & kWatchGone) != 0;
    if (it == names_by_wd_.end() || (!gone && file != kSpecFile)) {
        return;  // a watch already forgotten, or another file of the function's directory
    }
    ++changes_;
    std::vector<std::string> names = it->second;
    for (const auto& name : names) {
        cache_.erase(name);
        if (gone) {
            forget_name_watch_locked(name);
        }
    }
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
