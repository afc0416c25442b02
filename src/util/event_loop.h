// EventLoop: one thread around an epoll instance. File descriptors are watched with a Handler
// (edge- or level-triggered, as registered); other threads hand work over with post(); timers run
// on the loop thread. An idle loop sleeps in epoll_wait without a timeout: it uses no CPU.
#pragma once

#include <sys/epoll.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "util/unique_fd.h"

namespace unifaas {

class EventLoop {
  public:
    using Clock = std::chrono::steady_clock;
    using Timers = std::multimap<Clock::time_point, std::function<void()>>;
    using TimerId = Timers::iterator;

    class Handler {
      public:
        virtual ~Handler() = default;
        virtual void on_events(std::uint32_t events) = 0;
    };

    // Creates the epoll and wake-up descriptors; throws std::system_error.
    EventLoop();
    ~EventLoop();  // stop() + join()
    EventLoop(const EventLoop&) = delete;
    EventLoop& operator=(const EventLoop&) = delete;

    // Runs the loop on a new thread named `name`; `first` runs on it before anything else.
    void start(const std::string& name, std::function<void()> first = {});
    // Ends the loop after the current batch; tasks posted later are dropped. Any thread.
    void stop();
    void join();

    // Runs fn on the loop thread. Any thread; cheap when the loop is busy (one eventfd write
    // per batch of posts).
    void post(std::function<void()> fn);
    bool in_loop_thread() const { return std::this_thread::get_id() == thread_.get_id(); }

    // Loop thread only. Throw std::system_error.
    void add(int fd, std::uint32_t events, Handler* handler);
    void modify(int fd, std::uint32_t events, Handler* handler);
    void remove(int fd);  // never throws; the fd may already be closed
    // add(fd, EPOLLIN, handler) for a descriptor that in every batch is served before the other
    // events (one per loop): what it signals (e.g. a registry change) is then known to every
    // handler of the batch. Throws std::system_error.
    void add_first(int fd, Handler* handler);
    // modify(), or add() when this loop does not watch fd yet: for EPOLLONESHOT registrations
    // that stay in place (disarmed) between uses, saving an add/remove pair per use.
    void arm(int fd, std::uint32_t events, Handler* handler);

    // Loop thread only.
    TimerId add_timer(Clock::time_point when, std::function<void()> fn);
    void cancel_timer(TimerId& id);  // resets id to no_timer(); no-op for no_timer()
    TimerId no_timer() { return timers_.end(); }

    // Keeps `object` alive until the current batch of events has been dispatched: a handler
    // that closes itself may still have events pending in the batch.
    void release_later(std::shared_ptr<void> object) { graveyard_.push_back(std::move(object)); }

  private:
    void run();
    int next_timeout_ms() const;
    void run_posted();
    void run_timers();
    void release_graveyard();

    UniqueFd epoll_;
    Handler* first_ = nullptr;
    UniqueFd wake_;
    std::thread thread_;
    std::atomic<bool> stopping_{false};

    std::mutex posted_mu_;
    std::vector<std::function<void()>> posted_;

    Timers timers_;
    std::vector<std::shared_ptr<void>> graveyard_;
};

}  // namespace unifaas
