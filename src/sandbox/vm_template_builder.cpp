#include "sandbox/vm_template_builder.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "sandbox/child_process.h"
#include "sandbox/vm_template.h"
#include "util/random.h"

namespace unifaas {

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
