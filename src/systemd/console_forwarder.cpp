#include "systemd/console_forwarder.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <system_error>
#include <vector>

#include <spdlog/spdlog.h>

#include "systemd/journal_sink.h"

namespace unifaas {

namespace {

[[noreturn]] void throw_errno(const std::string& what) {
    throw std::system_error(errno, std::generic_category(), what);
}

std::string_view without_cr(std::string_view line) {
    while (!line.empty() && line.back() == '\r') {
        line.remove_suffix(1);
    }
    return line;
}

}  // namespace

struct ConsoleForwarder::Entry {
    int fd = -1;
    int watch = -1;
    std::string function;
    std::string instance;
    off_t offset = 0;
    std::string partial;  // bytes after the last "\n"
};

void journal_console_line(const std::string& function, const std::string& instance,
                          std::string_view line) {
    journal_send({"MESSAGE=" + std::string(line), "PRIORITY=6", "SYSLOG_IDENTIFIER=unifaas-console",
                  "UNIFAAS_FUNCTION=" + function, "UNIFAAS_INSTANCE=" + instance});
}

ConsoleForwarder::ConsoleForwarder() : ConsoleForwarder(&journal_console_line) {}

ConsoleForwarder::ConsoleForwarder(Emit emit) : emit_(std::move(emit)) {
    inotify_fd_ = inotify_init1(IN_CLOEXEC | IN_NONBLOCK);
    if (inotify_fd_ < 0) {
        throw_errno("inotify_init1");
    }
    wake_fd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (wake_fd_ < 0) {
        int saved = errno;
        ::close(inotify_fd_);
        errno = saved;
        throw_errno("eventfd");
    }
    thread_ = std::thread([this] { run(); });
}

ConsoleForwarder::~ConsoleForwarder() {
    {
        std::lock_guard lock(mu_);
        stop_ = true;
    }
    std::uint64_t one = 1;
    [[maybe_unused]] ssize_t n = ::write(wake_fd_, &one, sizeof(one));
    thread_.join();
    for (auto& [id, entry] : entries_) {
        ::close(entry.fd);
    }
    ::close(inotify_fd_);
    ::close(wake_fd_);
}

ConsoleForwarder::Id ConsoleForwarder::add(const std::filesystem::path& file,
                                           const std::string& function,
                                           const std::string& instance) {
    Entry entry;
    entry.function = function;
    entry.instance = instance;
    entry.fd = ::open(file.c_str(), O_RDONLY | O_CREAT | O_CLOEXEC | O_NOCTTY, 0600);
    if (entry.fd < 0) {
        throw_errno("open " + file.string());
    }
    std::lock_guard lock(mu_);
    entry.watch = inotify_add_watch(inotify_fd_, file.c_str(), IN_MODIFY);
    if (entry.watch < 0 || by_watch_.count(entry.watch) != 0) {
        if (entry.watch >= 0) {
            errno = EEXIST;  // the same file twice
        }
        int saved = errno;
        ::close(entry.fd);
        errno = saved;
        throw_errno("inotify_add_watch " + file.string());
    }
    Id id = next_id_++;
    by_watch_[entry.watch] = id;
    auto& added = entries_.emplace(id, std::move(entry)).first->second;
    drain(added);  // lines written before the watch existed
    return id;
}

void ConsoleForwarder::remove(Id id) {
    std::lock_guard lock(mu_);
    auto it = entries_.find(id);
    if (it == entries_.end()) {
        return;
    }
    Entry& entry = it->second;
    inotify_rm_watch(inotify_fd_, entry.watch);
    by_watch_.erase(entry.watch);
    drain(entry);
    if (!entry.partial.empty()) {
        emit_line(entry, entry.partial);
    }
    ::close(entry.fd);
    entries_.erase(it);
}

// Reads what was appended since the last time and passes on every complete line.
void ConsoleForwarder::drain(Entry& entry) {
    struct stat st {};
    if (::fstat(entry.fd, &st) == 0 && st.st_size < entry.offset) {
        entry.offset = 0;  // truncated (QEMU opens the console with O_TRUNC)
        entry.partial.clear();
    }
    char buffer[64 * 1024];
    for (;;) {
        ssize_t n = ::pread(entry.fd, buffer, sizeof(buffer), entry.offset);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            return;
        }
        entry.offset += n;
        std::string_view data(buffer, static_cast<std::size_t>(n));
        for (std::size_t newline; (newline = data.find('\n')) != std::string_view::npos;) {
            if (entry.partial.empty()) {
                emit_line(entry, data.substr(0, newline));
            } else {
                entry.partial.append(data.substr(0, newline));
                emit_line(entry, entry.partial);
                entry.partial.clear();
            }
            data.remove_prefix(newline + 1);
        }
        entry.partial.append(data);
        while (entry.partial.size() >= kMaxLine) {
            emit_line(entry, std::string_view(entry.partial).substr(0, kMaxLine));
            entry.partial.erase(0, kMaxLine);
        }
    }
}

void ConsoleForwarder::emit_line(const Entry& entry, std::string_view line) {
    line = without_cr(line);
    for (std::size_t at = 0; at < line.size(); at += kMaxLine) {
        try {
            emit_(entry.function, entry.instance, line.substr(at, kMaxLine));
        } catch (const std::exception& e) {
            spdlog::debug("console of {} instance {}: line dropped: {}", entry.function,
                          entry.instance, e.what());
        }
    }
}

void ConsoleForwarder::run() {
    alignas(inotify_event) char events[4096];
    for (;;) {
        pollfd fds[2] = {{inotify_fd_, POLLIN, 0}, {wake_fd_, POLLIN, 0}};
        if (::poll(fds, 2, -1) < 0 && errno != EINTR) {
            spdlog::error("console forwarder: poll: {}", std::strerror(errno));
            return;
        }
        std::vector<int> modified;
        ssize_t n;
        while ((n = ::read(inotify_fd_, events, sizeof(events))) > 0) {
            for (char* p = events; p < events + n;) {
                auto* event = reinterpret_cast<inotify_event*>(p);
                if (event->mask & IN_MODIFY) {
                    modified.push_back(event->wd);
                }
                p += sizeof(inotify_event) + event->len;
            }
        }
        std::lock_guard lock(mu_);
        if (stop_) {
            return;
        }
        for (int watch : modified) {
            auto it = by_watch_.find(watch);
            if (it != by_watch_.end()) {
                drain(entries_.at(it->second));
            }
        }
    }
}

ForwardedConsole::ForwardedConsole(ConsoleForwarder* forwarder, const std::filesystem::path& file,
                                   const std::string& function, const std::string& instance) {
    if (forwarder == nullptr) {
        return;
    }
    try {
        id_ = forwarder->add(file, function, instance);
        forwarder_ = forwarder;
    } catch (const std::system_error& e) {
        spdlog::warn("function {} instance {}: console not forwarded to the journal: {}", function,
                     instance, e.what());
    }
}

ForwardedConsole::~ForwardedConsole() {
    if (forwarder_ != nullptr) {
        forwarder_->remove(id_);
    }
}

}  // namespace unifaas
