// Pool: the instances of one function. A request acquires a Lease (a slot on a ready instance),
// starting an instance when none has a free slot and fewer than max-instances exist; otherwise it
// queues in FIFO order until a slot frees or queue-timeout passes. Keepalive expiry, single-use
// termination, boot timeouts and min-instances live here. The pool knows nothing of Docker, QEMU
// or HTTP: it drives a Backend through the sandbox seam.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "config/function_spec.h"
#include "metrics/function_metrics.h"
#include "pool/readiness.h"
#include "sandbox/sandbox.h"
#include "util/timer_queue.h"
#include "util/work_queue.h"

namespace unifaas {

// A request the pool could not serve. status is the HTTP status the gateway answers with;
// retry_after_s > 0 asks for a Retry-After header.
class PoolError : public std::runtime_error {
  public:
    PoolError(int status, const std::string& what, int retry_after_s = 0)
        : std::runtime_error(what), status_(status), retry_after_s_(retry_after_s) {}
    int status() const { return status_; }
    int retry_after_s() const { return retry_after_s_; }

  private:
    int status_;
    int retry_after_s_;
};

// State a pool user keeps per slot (the gateway keeps its upstream keep-alive connection here).
// Destroyed with the instance.
class SlotCache {
  public:
    virtual ~SlotCache() = default;
    // The instance is gone: make a request in progress on this slot fail now (from any thread).
    virtual void abort() {}
};

enum class InstanceState { Starting, Booting, Ready, Stopping };
const char* to_string(InstanceState s);

struct InstanceSnapshot;

// Told about instances' lives (D-Bus signals, notify STATUS, metrics). Called with the pool's
// lock held: implementations only record or enqueue, never block or call back into the pool.
class PoolObserver {
  public:
    virtual ~PoolObserver() = default;
    virtual void instance_started(const InstanceSnapshot&) {}  // created (starting)
    virtual void instance_changed(const InstanceSnapshot&) {}  // state or counts changed
    virtual void instance_stopped(const InstanceSnapshot&, const std::string& /*reason*/) {}
};

// Components every pool shares; owned by main.
struct PoolServices {
    Backends& backends;
    Readiness& readiness;
    TimerQueue& timers;
    WorkQueue& starts;
    WorkQueue& stops;
    PoolObserver* observer = nullptr;
};

struct InstanceSnapshot {
    std::string id;
    std::string function;
    InstanceState state;
    std::string address;
    std::string sandbox;  // Instance::describe()
    std::string unit;     // Instance::unit()
    unsigned capacity = 0;
    unsigned in_use = 0;
    std::uint64_t requests = 0;
    std::chrono::system_clock::time_point started_at;
    std::string start_kind;  // Instance::start_kind(): "boot" or "restore"; "" while starting
};

struct PoolSnapshot {
    std::string function;
    std::vector<InstanceSnapshot> instances;
    std::size_t queued = 0;
    std::size_t slot_limit = 0;  // max-instances × slots per instance of the current definition
};

class Pool;
class Lease;
struct PooledInstance;

// What an asynchronous acquire ends with: a lease, or the error the request must answer with.
struct AcquireResult {
    std::unique_ptr<Lease> lease;
    std::optional<PoolError> error;
};
// Called exactly once, never with the pool's lock held, on whichever thread settles the request
// (the caller's own when a slot is free at once or the request fails at once; otherwise the
// thread that readies an instance, frees a slot or expires queue-timeout). Must not block.
using AcquireDone = std::function<void(AcquireResult)>;

// A slot on a ready instance; gives the slot back when destroyed.
class Lease {
  public:
    Lease(std::shared_ptr<Pool> pool, std::shared_ptr<PooledInstance> instance, unsigned slot);
    ~Lease();
    Lease(const Lease&) = delete;
    Lease& operator=(const Lease&) = delete;

    const std::string& instance_id() const;
    const std::string& address() const;
    std::uint16_t port() const;
    // The slot's cache, made by `make` when the slot has none.
    SlotCache& cache(const std::function<std::unique_ptr<SlotCache>()>& make);
    void drop_cache();
    // Why the instance was taken out of service while this lease held it ("" while it serves).
    std::string retired_reason() const;
    // The instance failed while this lease used it (e.g. its connection broke): stop it.
    void mark_broken(const std::string& reason);

  private:
    std::shared_ptr<Pool> pool_;
    std::shared_ptr<PooledInstance> instance_;
    unsigned slot_;
};

class Pool : public std::enable_shared_from_this<Pool> {
  public:
    Pool(std::string function, PoolServices services);
    ~Pool();

    // A slot on a ready instance of `spec` (the function's current definition: new instances use
    // it, running ones keep theirs). Blocks until ready, failed, or queue-timeout. Throws
    // PoolError.
    std::unique_ptr<Lease> acquire(std::shared_ptr<const FunctionSpec> spec);
    // The same without blocking: `done` receives the lease or the error (see AcquireDone).
    // `affinity` (0: none) is a key of the caller, e.g. the gateway's event loop: a free slot
    // last leased with the same key is preferred, so a slot's kept connection, and behind a
    // thread-per-connection function the thread serving it, stay with one loop and one CPU
    // instead of being woken from each loop in turn.
    void acquire_async(std::shared_ptr<const FunctionSpec> spec, AcquireDone done,
                       std::uintptr_t affinity = 0);

    // Newer definition of the function (instances started from now on use it); starts instances
    // up to min-instances.
    void update(std::shared_ptr<const FunctionSpec> spec);

    // Stops one instance; false when no live instance has that id.
    bool stop_instance(const std::string& id, const std::string& reason);
    // Stops every instance; returns how many.
    unsigned stop_all(const std::string& reason);
    // Refuses new requests, fails waiting ones (503), stops every instance and waits until all
    // sandboxes are gone.
    void shutdown();

    PoolSnapshot snapshot() const;
    std::optional<InstanceSnapshot> find_instance(const std::string& id) const;
    const std::string& function() const { return function_; }
    FunctionMetrics& metrics() { return metrics_; }

  private:
    friend class Lease;
    struct Waiter;
    class Locked;
    struct Completion {
        AcquireDone done;
        AcquireResult result;
    };
    struct Claim {
        std::shared_ptr<PooledInstance> instance;
        unsigned slot = 0;
        explicit operator bool() const { return instance != nullptr; }
    };

    // Hands `claim` to `done`: now when its instance is ready, else when the boot ends.
    void deliver_locked(Claim claim, AcquireDone done);
    void complete_locked(AcquireDone done, AcquireResult result);
    void fail_locked(AcquireDone done, int status, std::string message, int retry_after_s = 0);
    void on_queue_timeout(const std::shared_ptr<Waiter>& waiter);
    Claim try_claim_locked(std::uintptr_t affinity = 0);
    Claim claim_slot_locked(const std::shared_ptr<PooledInstance>& inst,
                            std::uintptr_t affinity = 0);
    std::shared_ptr<PooledInstance> create_instance_locked();
    void dispatch_waiters_locked();
    void ensure_min_instances_locked();
    std::size_t live_count_locked() const;

    void run_start(std::shared_ptr<PooledInstance> inst);
    void on_ready(const std::shared_ptr<PooledInstance>& inst);
    void on_exit(const std::weak_ptr<PooledInstance>& inst, const std::string& reason);
    void on_boot_timeout(const std::weak_ptr<PooledInstance>& inst);
    void on_keepalive(const std::weak_ptr<PooledInstance>& inst);
    void release(const std::shared_ptr<PooledInstance>& inst, unsigned slot);
    // After an instance's use changed: single-use retirement, keepalive, waiting requests.
    void settle_locked(const std::shared_ptr<PooledInstance>& inst);
    void arm_keepalive_locked(const std::shared_ptr<PooledInstance>& inst);
    void post_stop_locked(const std::shared_ptr<PooledInstance>& inst, int fail_status,
                          std::string fail_message);
    void schedule_min_retry_locked();
    InstanceSnapshot snapshot_locked(const PooledInstance& inst) const;
    void notify_changed_locked(const PooledInstance& inst);
    // Fails requests still in progress on a retired instance (its connections would otherwise
    // wait for a guest that is gone until request-timeout).
    static void abort_requests(PooledInstance& inst, const std::string& reason);
    void mark_broken(const std::shared_ptr<PooledInstance>& inst, const std::string& reason);

    // Takes an instance out of service and stops its sandbox on the stop queue. When fail_status
    // is non-zero, requests waiting for it fail with that status and message (plus the sandbox's
    // last output lines when with_output is set).
    void retire_locked(const std::shared_ptr<PooledInstance>& inst, const std::string& reason,
                       int fail_status = 0, std::string fail_message = {},
                       bool with_output = false);
    void finish_failure_locked(PooledInstance& inst, int status, std::string message);

    const std::string function_;
    PoolServices services_;
    FunctionMetrics metrics_;

    mutable std::mutex mu_;
    std::condition_variable cv_;
    std::shared_ptr<const FunctionSpec> spec_;
    std::vector<std::shared_ptr<PooledInstance>> instances_;  // live: Starting, Booting, Ready
    std::deque<std::shared_ptr<Waiter>> waiters_;
    std::vector<Completion> completions_;  // run by Locked once the lock is released
    std::size_t starting_ = 0;             // run_start() calls queued or running
    std::size_t stopping_ = 0;             // sandboxes on the stop queue
    bool closed_ = false;
    TimerQueue::Id min_retry_timer_ = 0;
};

}  // namespace unifaas
