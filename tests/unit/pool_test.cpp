// Pool semantics against an in-process test backend: slots, packing, queueing, timeouts,
// single-use, keepalive, min-instances, failures. The double tests the pool, not a backend.
#include "pool/pool.h"

#include <gtest/gtest.h>

#include <atomic>
#include <future>
#include <thread>

namespace unifaas {
namespace {

using namespace std::chrono_literals;

// Records every start and stop; the test decides when an instance is ready or dies.
class TestBackend : public Backend, public Backends {
  public:
    struct Started {
        InstanceContext ctx;
        std::string address;
        bool destroyed = false;
    };

    class TestInstance : public Instance {
      public:
        TestInstance(TestBackend& b, std::size_t index) : b_(b), index_(index) {}
        ~TestInstance() override {
            std::lock_guard lk(b_.mu_);
            b_.started_[index_].destroyed = true;
            b_.cv_.notify_all();
        }
        std::string address() const override {
            std::lock_guard lk(b_.mu_);
            return b_.started_[index_].address;
        }
        std::uint16_t port() const override { return 8080; }
        std::string describe() const override { return "test instance"; }
        std::string output_tail() const override { return "console line"; }

      private:
        TestBackend& b_;
        std::size_t index_;
    };

    std::unique_ptr<Instance> start(const InstanceContext& ctx) override {
        std::unique_lock lk(mu_);
        if (fail_status != 0) {
            throw SandboxError(fail_status, fail_message);
        }
        started_.push_back({ctx, "10.0.0." + std::to_string(started_.size() + 1)});
        cv_.notify_all();
        return std::make_unique<TestInstance>(*this, started_.size() - 1);
    }
    Backend* for_spec(const FunctionSpec&) override { return this; }

    // Waits until at least n instances were started.
    bool wait_started(std::size_t n, std::chrono::milliseconds timeout = 5s) {
        std::unique_lock lk(mu_);
        return cv_.wait_for(lk, timeout, [&] { return started_.size() >= n; });
    }
    bool wait_destroyed(std::size_t index, std::chrono::milliseconds timeout = 5s) {
        std::unique_lock lk(mu_);
        return cv_.wait_for(lk, timeout,
                            [&] { return index < started_.size() && started_[index].destroyed; });
    }
    std::size_t started_count() {
        std::lock_guard lk(mu_);
        return started_.size();
    }
    std::size_t live_count() {
        std::lock_guard lk(mu_);
        std::size_t n = 0;
        for (auto& s : started_) {
            n += s.destroyed ? 0 : 1;
        }
        return n;
    }
    Started get(std::size_t index) {
        std::lock_guard lk(mu_);
        return started_.at(index);
    }

    int fail_status = 0;
    std::string fail_message;

  private:
    mutable std::mutex mu_;
    std::condition_variable cv_;
    std::vector<Started> started_;
};

class PoolTest : public ::testing::Test {
  protected:
    std::shared_ptr<FunctionSpec> make_spec() {
        auto spec = std::make_shared<FunctionSpec>();
        spec->name = "fn";
        spec->concurrent_requests = 1;
        spec->max_instances = 2;
        spec->keepalive = Seconds(60);
        spec->queue_timeout = Seconds(5);
        spec->boot_timeout = Seconds(5);
        spec->sandbox = [] {
            ContainerSpec c;
            c.image = "img";
            return c;
        }();
        return spec;
    }

    // Marks instance `index` ready the way the callback server would.
    void make_ready(std::size_t index) {
        ASSERT_TRUE(backend.wait_started(index + 1));
        auto s = backend.get(index);
        std::string token = s.ctx.callback_path.substr(std::string("/ready/").size());
        ASSERT_EQ(readiness.signal(token, s.address, 5s), Readiness::Outcome::Ready);
    }

    std::future<std::unique_ptr<Lease>> acquire_async(std::shared_ptr<const FunctionSpec> spec) {
        return std::async(std::launch::async, [this, spec] { return pool->acquire(spec); });
    }

    void TearDown() override {
        pool->shutdown();
        EXPECT_EQ(backend.live_count(), 0u) << "an instance outlived shutdown";
        EXPECT_EQ(readiness.pending(), 0u) << "a callback token outlived its instance";
    }

    TestBackend backend;
    Readiness readiness;
    TimerQueue timers;
    WorkQueue starts{"start", 4};
    WorkQueue stops{"stop", 2};
    std::shared_ptr<Pool> pool =
        std::make_shared<Pool>("fn", PoolServices{backend, readiness, timers, starts, stops});
};

TEST_F(PoolTest, ColdStartWaitsForReadinessThenReusesWarmInstance) {
    auto spec = make_spec();
    auto first = acquire_async(spec);
    ASSERT_TRUE(backend.wait_started(1));
    EXPECT_EQ(first.wait_for(50ms), std::future_status::timeout) << "lease before readiness";
    make_ready(0);
    auto lease = first.get();
    EXPECT_EQ(lease->address(), "10.0.0.1");
    EXPECT_EQ(lease->port(), 8080);
    lease.reset();

    auto again = pool->acquire(spec);
    EXPECT_EQ(again->address(), "10.0.0.1");
    EXPECT_EQ(backend.started_count(), 1u) << "a warm instance was not reused";
    auto snap = pool->snapshot();
    ASSERT_EQ(snap.instances.size(), 1u);
    EXPECT_EQ(snap.instances[0].in_use, 1u);
    EXPECT_EQ(snap.instances[0].requests, 1u);
}

TEST_F(PoolTest, ConcurrentRequestsShareOneInstanceUpToItsSlots) {
    auto spec = make_spec();
    spec->concurrent_requests = 3;
    auto a = acquire_async(spec);
    auto b = acquire_async(spec);
    auto c = acquire_async(spec);
    make_ready(0);
    auto la = a.get(), lb = b.get(), lc = c.get();
    EXPECT_EQ(backend.started_count(), 1u);
    auto d = acquire_async(spec);  // fourth: needs a second instance
    make_ready(1);
    EXPECT_EQ(d.get()->address(), "10.0.0.2");
}

// A free slot last leased with the caller's affinity (the gateway's loop) comes first, so its
// connection stays with that loop; without affinity, the slot freed last.
TEST_F(PoolTest, FreeSlotOfTheSameAffinityIsPreferred) {
    struct Marker : SlotCache {
        explicit Marker(std::string owner) : owner(std::move(owner)) {}
        std::string owner;
    };
    auto spec = make_spec();
    spec->concurrent_requests = 4;
    spec->max_instances = 1;
    auto acquire = [&](std::uintptr_t affinity) {
        std::promise<AcquireResult> result;
        pool->acquire_async(
            spec, [&](AcquireResult r) { result.set_value(std::move(r)); }, affinity);
        auto r = result.get_future().get();
        EXPECT_FALSE(r.error.has_value());
        return std::move(r.lease);
    };
    auto owner = [](Lease& lease, const std::string& name) {
        auto& cache = lease.cache([&] { return std::make_unique<Marker>(name); });
        return static_cast<Marker&>(cache).owner;
    };
    auto warm = acquire_async(spec);
    make_ready(0);
    warm.get().reset();

    auto a = acquire(1);
    auto b = acquire(2);
    EXPECT_EQ(owner(*a, "a"), "a");
    EXPECT_EQ(owner(*b, "b"), "b");
    a.reset();
    b.reset();  // b's slot is the one freed last
    auto again = acquire(1);
    EXPECT_EQ(owner(*again, "new"), "a");
    auto any = acquire(0);
    EXPECT_EQ(owner(*any, "new"), "b");
}

TEST_F(PoolTest, PacksOntoTheBusiestInstance) {
    auto spec = make_spec();
    spec->concurrent_requests = 2;
    auto a = acquire_async(spec);
    auto b = acquire_async(spec);
    make_ready(0);
    auto la = a.get(), lb = b.get();  // instance 1: 2 of 2
    auto c = acquire_async(spec);
    make_ready(1);
    auto lc = c.get();  // instance 2: 1 of 2
    EXPECT_EQ(lc->address(), "10.0.0.2");
    la.reset();  // instance 1: 1 in use
    lc.reset();  // instance 2: idle
    auto next = pool->acquire(spec);
    EXPECT_EQ(next->address(), "10.0.0.1") << "new request should pack onto the instance in use";
}

TEST_F(PoolTest, QueuesInFifoOrderWhenAtMaxInstances) {
    auto spec = make_spec();
    spec->max_instances = 1;
    auto first = acquire_async(spec);
    make_ready(0);
    auto lease = first.get();

    std::mutex order_mu;
    std::vector<int> order;
    auto waiter = [&](int n) {
        auto l = pool->acquire(spec);
        std::lock_guard lk(order_mu);
        order.push_back(n);
    };
    std::thread w1(waiter, 1);
    while (pool->snapshot().queued < 1) {
        std::this_thread::yield();
    }
    std::thread w2(waiter, 2);
    while (pool->snapshot().queued < 2) {
        std::this_thread::yield();
    }
    lease.reset();
    w1.join();
    w2.join();
    EXPECT_EQ(order, (std::vector<int>{1, 2}));
    EXPECT_EQ(backend.started_count(), 1u);
}

TEST_F(PoolTest, QueueTimeoutAnswers503WithRetryAfter) {
    auto spec = make_spec();
    spec->max_instances = 1;
    spec->queue_timeout = Seconds(0.1);
    auto first = acquire_async(spec);
    make_ready(0);
    auto lease = first.get();
    try {
        pool->acquire(spec);
        FAIL() << "acquire succeeded without capacity";
    } catch (const PoolError& e) {
        EXPECT_EQ(e.status(), 503);
        EXPECT_GT(e.retry_after_s(), 0);
        EXPECT_NE(std::string(e.what()).find("queue-timeout"), std::string::npos) << e.what();
    }
    EXPECT_EQ(pool->snapshot().queued, 0u);
}

TEST_F(PoolTest, SingleUseInstanceStopsAfterItsRequest) {
    auto spec = make_spec();
    spec->single_use = true;
    spec->concurrent_requests = 4;
    auto first = acquire_async(spec);
    make_ready(0);
    auto second = acquire_async(spec);  // may not share the single-use instance
    make_ready(1);
    auto l1 = first.get();
    auto l2 = second.get();
    EXPECT_NE(l1->address(), l2->address());
    l1.reset();
    EXPECT_TRUE(backend.wait_destroyed(0)) << "single-use instance survived its request";
    l2.reset();
    EXPECT_TRUE(backend.wait_destroyed(1));
    EXPECT_TRUE(pool->snapshot().instances.empty());
}

TEST_F(PoolTest, KeepaliveStopsIdleInstanceAfterLastRequestFinished) {
    auto spec = make_spec();
    spec->keepalive = Seconds(0.2);
    auto first = acquire_async(spec);
    make_ready(0);
    auto lease = first.get();
    auto held_since = std::chrono::steady_clock::now();
    std::this_thread::sleep_for(300ms);  // longer than keepalive while busy: must not expire
    EXPECT_EQ(backend.live_count(), 1u) << "busy instance expired";
    lease.reset();
    auto released = std::chrono::steady_clock::now();
    EXPECT_TRUE(backend.wait_destroyed(0));
    EXPECT_GE(std::chrono::steady_clock::now() - released, 190ms);
    EXPECT_GE(released - held_since, 300ms);
}

TEST_F(PoolTest, MinInstancesAreStartedAndKeptWarm) {
    auto spec = make_spec();
    spec->min_instances = 2;
    spec->max_instances = 3;
    spec->keepalive = Seconds(0.05);
    pool->update(spec);
    ASSERT_TRUE(backend.wait_started(2));
    make_ready(0);
    make_ready(1);
    // Idle past keepalive: still there, since min-instances keeps them.
    EXPECT_FALSE(backend.wait_destroyed(0, 300ms));
    EXPECT_EQ(backend.live_count(), 2u);
    auto lease = pool->acquire(spec);
    EXPECT_EQ(backend.started_count(), 2u) << "warm instance not used";
}

TEST_F(PoolTest, BootTimeoutFails504AndStopsTheInstance) {
    auto spec = make_spec();
    spec->boot_timeout = Seconds(0.1);
    try {
        pool->acquire(spec);
        FAIL() << "acquire succeeded without readiness";
    } catch (const PoolError& e) {
        EXPECT_EQ(e.status(), 504);
        EXPECT_NE(std::string(e.what()).find("boot-timeout"), std::string::npos) << e.what();
        EXPECT_NE(std::string(e.what()).find("console line"), std::string::npos)
            << "no output tail: " << e.what();
    }
    EXPECT_TRUE(backend.wait_destroyed(0));
    EXPECT_TRUE(pool->snapshot().instances.empty());
}

TEST_F(PoolTest, StartFailureReportsBackendStatusAndMessage) {
    auto spec = make_spec();
    backend.fail_status = 500;
    backend.fail_message = "image \"nope\" not found";
    try {
        pool->acquire(spec);
        FAIL() << "acquire succeeded";
    } catch (const PoolError& e) {
        EXPECT_EQ(e.status(), 500);
        EXPECT_NE(std::string(e.what()).find("image \"nope\" not found"), std::string::npos);
    }
    EXPECT_TRUE(pool->snapshot().instances.empty());
}

TEST_F(PoolTest, ExitWhileBootingFails502WithOutput) {
    auto spec = make_spec();
    auto first = acquire_async(spec);
    ASSERT_TRUE(backend.wait_started(1));
    // on_exit may only come after start() returned: wait until the instance is booting.
    while (pool->snapshot().instances.at(0).state != InstanceState::Booting) {
        std::this_thread::yield();
    }
    backend.get(0).ctx.on_exit("exited with status 3");
    try {
        first.get();
        FAIL() << "acquire succeeded";
    } catch (const PoolError& e) {
        EXPECT_EQ(e.status(), 502);
        EXPECT_NE(std::string(e.what()).find("status 3"), std::string::npos) << e.what();
    }
    EXPECT_TRUE(backend.wait_destroyed(0));
}

TEST_F(PoolTest, ReadyInstanceThatExitsIsReplacedOnNextRequest) {
    auto spec = make_spec();
    auto first = acquire_async(spec);
    make_ready(0);
    first.get().reset();
    backend.get(0).ctx.on_exit("killed");
    EXPECT_TRUE(backend.wait_destroyed(0));
    auto next = acquire_async(spec);
    make_ready(1);
    EXPECT_EQ(next.get()->address(), "10.0.0.2");
}

TEST_F(PoolTest, ExitAbortsRequestsInProgressOnTheInstance) {
    struct Cache : SlotCache {
        std::atomic<bool>* aborted;
        explicit Cache(std::atomic<bool>* a) : aborted(a) {}
        void abort() override { *aborted = true; }
    };
    std::atomic<bool> aborted{false};
    auto spec = make_spec();
    auto first = acquire_async(spec);
    make_ready(0);
    auto lease = first.get();
    lease->cache([&] { return std::make_unique<Cache>(&aborted); });
    EXPECT_EQ(lease->retired_reason(), "");
    backend.get(0).ctx.on_exit("qemu killed by signal 9");
    EXPECT_TRUE(aborted) << "the request in progress was left waiting for a dead instance";
    EXPECT_EQ(lease->retired_reason(), "qemu killed by signal 9");
    lease.reset();
    EXPECT_TRUE(backend.wait_destroyed(0));
}

TEST_F(PoolTest, WrongCallbackSourceChangesNothing) {
    auto spec = make_spec();
    spec->boot_timeout = Seconds(0.3);
    auto first = acquire_async(spec);
    ASSERT_TRUE(backend.wait_started(1));
    auto s = backend.get(0);
    std::string token = s.ctx.callback_path.substr(7);
    EXPECT_EQ(readiness.signal(token, "10.9.9.9", 2s), Readiness::Outcome::WrongSource);
    EXPECT_EQ(readiness.signal("00" + token.substr(2), s.address, 10ms),
              Readiness::Outcome::UnknownToken);
    EXPECT_EQ(first.wait_for(50ms), std::future_status::timeout);
    EXPECT_THROW(first.get(), PoolError);  // boot timeout: the refused callbacks did nothing
}

TEST_F(PoolTest, CallbackThroughADualStackSocketMatchesTheIpv4Address) {
    auto spec = make_spec();
    auto first = acquire_async(spec);
    ASSERT_TRUE(backend.wait_started(1));
    while (pool->snapshot().instances.at(0).state != InstanceState::Booting) {
        std::this_thread::yield();
    }
    auto s = backend.get(0);
    std::string token = s.ctx.callback_path.substr(7);
    EXPECT_EQ(readiness.signal(token, "::ffff:10.0.0.9", 10ms), Readiness::Outcome::WrongSource);
    EXPECT_EQ(readiness.signal(token, "::ffff:" + s.address, 2s), Readiness::Outcome::Ready);
    EXPECT_EQ(first.get()->address(), s.address);
}

TEST_F(PoolTest, ShutdownFailsWaitersAndStopsEverything) {
    auto spec = make_spec();
    spec->max_instances = 1;
    auto first = acquire_async(spec);
    make_ready(0);
    auto lease = first.get();
    auto queued = acquire_async(spec);
    while (pool->snapshot().queued < 1) {
        std::this_thread::yield();
    }
    auto booting_pool = acquire_async(spec);
    std::thread stopper([&] { pool->shutdown(); });
    try {
        queued.get();
        FAIL() << "queued request served after shutdown";
    } catch (const PoolError& e) {
        EXPECT_EQ(e.status(), 503);
    }
    EXPECT_THROW(booting_pool.get(), PoolError);
    lease.reset();
    stopper.join();
    EXPECT_EQ(backend.live_count(), 0u);
    EXPECT_THROW(pool->acquire(spec), PoolError);
}

TEST_F(PoolTest, AsyncAcquireOfAFreeSlotCompletesBeforeItReturns) {
    auto spec = make_spec();
    auto first = acquire_async(spec);
    make_ready(0);
    first.get().reset();

    bool called = false;
    std::thread::id caller;
    pool->acquire_async(spec, [&](AcquireResult r) {
        called = true;
        caller = std::this_thread::get_id();
        EXPECT_FALSE(r.error);
        ASSERT_TRUE(r.lease);
        EXPECT_EQ(r.lease->address(), "10.0.0.1");
    });
    EXPECT_TRUE(called) << "a free slot should be handed over at once";
    EXPECT_EQ(caller, std::this_thread::get_id());
    EXPECT_EQ(pool->snapshot().instances.at(0).in_use, 0u) << "the dropped lease kept its slot";
}

TEST_F(PoolTest, AsyncCallbacksRunWithoutThePoolLock) {
    auto spec = make_spec();
    spec->max_instances = 1;
    auto first = acquire_async(spec);
    make_ready(0);
    auto lease = first.get();

    // Queued; served when `lease` is released. Its callback drops the lease and acquires again,
    // which deadlocks if the pool still holds its lock while calling it.
    std::promise<std::string> again;
    pool->acquire_async(spec, [&](AcquireResult r) {
        ASSERT_TRUE(r.lease);
        r.lease.reset();
        pool->acquire_async(spec, [&](AcquireResult r2) {
            again.set_value(r2.lease ? r2.lease->address() : std::string("error"));
        });
    });
    EXPECT_EQ(pool->snapshot().queued, 1u);
    lease.reset();
    auto result = again.get_future();
    ASSERT_EQ(result.wait_for(5s), std::future_status::ready) << "callback under the pool lock?";
    EXPECT_EQ(result.get(), "10.0.0.1");
    EXPECT_EQ(pool->snapshot().queued, 0u);
}

TEST_F(PoolTest, AsyncRequestsOnABootingInstanceFailWithItsError) {
    auto spec = make_spec();
    spec->concurrent_requests = 2;
    std::promise<int> a, b;
    pool->acquire_async(spec,
                        [&](AcquireResult r) { a.set_value(r.error ? r.error->status() : 0); });
    pool->acquire_async(spec,
                        [&](AcquireResult r) { b.set_value(r.error ? r.error->status() : 0); });
    ASSERT_TRUE(backend.wait_started(1));
    EXPECT_EQ(backend.started_count(), 1u) << "both requests fit on one instance";
    auto id = pool->snapshot().instances.at(0).id;
    ASSERT_TRUE(pool->stop_instance(id, "test"));
    auto fa = a.get_future(), fb = b.get_future();
    ASSERT_EQ(fa.wait_for(5s), std::future_status::ready);
    ASSERT_EQ(fb.wait_for(5s), std::future_status::ready);
    EXPECT_EQ(fa.get(), 503);
    EXPECT_EQ(fb.get(), 503);
}

TEST_F(PoolTest, NewDefinitionAppliesToNewInstancesOnly) {
    auto spec = make_spec();
    spec->concurrent_requests = 1;
    auto first = acquire_async(spec);
    make_ready(0);
    auto l1 = first.get();
    auto edited = make_spec();
    edited->concurrent_requests = 2;
    auto second = acquire_async(edited);
    make_ready(1);
    auto l2 = second.get();
    EXPECT_EQ(backend.get(0).ctx.spec->concurrent_requests, 1u);
    EXPECT_EQ(backend.get(1).ctx.spec->concurrent_requests, 2u);
    auto third = pool->acquire(edited);  // second instance has a second slot
    EXPECT_EQ(third->address(), l2->address());
}

}  // namespace
}  // namespace unifaas
