#include "util/work_queue.h"

#include <spdlog/spdlog.h>

#include <exception>

namespace unifaas {

WorkQueue::WorkQueue(std::string name, unsigned threads) : name_(std::move(name)) {
    for (unsigned i = 0; i < threads; ++i) {
        threads_.emplace_back([this] { run(); });
    }
}

WorkQueue::~WorkQueue() {
    {
        std::lock_guard lk(mu_);
        stopping_ = true;
    }
    cv_.notify_all();
    for (auto& t : threads_) {
        t.join();
    }
}

void WorkQueue::post(std::function<void()> task) {
    {
        std::lock_guard lk(mu_);
        tasks_.push_back(std::move(task));
    }
    cv_.notify_one();
}

void WorkQueue::drain() {
    std::unique_lock lk(mu_);
    idle_cv_.wait(lk, [this] { return tasks_.empty() && running_ == 0; });
}

void WorkQueue::run() {
    std::unique_lock lk(mu_);
    for (;;) {
        cv_.wait(lk, [this] { return stopping_ || !tasks_.empty(); });
        if (tasks_.empty()) {
            return;  // stopping and nothing left
        }
        auto task = std::move(tasks_.front());
        tasks_.pop_front();
        ++running_;
        lk.unlock();
        try {
            task();
        } catch (const std::exception& e) {
            spdlog::error("{} task failed: {}", name_, e.what());
        }
        lk.lock();
        --running_;
        if (tasks_.empty() && running_ == 0) {
            idle_cv_.notify_all();
        }
    }
}

}  // namespace unifaas
