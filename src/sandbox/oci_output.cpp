#include "sandbox/oci_output.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <system_error>

#include <spdlog/spdlog.h>

#include "sandbox/vm_common.h"

namespace unifaas {

namespace fs = std::filesystem;

namespace {

[[noreturn]] void throw_errno(const std::string& what) {
    throw std::system_error(errno, std::generic_category(), what);
}

fs::path rotated(const fs::path& file) {
    return fs::path(file.string() + ".1");
}

// Lines of tail_lines()'s answer (no trailing newline).
std::size_t count_lines(const std::string& text) {
    return text.empty() ? 0
                        : static_cast<std::size_t>(std::count(text.begin(), text.end(), '\n')) + 1;
}

}  // namespace

OciOutputCap::OciOutputCap(std::uint64_t limit_bytes) : limit_(limit_bytes) {
    inotify_fd_ = inotify_init1(IN_CLOEXEC | IN_NONBLOCK);
    wake_fd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (inotify_fd_ < 0 || wake_fd_ < 0) {
        int err = errno;
        close(inotify_fd_);
        close(wake_fd_);
        errno = err;
        throw_errno("output cap: inotify");
    }
    thread_ = std::thread([this] { run(); });
}

OciOutputCap::~OciOutputCap() {
    std::uint64_t one = 1;
    (void)!write(wake_fd_, &one, sizeof(one));
    thread_.join();
    close(inotify_fd_);
    close(wake_fd_);
}

OciOutputCap::Id OciOutputCap::add(const fs::path& file) {
    int fd = open(file.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
    if (fd < 0) {
        throw_errno("cannot open " + file.string());
    }
    close(fd);
    std::lock_guard lock(mu_);
    int wd = inotify_add_watch(inotify_fd_, file.c_str(), IN_MODIFY);
    if (wd < 0) {
        throw_errno("inotify_add_watch " + file.string());
    }
    files_[wd] = file;
    return wd;
}

void OciOutputCap::remove(Id id) {
    std::lock_guard lock(mu_);
    if (files_.erase(id) > 0) {
        inotify_rm_watch(inotify_fd_, id);
    }
}

void OciOutputCap::run() {
    alignas(inotify_event) char buf[4096];
    for (;;) {
        pollfd fds[2] = {{inotify_fd_, POLLIN, 0}, {wake_fd_, POLLIN, 0}};
        if (poll(fds, 2, -1) < 0) {
            if (errno == EINTR) {
                continue;
            }
            spdlog::error("output cap: poll: {}", std::strerror(errno));
            return;
        }
        if (fds[1].revents != 0) {
            return;
        }
        ssize_t n = read(inotify_fd_, buf, sizeof(buf));
        for (ssize_t off = 0; off < n;) {
            auto* event = reinterpret_cast<inotify_event*>(buf + off);
            if ((event->mask & IN_MODIFY) != 0) {
                check(event->wd);
            }
            off += static_cast<ssize_t>(sizeof(inotify_event) + event->len);
        }
    }
}

void OciOutputCap::check(Id id) {
    std::lock_guard lock(mu_);  // remove() waits: the instance's directory stays meanwhile
    auto it = files_.find(id);
    if (it == files_.end()) {
        return;
    }
    const fs::path& file = it->second;
    struct stat st {};
    if (stat(file.c_str(), &st) != 0 || static_cast<std::uint64_t>(st.st_size) <= limit_) {
        return;
    }
    std::error_code ec;
    fs::copy_file(file, rotated(file), fs::copy_options::overwrite_existing, ec);
    if (ec) {
        spdlog::warn("output cap: cannot keep {}: {}", rotated(file).string(), ec.message());
    }
    // The runtime writes with O_APPEND: its next write lands at the new end, offset 0.
    if (truncate(file.c_str(), 0) != 0) {
        spdlog::warn("output cap: cannot truncate {}: {}", file.string(), std::strerror(errno));
    }
}

std::string OciOutputCap::tail(const fs::path& file, unsigned lines) {
    std::string recent = tail_lines(file, lines);
    std::size_t have = count_lines(recent);
    std::error_code ec;
    if (have >= lines || !fs::exists(rotated(file), ec)) {
        return recent;
    }
    std::string older = tail_lines(rotated(file), lines - static_cast<unsigned>(have));
    if (!older.empty() && older.back() != '\n') {
        older += '\n';
    }
    return older + recent;
}

CappedOutput::CappedOutput(OciOutputCap* cap, const fs::path& file) : cap_(cap) {
    if (cap_ != nullptr) {
        id_ = cap_->add(file);
    }
}

CappedOutput::~CappedOutput() {
    if (cap_ != nullptr) {
        cap_->remove(id_);
    }
}

}  // namespace unifaas
