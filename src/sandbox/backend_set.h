// BackendSet: the backends this daemon runs, chosen per function by its spec.
#pragma once

#include <map>
#include <memory>

#include "sandbox/sandbox.h"

namespace unifaas {

class BackendSet : public Backends {
  public:
    void set_container(std::unique_ptr<Backend> backend);
    // engine = "oci" containers.
    void set_oci(std::unique_ptr<Backend> backend);
    void set_vm(HypervisorType type, std::unique_ptr<Backend> backend);

    Backend* for_spec(const FunctionSpec& spec) override;
    void prepare_ahead(const std::vector<std::shared_ptr<const FunctionSpec>>& specs) override;
    // Asks every backend to remove what a crashed earlier run left behind; returns the count.
    unsigned remove_leftovers();

  private:
    std::unique_ptr<Backend> container_;
    std::unique_ptr<Backend> oci_;
    std::map<HypervisorType, std::unique_ptr<Backend>> vm_;
};

}  // namespace unifaas
