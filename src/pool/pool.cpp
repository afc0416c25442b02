#include "pool/pool.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cmath>
#include <future>

#include "util/random.h"

namespace unifaas {

using Clock = std::chrono::steady_clock;

namespace {

Clock::duration to_duration(Seconds s) {
    return std::chrono::duration_cast<Clock::duration>(s);
}

std::string format_seconds(Seconds s) {
    double v = s.count();
    if (v == std::floor(v)) {
        return fmt::format("{:.0f} s", v);
    }
    return fmt::format("{:g} s", v);
}

constexpr auto kMinInstancesRetry = std::chrono::seconds(5);

}  // namespace

const char* to_string(InstanceState s) {
    switch (s) {
        case InstanceState::Starting:
            return "starting";
        case InstanceState::Booting:
            return "booting";
        case InstanceState::Ready:
            return "ready";
        case InstanceState::Stopping:
            return "stopping";
    }
    return "unknown";
}

struct PooledInstance {
    std::string id;
    std::string token;
    std::shared_ptr<const FunctionSpec> spec;
    InstanceState state = InstanceState::Starting;
    unsigned capacity = 1;
    unsigned in_use = 0;  // slots leased or claimed by requests waiting for boot
    std::vector<unsigned> free_slots;
    std::vector<std::uintptr_t> slot_affinity;  // per slot: the affinity of its last lease
    // Per-slot caches; the pointers (not the objects' use) and retired_reason are guarded by
    // caches_mu, so a retiring pool can abort requests in progress.
    mutable std::mutex caches_mu;
    std::vector<std::unique_ptr<SlotCache>> caches;
    std::string retired_reason;
    bool exhausted = false;  // single-use: its one request has been claimed
    std::uint64_t requests = 0;

    std::shared_ptr<Prepared> prepared;  // until run_start: the backend's sandbox made ahead
    std::unique_ptr<Instance> sandbox;
    std::string address;
    std::uint16_t port = 0;
    std::string describe;
    std::string unit;
    std::string start_kind;  // "boot" or "restore" once the sandbox runs
    std::chrono::system_clock::time_point started_at = std::chrono::system_clock::now();
    Clock::time_point created = Clock::now();

    TimerQueue::Id boot_timer = 0;
    // Keepalive is lazy: one timer per instance, armed when it first goes idle; when it fires
    // early (the instance was used meanwhile) it re-arms for the latest idle_since. A busy
    // instance thus costs no timer operation per request.
    TimerQueue::Id keepalive_timer = 0;
    Clock::time_point idle_since;

    bool exited_early = false;  // the sandbox ended before start() returned to us
    std::string exit_reason;

    bool failed = false;  // waiting requests get fail_status / fail_message
    int fail_status = 0;
    std::string fail_message;
    // Requests holding a slot of this instance while it boots.
    std::vector<std::pair<unsigned, AcquireDone>> boot_waiters;
};

struct Pool::Waiter {
    AcquireDone done;
    std::uintptr_t affinity = 0;
    Clock::time_point queued_at = Clock::now();
    TimerQueue::Id timer = 0;
};

// The pool's lock. Requests settled while it is held (completions_) are handed their result
// after it is released, so a callback may take a lease, drop one, or acquire again.
class Pool::Locked {
  public:
    explicit Locked(Pool& pool) : pool_(pool), lk_(pool.mu_) {}
    ~Locked() { flush(); }
    Locked(const Locked&) = delete;
    Locked& operator=(const Locked&) = delete;

    std::unique_lock<std::mutex>& lock() { return lk_; }
    // Runs the settled requests' callbacks without the lock; returns with it held.
    void flush() {
        while (!pool_.completions_.empty()) {
            std::vector<Completion> todo;
            todo.swap(pool_.completions_);
            lk_.unlock();
            for (auto& c : todo) {
                c.done(std::move(c.result));
            }
            todo.clear();  // leases not taken are given back without the lock
            lk_.lock();
        }
    }

  private:
    Pool& pool_;
    std::unique_lock<std::mutex> lk_;
};

// ---- Lease ------------------------------------------------------------------------------------

Lease::Lease(std::shared_ptr<Pool> pool, std::shared_ptr<PooledInstance> instance, unsigned slot)
    : pool_(std::move(pool)), instance_(std::move(instance)), slot_(slot) {}

Lease::~Lease() {
    pool_->release(instance_, slot_);
}

const std::string& Lease::instance_id() const {
    return instance_->id;
}
const std::string& Lease::address() const {
    return instance_->address;
}
std::uint16_t Lease::port() const {
    return instance_->port;
}
SlotCache& Lease::cache(const std::function<std::unique_ptr<SlotCache>()>& make) {
    std::lock_guard lk(instance_->caches_mu);
    auto& cache = instance_->caches[slot_];
    if (!cache) {
        cache = make();
    }
    return *cache;
}

void Lease::drop_cache() {
    std::lock_guard lk(instance_->caches_mu);
    instance_->caches[slot_].reset();
}

std::string Lease::retired_reason() const {
    std::lock_guard lk(instance_->caches_mu);
    return instance_->retired_reason;
}
void Lease::mark_broken(const std::string& reason) {
    pool_->mark_broken(instance_, reason);
}

// ---- Pool -------------------------------------------------------------------------------------

Pool::Pool(std::string function, PoolServices services)
    : function_(std::move(function)), services_(services) {}

Pool::~Pool() = default;

void Pool::update(std::shared_ptr<const FunctionSpec> spec) {
    Locked lk(*this);
    if (spec_ == spec || closed_) {
        return;
    }
    spec_ = std::move(spec);
    ensure_min_instances_locked();
}

std::unique_ptr<Lease> Pool::acquire(std::shared_ptr<const FunctionSpec> spec) {
    std::promise<AcquireResult> promise;
    auto result = promise.get_future();
    acquire_async(std::move(spec),
                  [&promise](AcquireResult r) { promise.set_value(std::move(r)); });
    AcquireResult r = result.get();
    if (r.error) {
        throw *r.error;
    }
    return std::move(r.lease);
}

void Pool::acquire_async(std::shared_ptr<const FunctionSpec> spec, AcquireDone done,
                         std::uintptr_t affinity) {
    Locked lk(*this);
    if (spec_ != spec && !closed_) {
        spec_ = std::move(spec);
        ensure_min_instances_locked();
    }
    if (closed_) {
        fail_locked(std::move(done), 503,
                    fmt::format("function {}: the daemon is shutting down", function_));
        return;
    }
    if (waiters_.empty()) {
        if (Claim claim = try_claim_locked(affinity)) {
            deliver_locked(std::move(claim), std::move(done));
            return;
        }
    }
    auto waiter = std::make_shared<Waiter>();
    waiter->done = std::move(done);
    waiter->affinity = affinity;
    std::weak_ptr<Pool> self = weak_from_this();
    std::weak_ptr<Waiter> weak = waiter;
    waiter->timer = services_.timers.schedule(waiter->queued_at + to_duration(spec_->queue_timeout),
                                              [self, weak] {
                                                  auto pool = self.lock();
                                                  auto w = weak.lock();
                                                  if (pool && w) {
                                                      pool->on_queue_timeout(w);
                                                  }
                                              });
    waiters_.push_back(std::move(waiter));
}

void Pool::on_queue_timeout(const std::shared_ptr<Waiter>& waiter) {
    Locked lk(*this);
    auto it = std::find(waiters_.begin(), waiters_.end(), waiter);
    if (it == waiters_.end()) {
        return;  // dispatched meanwhile
    }
    waiters_.erase(it);
    metrics_.queue_wait_seconds.observe(Clock::now() - waiter->queued_at);
    fail_locked(std::move(waiter->done), 503,
                fmt::format("function {}: no capacity within queue-timeout ({}; max-instances {})",
                            function_, format_seconds(spec_->queue_timeout), spec_->max_instances),
                1);
}

void Pool::deliver_locked(Claim claim, AcquireDone done) {
    auto& inst = claim.instance;
    if (inst->state == InstanceState::Ready) {
        complete_locked(std::move(done),
                        {std::make_unique<Lease>(shared_from_this(), inst, claim.slot), {}});
    } else {
        inst->boot_waiters.emplace_back(claim.slot, std::move(done));
    }
}

void Pool::complete_locked(AcquireDone done, AcquireResult result) {
    completions_.push_back(Completion{std::move(done), std::move(result)});
}

void Pool::fail_locked(AcquireDone done, int status, std::string message, int retry_after_s) {
    complete_locked(std::move(done), {nullptr, PoolError(status, message, retry_after_s)});
}

Pool::Claim Pool::try_claim_locked(std::uintptr_t affinity) {
    // 1. A ready instance with a free slot: the busiest one, so idle ones can expire.
    std::shared_ptr<PooledInstance> best;
    for (auto& inst : instances_) {
        if (inst->state == InstanceState::Ready && !inst->exhausted &&
            inst->in_use < inst->capacity && (!best || inst->in_use > best->in_use)) {
            best = inst;
        }
    }
    if (best) {
        return claim_slot_locked(best, affinity);
    }
    // 2. A slot on an instance that is still starting.
    for (auto& inst : instances_) {
        if (inst->state != InstanceState::Ready && !inst->exhausted &&
            inst->in_use < inst->capacity) {
            return claim_slot_locked(inst);
        }
    }
    // 3. A new instance.
    if (live_count_locked() < spec_->max_instances) {
        return claim_slot_locked(create_instance_locked());
    }
    return {};
}

// The slot freed last, or (up to kAffinityScan slots back) the last one freed by a lease of the
// same affinity.
Pool::Claim Pool::claim_slot_locked(const std::shared_ptr<PooledInstance>& inst,
                                    std::uintptr_t affinity) {
    constexpr std::size_t kAffinityScan = 16;
    auto& free = inst->free_slots;
    std::size_t pick = free.size() - 1;
    for (std::size_t i = free.size(), scanned = 0;
         affinity != 0 && i-- > 0 && scanned < kAffinityScan; ++scanned) {
        if (inst->slot_affinity[free[i]] == affinity) {
            pick = i;
            break;
        }
    }
    std::swap(free[pick], free.back());
    unsigned slot = free.back();
    free.pop_back();
    inst->slot_affinity[slot] = affinity;
    ++inst->in_use;
    if (inst->spec->single_use) {
        inst->exhausted = true;
    }
    return Claim{inst, slot};
}

std::shared_ptr<PooledInstance> Pool::create_instance_locked() {
    auto inst = std::make_shared<PooledInstance>();
    // A sandbox the backend prepared ahead gives the instance its identity (id, callback token).
    Backend* backend = services_.backends.for_spec(*spec_);
    inst->prepared = backend ? backend->take_prepared(spec_) : nullptr;
    inst->id = inst->prepared ? inst->prepared->instance_id : random_hex(6);
    inst->token = inst->prepared ? inst->prepared->token : services_.readiness.issue();
    inst->spec = spec_;
    inst->capacity = spec_->single_use ? 1 : spec_->concurrent_requests;
    for (unsigned i = inst->capacity; i > 0; --i) {
        inst->free_slots.push_back(i - 1);
    }
    inst->caches.resize(inst->capacity);
    inst->slot_affinity.resize(inst->capacity);
    instances_.push_back(inst);
    ++starting_;
    metrics_.cold_starts.fetch_add(1, std::memory_order_relaxed);
    if (services_.observer) {
        services_.observer->instance_started(snapshot_locked(*inst));
    }

    std::weak_ptr<PooledInstance> weak = inst;
    std::weak_ptr<Pool> self = weak_from_this();
    inst->boot_timer =
        services_.timers.schedule(Clock::now() + to_duration(spec_->boot_timeout), [self, weak] {
            if (auto pool = self.lock()) {
                pool->on_boot_timeout(weak);
            }
        });
    services_.starts.post([pool = shared_from_this(), inst] { pool->run_start(inst); });
    return inst;
}

std::size_t Pool::live_count_locked() const {
    return instances_.size();
}

void Pool::dispatch_waiters_locked() {
    while (!waiters_.empty() && !closed_) {
        Claim claim = try_claim_locked(waiters_.front()->affinity);
        if (!claim) {
            break;
        }
        auto waiter = std::move(waiters_.front());
        waiters_.pop_front();
        services_.timers.cancel(waiter->timer);
        metrics_.queue_wait_seconds.observe(Clock::now() - waiter->queued_at);
        deliver_locked(std::move(claim), std::move(waiter->done));
    }
}

void Pool::ensure_min_instances_locked() {
    if (closed_ || !spec_) {
        return;
    }
    while (live_count_locked() < std::min(spec_->min_instances, spec_->max_instances)) {
        create_instance_locked();
    }
}

void Pool::run_start(std::shared_ptr<PooledInstance> inst) {
    struct StartDone {  // however this ends, shutdown() may stop waiting for it
        Pool& pool;
        ~StartDone() {
            Locked lk(pool);
            --pool.starting_;
            pool.cv_.notify_all();
        }
    } done{*this};
    {
        Locked lk(*this);
        if (inst->state == InstanceState::Stopping) {
            return;  // retired (boot timeout, shutdown) before its start began
        }
    }
    InstanceContext ctx;
    ctx.instance_id = inst->id;
    ctx.spec = inst->spec;
    ctx.callback_path = "/ready/" + inst->token;
    ctx.prepared = std::move(inst->prepared);
    std::weak_ptr<PooledInstance> weak = inst;
    std::weak_ptr<Pool> self = weak_from_this();
    ctx.on_exit = [self, weak](const std::string& reason) {
        if (auto pool = self.lock()) {
            pool->on_exit(weak, reason);
        }
    };

    std::unique_ptr<Instance> sandbox;
    int fail_status = 0;
    std::string fail_message;
    try {
        Backend* backend = services_.backends.for_spec(*inst->spec);
        if (!backend) {
            throw SandboxError(501, fmt::format("the {} backend is not available in this daemon",
                                                inst->spec->backend_name()));
        }
        sandbox = backend->start(ctx);
    } catch (const SandboxError& e) {
        fail_status = e.http_status();
        fail_message = e.what();
    } catch (const std::exception& e) {
        fail_status = 502;
        fail_message = e.what();
    }

    Locked lk(*this);
    if (!sandbox) {
        spdlog::warn("function {} instance {}: start failed: {}", function_, inst->id,
                     fail_message);
        if (inst->state != InstanceState::Stopping) {
            retire_locked(
                inst, "start failed", fail_status,
                fmt::format("function {}: instance failed to start: {}", function_, fail_message));
        }
        return;
    }
    inst->address = sandbox->address();
    inst->port = sandbox->port();
    inst->describe = sandbox->describe();
    inst->unit = sandbox->unit();
    inst->start_kind = sandbox->start_kind();
    if (inst->start_kind == std::string_view("restore")) {
        metrics_.restore_starts.fetch_add(1, std::memory_order_relaxed);
    } else if (inst->start_kind == std::string_view("spare")) {
        metrics_.spare_starts.fetch_add(1, std::memory_order_relaxed);
    }
    inst->sandbox = std::move(sandbox);
    if (inst->state == InstanceState::Stopping) {
        // Retired while starting (boot timeout, shutdown): stop what was just started.
        post_stop_locked(inst, 0, {});
        return;
    }
    if (inst->exited_early) {
        retire_locked(inst, "exited before ready", 502,
                      fmt::format("function {}: instance {} exited before it was ready ({})",
                                  function_, inst->id, inst->exit_reason),
                      true);
        return;
    }
    inst->state = InstanceState::Booting;
    notify_changed_locked(*inst);
    spdlog::debug("function {} instance {}: {} at {} booting", function_, inst->id, inst->describe,
                  inst->address);
    services_.readiness.expect(inst->token, inst->address, [self = weak_from_this(), weak] {
        auto pool = self.lock();
        auto i = weak.lock();
        if (pool && i) {
            pool->on_ready(i);
        }
    });
}

void Pool::on_ready(const std::shared_ptr<PooledInstance>& inst) {
    Locked lk(*this);
    if (inst->state != InstanceState::Booting) {
        return;
    }
    inst->state = InstanceState::Ready;
    notify_changed_locked(*inst);
    services_.timers.cancel(inst->boot_timer);
    inst->boot_timer = 0;
    auto boot_time = Clock::now() - inst->created;
    metrics_.cold_start_seconds.observe(boot_time);
    if (inst->start_kind == "restore") {
        metrics_.restore_seconds.observe(boot_time);
    }
    auto boot_ms = std::chrono::duration_cast<std::chrono::milliseconds>(boot_time);
    spdlog::info("function {} instance {}: ready in {} ms ({})", function_, inst->id,
                 boot_ms.count(), inst->describe);
    for (auto& [slot, done] : std::exchange(inst->boot_waiters, {})) {
        complete_locked(std::move(done),
                        {std::make_unique<Lease>(shared_from_this(), inst, slot), {}});
    }
    settle_locked(inst);  // an instance started for min-instances is idle from now
}

void Pool::on_exit(const std::weak_ptr<PooledInstance>& weak, const std::string& reason) {
    auto inst = weak.lock();
    if (!inst) {
        return;
    }
    Locked lk(*this);
    switch (inst->state) {
        case InstanceState::Stopping:
            return;
        case InstanceState::Starting:
            inst->exited_early = true;
            inst->exit_reason = reason;
            return;
        case InstanceState::Booting:
            spdlog::warn("function {} instance {}: exited while booting: {}", function_, inst->id,
                         reason);
            retire_locked(inst, "exited while booting", 502,
                          fmt::format("function {}: instance {} exited before it was ready ({})",
                                      function_, inst->id, reason),
                          true);
            return;
        case InstanceState::Ready:
            spdlog::warn("function {} instance {}: exited: {}", function_, inst->id, reason);
            retire_locked(inst, reason);
            return;
    }
}

void Pool::on_boot_timeout(const std::weak_ptr<PooledInstance>& weak) {
    auto inst = weak.lock();
    if (!inst) {
        return;
    }
    Locked lk(*this);
    inst->boot_timer = 0;
    if (inst->state != InstanceState::Starting && inst->state != InstanceState::Booting) {
        return;
    }
    spdlog::warn("function {} instance {}: not ready within boot-timeout", function_, inst->id);
    retire_locked(inst, "boot timeout", 504,
                  fmt::format("function {}: instance {} did not become ready within boot-timeout "
                              "({})",
                              function_, inst->id, format_seconds(inst->spec->boot_timeout)),
                  true);
}

void Pool::on_keepalive(const std::weak_ptr<PooledInstance>& weak) {
    auto inst = weak.lock();
    if (!inst) {
        return;
    }
    Locked lk(*this);
    inst->keepalive_timer = 0;
    if (inst->state != InstanceState::Ready || inst->in_use != 0) {
        return;  // in use: re-armed when it is idle again
    }
    if (Clock::now() < inst->idle_since + to_duration(inst->spec->keepalive)) {
        arm_keepalive_locked(inst);  // used meanwhile: idle since later
        return;
    }
    if (spec_ && live_count_locked() <= spec_->min_instances) {
        return;  // kept warm
    }
    spdlog::info("function {} instance {}: idle for keepalive ({}), stopping", function_, inst->id,
                 format_seconds(inst->spec->keepalive));
    retire_locked(inst, "keepalive expired");
}

void Pool::release(const std::shared_ptr<PooledInstance>& inst, unsigned slot) {
    Locked lk(*this);
    --inst->in_use;
    inst->free_slots.push_back(slot);
    ++inst->requests;
    notify_changed_locked(*inst);
    settle_locked(inst);
}

void Pool::settle_locked(const std::shared_ptr<PooledInstance>& inst) {
    if (inst->state == InstanceState::Ready && inst->in_use == 0) {
        if (inst->exhausted) {
            retire_locked(inst, "single-use request done");
        } else {
            inst->idle_since = Clock::now();
            arm_keepalive_locked(inst);
        }
    }
    dispatch_waiters_locked();
}

void Pool::arm_keepalive_locked(const std::shared_ptr<PooledInstance>& inst) {
    if (inst->keepalive_timer != 0) {
        return;  // fires at the earlier deadline and re-arms from idle_since
    }
    std::weak_ptr<PooledInstance> weak = inst;
    std::weak_ptr<Pool> self = weak_from_this();
    inst->keepalive_timer = services_.timers.schedule(
        inst->idle_since + to_duration(inst->spec->keepalive), [self, weak] {
            if (auto pool = self.lock()) {
                pool->on_keepalive(weak);
            }
        });
}

void Pool::mark_broken(const std::shared_ptr<PooledInstance>& inst, const std::string& reason) {
    Locked lk(*this);
    if (inst->state == InstanceState::Stopping) {
        return;
    }
    spdlog::warn("function {} instance {}: {}", function_, inst->id, reason);
    retire_locked(inst, reason);
}

void Pool::retire_locked(const std::shared_ptr<PooledInstance>& inst, const std::string& reason,
                         int fail_status, std::string fail_message, bool with_output) {
    auto it = std::find(instances_.begin(), instances_.end(), inst);
    if (it != instances_.end()) {
        instances_.erase(it);
    }
    inst->state = InstanceState::Stopping;
    for (auto* timer : {&inst->boot_timer, &inst->keepalive_timer}) {
        if (*timer != 0) {
            services_.timers.cancel(*timer);
            *timer = 0;
        }
    }
    services_.readiness.forget(inst->token);
    spdlog::debug("function {} instance {}: stopping ({})", function_, inst->id, reason);
    abort_requests(*inst, reason);

    if (services_.observer) {
        services_.observer->instance_stopped(snapshot_locked(*inst), reason);
    }
    if (fail_status == 0 && !inst->boot_waiters.empty()) {
        fail_status = 502;
        fail_message = fmt::format("function {}: instance {} stopped before it was ready ({})",
                                   function_, inst->id, reason);
    }
    bool failure = fail_status != 0;
    if (failure && (!with_output || !inst->sandbox)) {
        finish_failure_locked(*inst, fail_status, std::move(fail_message));
        fail_status = 0;
    }
    if (inst->sandbox) {
        // (An instance retired while Starting has no sandbox yet: run_start stops it on return.)
        post_stop_locked(inst, fail_status, std::move(fail_message));
    }
    if (failure) {
        // A failing function is not restarted in a tight loop: min-instances is retried later.
        schedule_min_retry_locked();
    } else {
        ensure_min_instances_locked();
    }
    dispatch_waiters_locked();
}

void Pool::abort_requests(PooledInstance& inst, const std::string& reason) {
    std::lock_guard lk(inst.caches_mu);
    inst.retired_reason = reason;
    for (auto& cache : inst.caches) {
        if (cache) {
            cache->abort();
        }
    }
}

void Pool::post_stop_locked(const std::shared_ptr<PooledInstance>& inst, int fail_status,
                            std::string fail_message) {
    ++stopping_;
    services_.stops.post([pool = shared_from_this(), inst, fail_status,
                          message = std::move(fail_message)]() mutable {
        std::unique_ptr<Instance> sandbox;
        {
            Locked lk(*pool);
            sandbox = std::move(inst->sandbox);
        }
        if (fail_status != 0) {
            std::string tail = sandbox ? sandbox->output_tail() : std::string();
            if (!tail.empty()) {
                message += "; last output:\n" + tail;
            }
            Locked lk(*pool);
            pool->finish_failure_locked(*inst, fail_status, std::move(message));
        }
        sandbox.reset();  // stops the sandbox and frees what it holds
        Locked lk(*pool);
        --pool->stopping_;
        pool->cv_.notify_all();
    });
}

void Pool::schedule_min_retry_locked() {
    if (closed_ || !spec_ || spec_->min_instances == 0 || min_retry_timer_ != 0) {
        return;
    }
    std::weak_ptr<Pool> self = weak_from_this();
    min_retry_timer_ = services_.timers.schedule(Clock::now() + kMinInstancesRetry, [self] {
        if (auto pool = self.lock()) {
            Locked lk(*pool);
            pool->min_retry_timer_ = 0;
            pool->ensure_min_instances_locked();
        }
    });
}

void Pool::finish_failure_locked(PooledInstance& inst, int status, std::string message) {
    inst.failed = true;
    inst.fail_status = status;
    inst.fail_message = std::move(message);
    for (auto& [slot, done] : std::exchange(inst.boot_waiters, {})) {
        fail_locked(std::move(done), inst.fail_status, inst.fail_message);
    }
}

bool Pool::stop_instance(const std::string& id, const std::string& reason) {
    Locked lk(*this);
    for (auto& inst : instances_) {
        if (inst->id == id) {
            auto keep = inst;
            retire_locked(
                keep, reason, 503,
                fmt::format("function {}: instance {} was stopped ({})", function_, id, reason));
            return true;
        }
    }
    return false;
}

unsigned Pool::stop_all(const std::string& reason) {
    Locked lk(*this);
    unsigned n = 0;
    while (!instances_.empty()) {
        auto inst = instances_.front();
        retire_locked(
            inst, reason, 503,
            fmt::format("function {}: instance {} was stopped ({})", function_, inst->id, reason));
        ++n;
    }
    return n;
}

void Pool::shutdown() {
    Locked lk(*this);
    closed_ = true;
    for (auto& waiter : std::exchange(waiters_, {})) {
        services_.timers.cancel(waiter->timer);
        metrics_.queue_wait_seconds.observe(Clock::now() - waiter->queued_at);
        fail_locked(std::move(waiter->done), 503,
                    fmt::format("function {}: the daemon is shutting down", function_));
    }
    if (min_retry_timer_ != 0) {
        services_.timers.cancel(min_retry_timer_);
        min_retry_timer_ = 0;
    }
    while (!instances_.empty()) {
        auto inst = instances_.front();
        retire_locked(inst, "daemon shutdown", 503,
                      fmt::format("function {}: the daemon is shutting down", function_));
    }
    lk.flush();
    cv_.wait(lk.lock(), [&] { return starting_ == 0 && stopping_ == 0; });
}

InstanceSnapshot Pool::snapshot_locked(const PooledInstance& inst) const {
    return InstanceSnapshot{inst.id,       function_,       inst.state,     inst.address,
                            inst.describe, inst.unit,       inst.capacity,  inst.in_use,
                            inst.requests, inst.started_at, inst.start_kind};
}

void Pool::notify_changed_locked(const PooledInstance& inst) {
    if (services_.observer) {
        services_.observer->instance_changed(snapshot_locked(inst));
    }
}

PoolSnapshot Pool::snapshot() const {
    std::lock_guard lk(mu_);
    PoolSnapshot snap;
    snap.function = function_;
    snap.queued = waiters_.size();
    if (spec_) {
        snap.slot_limit = std::size_t{spec_->max_instances} *
                          (spec_->single_use ? 1 : spec_->concurrent_requests);
    }
    for (auto& inst : instances_) {
        snap.instances.push_back(snapshot_locked(*inst));
    }
    return snap;
}

std::optional<InstanceSnapshot> Pool::find_instance(const std::string& id) const {
    std::lock_guard lk(mu_);
    for (auto& inst : instances_) {
        if (inst->id == id) {
            return snapshot_locked(*inst);
        }
    }
    return std::nullopt;
}

}  // namespace unifaas
