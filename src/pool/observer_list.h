// ObserverList: one PoolObserver that forwards every call to several (D-Bus signals, notify
// STATUS, ...), since PoolServices holds a single observer pointer.
#pragma once

#include <string>
#include <vector>

#include "pool/pool.h"

namespace unifaas {

class ObserverList : public PoolObserver {
  public:
    // Add every observer before the pools run; the list is read without a lock. Null is ignored.
    void add(PoolObserver* observer) {
        if (observer != nullptr) {
            observers_.push_back(observer);
        }
    }
    bool empty() const { return observers_.empty(); }

    void instance_started(const InstanceSnapshot& s) override {
        for (auto* o : observers_) {
            o->instance_started(s);
        }
    }
    void instance_changed(const InstanceSnapshot& s) override {
        for (auto* o : observers_) {
            o->instance_changed(s);
        }
    }
    void instance_stopped(const InstanceSnapshot& s, const std::string& reason) override {
        for (auto* o : observers_) {
            o->instance_stopped(s, reason);
        }
    }

  private:
    std::vector<PoolObserver*> observers_;
};

}  // namespace unifaas
