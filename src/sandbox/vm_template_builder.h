// TemplateBuilder: the snapshot templates of one VM backend (qemu, firecracker).
// - Cold starts (restore_or_build): a clone of the function's ready template, or a build of it
//   asked for and a boot instead. The backend says how to restore its clone; the builder owns the
//   rest: finding the template, the restore deadline and acknowledgement, the logging, and the
//   store's books (three failed restores in a row discard the template).
// - Builds, in the background: one thread per build, at most one build per key at a time
//   (VmTemplateStore claims it), all joined when the builder goes. The backend says how to boot and
//   save its VM; the builder owns the rest: the partial directory (renamed into place on success,
//   removed on failure), the readiness token and the wait for the template's callback, the
//   logging, and the store's books.
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

#include "sandbox/accel.h"
#include "sandbox/sandbox.h"
#include "sandbox/vm_common.h"

namespace unifaas {

// What the clones of a saved template need to know about it.
struct SavedTemplate {
    std::string mac;             // the guest's MAC inside the snapshot
    std::string kernel_cmdline;  // (qemu) the command line the clones are started with
};

class TemplateBuilder;
class VmTemplate;
struct RestoreMessage;

// One restore in progress, handed to the backend's restore function.
class RestoreAttempt {
  public:
    const InstanceContext& ctx() const { return ctx_; }
    const FunctionSpec& spec() const { return *ctx_.spec; }
    const std::shared_ptr<VmTemplate>& tpl() const { return tpl_; }
    // The clone must be up and acknowledged by then: 10 s, or boot-timeout when shorter.
    std::chrono::steady_clock::time_point deadline() const { return deadline_; }

    // Keeps the clone from the moment its process exists: a later failure is then logged with its
    // last output lines, and it is stopped before the boot that replaces it takes new resources.
    template <typename T>
    T& hold(std::unique_ptr<T> clone) {
        T& held = *clone;
        clone_ = std::move(clone);
        return held;
    }

    // Broadcasts `message` out of the clone's tap until its guest acknowledges it; throws
    // std::runtime_error when it has not by deadline().
    void acknowledge(const std::string& tap, const RestoreMessage& message) const;

  private:
    friend class TemplateBuilder;
    RestoreAttempt(const InstanceContext& ctx, std::shared_ptr<VmTemplate> tpl);

    const InstanceContext& ctx_;
    std::shared_ptr<VmTemplate> tpl_;
    std::chrono::steady_clock::duration limit_;
    std::chrono::steady_clock::time_point deadline_;
    std::unique_ptr<Instance> clone_;
};

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
    // Restores a clone of attempt.tpl() for attempt.ctx(): started (RestoreAttempt::hold),
    // acknowledged (RestoreAttempt::acknowledge) and its exit watched. Throws SandboxError when
    // booting would fail the same way (no tap, no hypervisor): the start fails with it. Any other
    // exception is a failed restore: it is logged and counted, and the start boots instead.
    using RestoreFn = std::function<void(RestoreAttempt&)>;

    explicit TemplateBuilder(const VmEnvironment& env) : env_(env) {}
    ~TemplateBuilder();  // wakes every wait, joins every build
    TemplateBuilder(const TemplateBuilder&) = delete;
    TemplateBuilder& operator=(const TemplateBuilder&) = delete;

    // The start of a function with [vm] snapshot = true whose hypervisor is `hypervisor_binary`
    // on `accel`: a clone of its ready template made by `restore`, or nullptr (the caller boots).
    // nullptr too when the function has no snapshot or the daemon no template store; when the
    // template is not ready, its build (`save`) is asked for first (build_later).
    std::unique_ptr<Instance> restore_or_build(const InstanceContext& ctx,
                                               const std::string& hypervisor_binary, Accel accel,
                                               const RestoreFn& restore, SaveFn save);

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
