#include "sandbox/vm_template_builder.h"

#include <algorithm>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "sandbox/child_process.h"
#include "sandbox/restore_channel.h"
#include "sandbox/vm_template.h"
#include "util/random.h"

namespace unifaas {

namespace {

// A clone must have loaded its state and acknowledged its new identity within this (or the
// function's boot-timeout when shorter), else it is destroyed and the cold start boots instead.
// Under TCG on a loaded host a restore has taken 2 s; normally it takes a few hundred ms.
constexpr auto kRestoreDeadline = std::chrono::seconds(10);

}  // namespace

RestoreAttempt::RestoreAttempt(const InstanceContext& ctx, std::shared_ptr<VmTemplate> tpl)
    : ctx_(ctx),
      tpl_(std::move(tpl)),
      limit_(std::min<std::chrono::steady_clock::duration>(
          kRestoreDeadline,
          std::chrono::duration_cast<std::chrono::steady_clock::duration>(ctx.spec->boot_timeout))),
      deadline_(std::chrono::steady_clock::now() + limit_) {}

void RestoreAttempt::acknowledge(const std::string& tap, const RestoreMessage& message) const {
    if (!send_restore(tap, message, deadline_)) {
        throw std::runtime_error(fmt::format(
            "the guest did not acknowledge its restore message within {} ms (does its init "
            "speak restore protocol {}?)",
            std::chrono::duration_cast<std::chrono::milliseconds>(limit_).count(),
            kRestoreProtocolVersion));
    }
}

TemplateBuild::TemplateBuild(TemplateBuilder& builder, InstanceContext ctx, std::string key,
                             std::filesystem::path partial, std::string token)
    : builder_(builder),
      ctx_(std::move(ctx)),
      key_(std::move(key)),
      partial_(std::move(partial)),
      token_(std::move(token)),
      started_(std::chrono::steady_clock::now()) {}

void TemplateBuild::wait_ready(const std::string& address, int pidfd,
                               const std::function<std::string()>& why) {
    struct Outcome {
        bool ready = false;
        bool exited = false;
    };
    auto outcome = std::make_shared<Outcome>();  // the callbacks may outlive this frame
    TemplateBuilder* b = &builder_;
    auto note = [b, outcome](bool Outcome::*what) {
        std::lock_guard lk(b->mu_);
        (*outcome).*what = true;
        b->changed_.notify_all();
    };
    CallbackRegistry& callbacks = *b->env_.callbacks;
    callbacks.expect(token_, address, [note] { note(&Outcome::ready); });
    ExitWatcher::Id watch = 0;
    if (b->env_.exits != nullptr && pidfd >= 0) {
        watch = b->env_.exits->watch(pidfd, [note] { note(&Outcome::exited); });
    }
    Outcome seen;
    bool stopping = false;
    {
        std::unique_lock lk(b->mu_);
        b->changed_.wait_until(
            lk,
            started_ + std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                           spec().boot_timeout),
            [&] { return outcome->ready || outcome->exited || b->stopping_; });
        stopping = b->stopping_;
        seen = *outcome;
    }
    if (watch != 0) {
        b->env_.exits->unwatch(watch);
    }
    callbacks.forget(token_);
    if (seen.ready) {
        return;
    }
    if (stopping) {
        throw std::runtime_error("the daemon is stopping");
    }
    std::string detail = why ? why() : std::string();
    if (seen.exited) {
        throw std::runtime_error("the template VM ended before its readiness callback" + detail);
    }
    throw std::runtime_error(fmt::format("no readiness callback within boot-timeout ({} s){}",
                                         spec().boot_timeout.count(), detail));
}

TemplateBuilder::~TemplateBuilder() {
    std::vector<std::thread> threads;
    {
        std::lock_guard lk(mu_);
        stopping_ = true;
        threads.swap(threads_);
    }
    changed_.notify_all();
    for (auto& t : threads) {
        t.join();
    }
}

std::unique_ptr<Instance> TemplateBuilder::restore_or_build(const InstanceContext& ctx,
                                                            const std::string& hypervisor_binary,
                                                            Accel accel, const RestoreFn& restore,
                                                            SaveFn save) {
    const FunctionSpec& spec = *ctx.spec;
    if (!spec.vm().snapshot || env_.templates == nullptr) {
        return nullptr;
    }
    std::string key = template_key(spec, hypervisor_binary, accel);
    std::shared_ptr<VmTemplate> tpl = env_.templates->find(spec.name, key);
    if (!tpl) {
        build_later(ctx.spec, key, std::move(save));
        return nullptr;
    }
    RestoreAttempt attempt(ctx, tpl);
    try {
        restore(attempt);
        env_.templates->restore_succeeded(tpl);
        return std::move(attempt.clone_);
    } catch (const SandboxError&) {
        throw;  // no tap, no hypervisor: booting would fail the same way
    } catch (const std::exception& e) {
        std::string tail = attempt.clone_ ? attempt.clone_->output_tail() : std::string();
        spdlog::warn(
            "function {} instance {}: restore from template {} failed, booting instead: "
            "{}{}{}",
            spec.name, ctx.instance_id, key, e.what(), tail.empty() ? "" : "\n", tail);
    }
    attempt.clone_.reset();  // gives back its process, tap and files before the boot takes new ones
    env_.templates->restore_failed(tpl);
    return nullptr;
}

void TemplateBuilder::build_later(std::shared_ptr<const FunctionSpec> spec, const std::string& key,
                                  SaveFn save) {
    if (env_.callbacks == nullptr || env_.templates == nullptr ||
        !env_.templates->begin_build(spec->name, key)) {
        return;
    }
    std::lock_guard lk(mu_);
    if (stopping_) {
        env_.templates->abandon_build(key, {});
        return;
    }
    threads_.emplace_back(
        [this, spec = std::move(spec), key, save = std::move(save)] { build(spec, key, save); });
}

void TemplateBuilder::build(const std::shared_ptr<const FunctionSpec>& spec, const std::string& key,
                            const SaveFn& save) {
    auto started = std::chrono::steady_clock::now();
    std::filesystem::path partial = env_.templates->partial_dir(key);
    try {
        std::filesystem::create_directories(partial);
        InstanceContext ctx;
        ctx.instance_id = "template-" + random_hex(6);
        ctx.spec = spec;
        std::string token = env_.callbacks->issue();
        ctx.callback_path = "/ready/" + token;
        TemplateBuild build(*this, std::move(ctx), key, partial, token);
        SavedTemplate saved = save(build);
        if (env_.templates->finish_build(spec->name, key, partial, saved.mac,
                                         saved.kernel_cmdline)) {
            spdlog::info("function {}: template {} ready in {} ms", spec->name, key,
                         std::chrono::duration_cast<std::chrono::milliseconds>(
                             std::chrono::steady_clock::now() - started)
                             .count());
        }
    } catch (const std::exception& e) {
        spdlog::warn("function {}: template {} not built (its cold starts keep booting): {}",
                     spec->name, key, e.what());
        env_.templates->abandon_build(key, partial);
    }
}

}  // namespace unifaas
