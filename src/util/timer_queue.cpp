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
        earliest = timers_.begin()->first.second == id;
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
            cv_.wait(lk);
            continue;
        }
        auto first = timers_.begin();
        if (Clock::now() < first->first.first) {
            cv_.wait_until(lk, first->first.first);
            continue;
        }
        auto fn = std::move(first->second);
        deadlines_.erase(first->first.second);
        timers_.erase(first);
        lk.unlock();
        fn();
        lk.lock();
    }
}

}  // namespace unifaas
