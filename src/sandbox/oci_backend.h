// OciBackend: engine = "oci" container functions, run by an OCI runtime (crun; runc accepted)
// directly, without a container engine. Each instance is a foreground `crun run` child of the
// daemon (its exit noticed at once through the pidfd), with a bundle (config.json) in its working
// directory, the image's root filesystem shared read-only, and a pre-made network namespace
// (veth on a /30 of the taps' subnet). Under systemd the runtime runs in the instance's transient
// scope with its own cgroup handling disabled; otherwise it puts the container in a cgroup of its
// own (/unifaas/<instance>) with the memory and pids limits. Runtime state lives in
// <runtime-dir>/oci (crun --root), unpacked images in <runtime-dir>/images. The container's
// output goes to <instance>/output.log: copied to the journal under systemd, otherwise capped
// (OciOutputCap: 1 MiB, then rotated once to output.log.1).
#pragma once

#include <memory>
#include <string>

#include "sandbox/oci_image.h"
#include "sandbox/oci_output.h"
#include "sandbox/oci_spare.h"
#include "sandbox/sandbox.h"
#include "sandbox/vm_common.h"

namespace unifaas {

class StartTimeline;

class OciBackend : public Backend {
  public:
    // `env.network` must manage container namespaces (NetworkConfig::netns_dir set).
    // `spare_memory_mib`: what containers created ahead (spares, see oci_spare.h) may reserve
    // together, counted by their functions' `memory`; 0: no spares.
    explicit OciBackend(VmEnvironment env, std::uint64_t spare_memory_mib = 0);
    ~OciBackend() override;

    // Starts the spare in ctx.prepared when there is one and it is alive; otherwise `crun run`.
    std::unique_ptr<Instance> start(const InstanceContext& ctx) override;
    // Kills and deletes containers in the state root, removes half-unpacked images.
    unsigned remove_leftovers() override;
    void prepare_ahead(const std::vector<std::shared_ptr<const FunctionSpec>>& specs) override;
    std::shared_ptr<Prepared> take_prepared(
        const std::shared_ptr<const FunctionSpec>& spec) override;

  private:
    struct Bundle;
    // Runtime, image, network namespace, policy and config.json of one container.
    Bundle make_bundle(const InstanceContext& ctx, StartTimeline& timeline);
    // `crun create` of a spare for spec (its own instance id and callback token).
    std::unique_ptr<OciSpare> make_spare(std::shared_ptr<const FunctionSpec> spec);

    VmEnvironment env_;
    std::filesystem::path state_root_;
    OciImageCache images_;
    std::unique_ptr<OciOutputCap> output_cap_;  // not under systemd: output files bounded
    std::string shim_exe_;                      // unifaas-oci-shim (spares), "" when missing
    std::unique_ptr<OciSpares> spares_;         // last: its thread uses the members above
};

// The process of an instance: the function's entrypoint (or the image's) with the callback URL
// as argv[1], and the environment: image env, then PATH (unless the image sets it), [env], then
// UNIFAAS_CALLBACK, PORT, UNIFAAS_FUNCTION, UNIFAAS_INSTANCE. Throws SandboxError 500 when
// there is no entrypoint.
struct OciProcessInput {
    const FunctionSpec* spec = nullptr;
    const ImageProcess* image = nullptr;  // nullptr for a plain rootfs directory
    std::string instance_id;
    std::string callback_url;
};
void fill_process(const OciProcessInput& in, OciLaunch& launch);

}  // namespace unifaas
