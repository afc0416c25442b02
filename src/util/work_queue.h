// WorkQueue: a fixed set of threads running posted tasks in FIFO order (sandbox starts and stops,
// which block on engines and hypervisors and must stay off the request threads' critical path).
#pragma once

#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace unifaas {

class WorkQueue {
  public:
    WorkQueue(std::string name, unsigned threads);
    ~WorkQueue();  // runs every task already posted, then joins
    WorkQueue(const WorkQueue&) = delete;
    WorkQueue& operator=(const WorkQueue&) = delete;

    void post(std::function<void()> task);
    // Blocks until no task is queued or running.
    void drain();

  private:
    void run();

    std::string name_;
    std::mutex mu_;
    std::condition_variable cv_;
    std::condition_variable idle_cv_;
    std::deque<std::function<void()>> tasks_;
    unsigned running_ = 0;
    bool stopping_ = false;
    std::vector<std::thread> threads_;
};

}  // namespace unifaas
