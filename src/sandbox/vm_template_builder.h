// TemplateBuilder: builds the snapshot templates of one VM backend (qemu, firecracker) in the
// background. One thread per build, at most one build per key at a time (VmTemplateStore claims
// it), all joined when the builder goes. The backend says how to boot and save its VM; the builder
// owns the rest: the partial directory (renamed into place on success, removed on failure), the
// readiness token and the wait for the template's callback, the logging, and the store's books.
#pragma once

#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "sandbox/sandbox.h"
#include "sandbox/vm_common.h"

namespace unifaas {

// What the clones of a saved template need to know about it.
struct SavedTemplate {
    std::string mac;             // the guest's MAC inside the snapshot
    std::string kernel_cmdline;  // (qemu) the command line the clones are started with
};

class TemplateBuilder;

// One build in progress, handed to the backend's save function.
class TemplateBuild {
  public:
    const FunctionSpec& spec() const { return *ctx_.spec; }
    const std::string& key() const { return key_; }
    // The directory to save into (exists, empty): renamed into place when the save returns.
    const std::filesystem::path& partial() const { return partial_; }
    // The template VM's identity: ctx().instance_id ("template-<12 hex>") names its working
    // directory and its scope; ctx().callback_path is its readiness URL path.
    const InstanceContext& ctx() const { return ctx_; }

    // Blocks until the template VM calls back from `address`. Throws std::runtime_error when
    // the daemon stops first, the VM's process (`pidfd`) ends, or boot-timeout (counted from the
    // build's start) passes; then `why` (e.g. the console's last lines) is added to the message.
    void wait_ready(const std::string& address, int pidfd, const std::function<std::string()>& why);

  private:
    friend class TemplateBuilder;
    TemplateBuild(TemplateBuilder& builder, InstanceContext ctx, std::string key,
                  std::filesystem::path partial, std::string token);

    TemplateBuilder& builder_;
    InstanceContext ctx_;
    std::string key_;
    std::filesystem::path partial_;
    std::string token_;
    std::chrono::steady_clock::time_point started_;
};

class TemplateBuilder {
  public:
    // Boots the template VM, waits for it (TemplateBuild::wait_ready), pauses and saves it into
    // partial() and stops it; throws on any failure (the build is then abandoned and logged).
    using SaveFn = std::function<SavedTemplate(TemplateBuild&)>;

    explicit TemplateBuilder(const VmEnvironment& env) : env_(env) {}
    ~TemplateBuilder();  // wakes every wait, joins every build
    TemplateBuilder(const TemplateBuilder&) = delete;
    TemplateBuilder& operator=(const TemplateBuilder&) = delete;

    // Builds template `key` of `spec` on a thread of its own, unless it is built or being built
    // already, the store gave up on it, or the daemon cannot build templates (no callbacks).
    void build_later(std::shared_ptr<const FunctionSpec> spec, const std::string& key, SaveFn save);

  private:
    friend class TemplateBuild;
    void build(const std::shared_ptr<const FunctionSpec>& spec, const std::string& key,
               const SaveFn& save);

    const VmEnvironment& env_;
    std::mutex mu_;
    std::condition_variable changed_;
    bool stopping_ = false;
    std::vector<std::thread> threads_;
};

}  // namespace unifaas
