// TimerQueue: one thread that runs callbacks at their deadlines (keepalive, boot timeout).
// Waits on a condition variable until the earliest deadline: an idle queue uses no CPU.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <utility>

namespace unifaas {

class TimerQueue {
  public:
    using Clock = std::chrono::steady_clock;
    using Id = std::uint64_t;  // 0 is never a valid id

    TimerQueue();
    ~TimerQueue();  // drops pending timers, joins the thread
    TimerQueue(const TimerQueue&) = delete;
    TimerQueue& operator=(const TimerQueue&) = delete;

    // Runs fn on the timer thread at `when`. fn must not call back into this queue's destructor.
    Id schedule(Clock::time_point when, std::function<void()> fn);
    // Removes a pending timer; false when it already ran, is running or never existed.
    bool cancel(Id id);

  private:
    void run();

    std::mutex mu_;
    std::condition_variable cv_;
    std::map<std::pair<Clock::time_point, Id>, std::function<void()>> timers_;
    std::unordered_map<Id, Clock::time_point> deadlines_;
    Id next_id_ = 1;
    Clock::time_point waiting_until_ = Clock::time_point::max();  // what the thread sleeps for
    bool stopping_ = false;
    std::thread thread_;
};

}  // namespace unifaas
