#include "sandbox/backend_set.h"

#include <spdlog/spdlog.h>

namespace unifaas {

void BackendSet::set_container(std::unique_ptr<Backend> backend) {
    container_ = std::move(backend);
}

void BackendSet::set_oci(std::unique_ptr<Backend> backend) {
    oci_ = std::move(backend);
}

void BackendSet::set_vm(HypervisorType type, std::unique_ptr<Backend> backend) {
    vm_[type] = std::move(backend);
}

Backend* BackendSet::for_spec(const FunctionSpec& spec) {
    if (spec.is_container()) {
        return spec.container().engine == ContainerEngine::Oci ? oci_.get() : container_.get();
    }
    auto it = vm_.find(spec.vm().hypervisor);
    return it == vm_.end() ? nullptr : it->second.get();
}

unsigned BackendSet::remove_leftovers() {
    unsigned removed = 0;
    auto clean = [&](Backend* b) {
        try {
            removed += b->remove_leftovers();
        } catch (const std::exception& e) {
            spdlog::warn("could not remove leftovers of an earlier run: {}", e.what());
        }
    };
    if (container_) {
        clean(container_.get());
    }
    if (oci_) {
        clean(oci_.get());
    }
    for (auto& [type, backend] : vm_) {
        clean(backend.get());
    }
    return removed;
}

void BackendSet::prepare_ahead(const std::vector<std::shared_ptr<const FunctionSpec>>& specs) {
    // Only the OCI backend prepares sandboxes ahead; the others ignore it.
    if (oci_) {
        oci_->prepare_ahead(specs);
    }
}

}  // namespace unifaas
