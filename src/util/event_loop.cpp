#include "util/event_loop.h"

#include <pthread.h>
#include <sys/eventfd.h>

#include <cerrno>
#include <system_error>

namespace unifaas {

namespace {

constexpr int kBatch = 64;

[[noreturn]] void throw_errno(const char* what) {
    throw std::system_error(errno, std::generic_category(), what);
}

}  // namespace

EventLoop::EventLoop()
    : epoll_(epoll_create1(EPOLL_CLOEXEC)), wake_(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) {
    if (!epoll_ || !wake_) {
        throw_errno("event loop");
    }
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.ptr = nullptr;  // the wake-up descriptor
    if (epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, wake_.get(), &ev) != 0) {
        throw_errno("event loop: epoll_ctl");
    }
}

EventLoop::~EventLoop() {
    stop();
    join();
}

void EventLoop::start(const std::string& name, std::function<void()> first) {
    thread_ = std::thread([this, first = std::move(first)] {
        if (first) {
            first();
        }
        run();
    });
    pthread_setname_np(thread_.native_handle(), name.substr(0, 15).c_str());
}

void EventLoop::stop() {
    stopping_.store(true);
    std::uint64_t one = 1;
    (void)!write(wake_.get(), &one, sizeof(one));
}

void EventLoop::join() {
    if (thread_.joinable() && !in_loop_thread()) {
        thread_.join();
    }
}

void EventLoop::post(std::function<void()> fn) {
    bool first;
    {
        std::lock_guard lk(posted_mu_);
        first = posted_.empty();
        posted_.push_back(std::move(fn));
    }
    if (first) {
        std::uint64_t one = 1;
        (void)!write(wake_.get(), &one, sizeof(one));
    }
}

void EventLoop::add(int fd, std::uint32_t events, Handler* handler) {
    epoll_event ev{};
    ev.events = events;
    ev.data.ptr = handler;
    if (epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, fd, &ev) != 0) {
        throw_errno("epoll_ctl ADD");
    }
}

void EventLoop::add_first(int fd, Handler* handler) {
    add(fd, EPOLLIN, handler);
    first_ = handler;
}

void EventLoop::modify(int fd, std::uint32_t events, Handler* handler) {
    epoll_event ev{};
    ev.events = events;
    ev.data.ptr = handler;
    if (epoll_ctl(epoll_.get(), EPOLL_CTL_MOD, fd, &ev) != 0) {
        throw_errno("epoll_ctl MOD");
    }
}

void EventLoop::arm(int fd, std::uint32_t events, Handler* handler) {
    epoll_event ev{};
    ev.events = events;
    ev.data.ptr = handler;
    if (epoll_ctl(epoll_.get(), EPOLL_CTL_MOD, fd, &ev) == 0) {
        return;
    }
    if (errno != ENOENT || epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, fd, &ev) != 0) {
        throw_errno("epoll_ctl arm");
    }
}

void EventLoop::remove(int fd) {
    epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, fd, nullptr);
}

EventLoop::TimerId EventLoop::add_timer(Clock::time_point when, std::function<void()> fn) {
    return timers_.emplace(when, std::move(fn));
}

void EventLoop::cancel_timer(TimerId& id) {
    if (id != timers_.end()) {
        timers_.erase(id);
        id = timers_.end();
    }
}

int EventLoop::next_timeout_ms() const {
    if (timers_.empty()) {
        return -1;
    }
    auto wait = timers_.begin()->first - Clock::now();
    if (wait <= Clock::duration::zero()) {
        return 0;
    }
    // Rounded up: waking before the deadline would only spin.
    auto ms = std::chrono::ceil<std::chrono::milliseconds>(wait).count();
    return ms > 1'000'000 ? 1'000'000 : static_cast<int>(ms);
}

void EventLoop::run_posted() {
    std::uint64_t count;
    (void)!read(wake_.get(), &count, sizeof(count));
    std::vector<std::function<void()>> todo;
    {
        std::lock_guard lk(posted_mu_);
        todo.swap(posted_);
    }
    for (auto& fn : todo) {
        if (stopping_.load(std::memory_order_relaxed)) {
            return;
        }
        fn();
    }
}

void EventLoop::run_timers() {
    auto now = Clock::now();
    while (!timers_.empty() && timers_.begin()->first <= now) {
        auto fn = std::move(timers_.begin()->second);
        timers_.erase(timers_.begin());
        fn();
    }
}

// Destroying an object may release another that lands here (a lease given back hands a queued
// request its slot, whose call may finish at once): never clear the vector being appended to.
void EventLoop::release_graveyard() {
    while (!graveyard_.empty()) {
        std::vector<std::shared_ptr<void>> dead;
        dead.swap(graveyard_);
    }
}

void EventLoop::run() {
    epoll_event events[kBatch];
    while (!stopping_.load(std::memory_order_relaxed)) {
        int n = epoll_wait(epoll_.get(), events, kBatch, next_timeout_ms());
        if (n < 0 && errno != EINTR) {
            throw_errno("epoll_wait");
        }
        int first = -1;
        for (int i = 0; first_ != nullptr && i < n; ++i) {
            if (events[i].data.ptr == first_) {
                first = i;
                first_->on_events(events[i].events);
            }
        }
        if (first_ != nullptr && first < 0 && n == kBatch) {
            first_->on_events(EPOLLIN);  // it may be ready but beyond a full batch
        }
        for (int i = 0; i < n; ++i) {
            if (i == first) {
                continue;
            }
            if (events[i].data.ptr == nullptr) {
                run_posted();
            } else {
                static_cast<Handler*>(events[i].data.ptr)->on_events(events[i].events);
            }
        }
        run_timers();
        release_graveyard();
    }
    // Handlers and timers may own objects that post back here: drop them on this thread.
    timers_.clear();
    release_graveyard();
    std::vector<std::function<void()>> dropped;
    {
        std::lock_guard lk(posted_mu_);
        dropped.swap(posted_);
    }
}

}  // namespace unifaas
