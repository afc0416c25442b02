#include "util/timer_queue.h"

namespace unifaas {

TimerQueue::TimerQueue() : thread_([this] { run(); }) {}

TimerQueue::~TimerQueue() {
    {
        std::lock_guard lk(mu_);
        stopping_ = true;
    }
    cv_.notify_all();
    thread_.join();
}

TimerQueue::Id TimerQueue::schedule(Clock::time_point when, std::function<void()> fn) {
    Id id;
    bool earliest;
    {
        std::lock_guard lk(mu_);
        id = next_id_++;
        timers_.emplace(std::pair{when, id}, std::move(fn));
        deadlines_.emplace(id, when);
        // The thread only needs waking when it would sleep past this deadline: a timer behind
        // one it already waits for (or one cancelled meanwhile) is found when it wakes.
        earliest = when < waiting_until_;
        if (earliest) {
            waiting_until_ = when;
        }
    }
    if (earliest) {
        cv_.notify_all();
    }
    return id;
}

bool TimerQueue::cancel(Id id) {
    std::lock_guard lk(mu_);
    auto it = deadlines_.find(id);
    if (it == deadlines_.end()) {
        return false;
    }
    timers_.erase({it->second, id});
    deadlines_.erase(it);
    return true;
}

void TimerQueue::run() {
    std::unique_lock lk(mu_);
    while (!stopping_) {
        if (timers_.empty()) {
            waiting_until_ = Clock::time_point::max();
            cv_.wait(lk);
            continue;
        }
        auto first = timers_.begin();
        if (Clock::now() < first->first.first) {
            waiting_until_ = first->first.first;
            cv_.wait_until(lk, waiting_until_);
            continue;
        }
        waiting_until_ = Clock::time_point::min();  // running timers: checks again before sleeping
        auto fn = std::move(first->second);
        deadlines_.erase(first->first.second);
        timers_.erase(first);
        lk.unlock();
        fn();
        lk.lock();
    }
}

}  // namespace unifaas
