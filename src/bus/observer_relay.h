// ObserverRelay: the pools' PoolObserver when the real observer can only be made after the pools'
// FunctionTable (the bus service needs the table, the table needs its observer). Forwards every
// event to the attached observer, or drops it while none is attached.
#pragma once

#include <mutex>
#include <shared_mutex>
#include <string>

#include "pool/pool.h"

namespace unifaas {

class ObserverRelay final : public PoolObserver {
  public:
    // Forwards to `target` from now on; nullptr stops forwarding. Returns once no event is being
    // forwarded to the previous target, so that one may be destroyed.
    void attach(PoolObserver* target) {
        std::unique_lock lk(mu_);
        target_ = target;
    }

    void instance_started(const InstanceSnapshot& s) override {
        std::shared_lock lk(mu_);
        if (target_) {
            target_->instance_started(s);
        }
    }
    void instance_changed(const InstanceSnapshot& s) override {
        std::shared_lock lk(mu_);
        if (target_) {
            target_->instance_changed(s);
        }
    }
    void instance_stopped(const InstanceSnapshot& s, const std::string& reason) override {
        std::shared_lock lk(mu_);
        if (target_) {
            target_->instance_stopped(s, reason);
        }
    }

  private:
    std::shared_mutex mu_;  // taken under a pool's lock: pool -> relay -> the target's own lock
    PoolObserver* target_ = nullptr;
};

}  // namespace unifaas
