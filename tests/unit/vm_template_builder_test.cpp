// TemplateBuilder::restore_or_build: the cold start of a snapshot function that both VM backends
// share (find the template, restore a clone or fall back to a boot, or ask for the build), with
// the store's books on failed restores.
#include <gtest/gtest.h>
#include <stdlib.h>

#include <atomic>
#include <filesystem>
#include <fstream>

#include "sandbox/vm_template.h"
#include "sandbox/vm_template_builder.h"

namespace unifaas {
namespace {

namespace fs = std::filesystem;

class NoCallbacks : public CallbackRegistry {
  public:
    std::string issue() override { return "token"; }
    void expect(const std::string&, std::string, std::function<void()>) override {}
    void forget(const std::string&) override {}
};

// A clone that only says when it is gone.
class FakeClone : public Instance {
  public:
    explicit FakeClone(bool& gone) : gone_(gone) {}
    ~FakeClone() override { gone_ = true; }
    std::string address() const override { return "10.0.0.2"; }
    std::uint16_t port() const override { return 8080; }
    std::string describe() const override { return "fake clone"; }
    std::string output_tail() const override { return "the clone's last line"; }

  private:
    bool& gone_;
};

class RestoreOrBuildTest : public ::testing::Test {
  protected:
    void SetUp() override {
        char tmpl[] = "/tmp/unifaas-builder-XXXXXX";
        ASSERT_NE(mkdtemp(tmpl), nullptr);
        dir_ = tmpl;
        store_ = std::make_unique<VmTemplateStore>(dir_ / "templates", 1 << 20);
        env_.runtime_dir = dir_ / "run";
        env_.callbacks = &callbacks_;
        env_.templates = store_.get();
        auto spec = std::make_shared<FunctionSpec>();
        spec->name = "f";
        spec->file = dir_ / "function.toml";
        VmSpec vm;
        vm.snapshot = true;
        spec->sandbox = vm;
        ctx_.instance_id = "0123456789ab";
        ctx_.spec = spec;
        key_ = template_key(*spec, kBinary, Accel::Tcg);
    }
    void TearDown() override { fs::remove_all(dir_); }

    // The template of key_, ready.
    std::shared_ptr<VmTemplate> ready_template() {
        EXPECT_TRUE(store_->begin_build("f", key_));
        fs::path partial = store_->partial_dir(key_);
        fs::create_directories(partial);
        std::ofstream(partial / "memory") << "memory";
        std::ofstream(partial / "state") << "state";
        return store_->finish_build("f", key_, partial, "02:fa:0a:64:00:02", "console=ttyS0");
    }

    std::unique_ptr<Instance> start(TemplateBuilder& builder, const TemplateBuilder::RestoreFn& fn,
                                    TemplateBuilder::SaveFn save = {}) {
        if (!save) {
            save = [](TemplateBuild&) -> SavedTemplate { throw std::runtime_error("no build"); };
        }
        return builder.restore_or_build(ctx_, kBinary, Accel::Tcg, fn, save);
    }

    static constexpr const char* kBinary = "/nonexistent/qemu-system-x86_64";
    fs::path dir_;
    NoCallbacks callbacks_;
    std::unique_ptr<VmTemplateStore> store_;
    VmEnvironment env_;
    InstanceContext ctx_;
    std::string key_;
};

TEST_F(RestoreOrBuildTest, WithoutSnapshotNothingIsRestoredOrBuilt) {
    auto spec = std::make_shared<FunctionSpec>(*ctx_.spec);
    std::get<VmSpec>(spec->sandbox).snapshot = false;
    ctx_.spec = spec;
    ready_template();
    bool restored = false;
    TemplateBuilder builder(env_);
    EXPECT_EQ(start(builder, [&](RestoreAttempt&) { restored = true; }), nullptr);
    EXPECT_FALSE(restored);
}

TEST_F(RestoreOrBuildTest, NoTemplateYetAsksForItsBuildAndBoots) {
    std::atomic<int> builds{0};
    {
        TemplateBuilder builder(env_);
        bool restored = false;
        auto clone = start(
            builder, [&](RestoreAttempt&) { restored = true; },
            [&](TemplateBuild& build) -> SavedTemplate {
                EXPECT_EQ(build.key(), key_);
                ++builds;
                throw std::runtime_error("no guest here");
            });
        EXPECT_EQ(clone, nullptr) << "the caller boots";
        EXPECT_FALSE(restored);
    }  // joins the build
    EXPECT_EQ(builds, 1);
}

TEST_F(RestoreOrBuildTest, ReadyTemplateGivesTheHeldCloneAndResetsTheFailures) {
    auto tpl = ready_template();
    ASSERT_TRUE(tpl);
    TemplateBuilder builder(env_);
    auto fail = [](RestoreAttempt&) { throw std::runtime_error("no ack"); };
    for (unsigned i = 0; i + 1 < VmTemplateStore::kMaxFailedRestores; ++i) {
        EXPECT_EQ(start(builder, fail), nullptr);
    }
    bool gone = false;
    auto clone = start(builder, [&](RestoreAttempt& attempt) {
        EXPECT_EQ(attempt.tpl(), tpl);
        EXPECT_EQ(attempt.ctx().instance_id, ctx_.instance_id);
        EXPECT_GT(attempt.deadline(), std::chrono::steady_clock::now());
        attempt.hold(std::make_unique<FakeClone>(gone));
    });
    ASSERT_NE(clone, nullptr);
    EXPECT_EQ(clone->describe(), "fake clone");
    EXPECT_FALSE(gone);
    EXPECT_EQ(start(builder, fail), nullptr) << "the run was reset: one failure does not discard";
    EXPECT_EQ(store_->find("f", key_), tpl);
}

TEST_F(RestoreOrBuildTest, FailedRestoresStopTheCloneAndDiscardTheTemplateAfterThree) {
    auto tpl = ready_template();
    ASSERT_TRUE(tpl);
    fs::path tpl_dir = tpl->dir();
    tpl.reset();
    TemplateBuilder builder(env_);
    for (unsigned i = 0; i < VmTemplateStore::kMaxFailedRestores; ++i) {
        EXPECT_TRUE(store_->find("f", key_)) << "discarded after " << i << " failures";
        bool gone = false;
        auto clone = start(builder, [&](RestoreAttempt& attempt) {
            attempt.hold(std::make_unique<FakeClone>(gone));
            throw std::runtime_error("no ack");
        });
        EXPECT_EQ(clone, nullptr) << "the caller boots instead";
        EXPECT_TRUE(gone) << "the failed clone is stopped before the boot";
    }
    EXPECT_FALSE(store_->find("f", key_));
    EXPECT_FALSE(fs::exists(tpl_dir)) << "no clone holds it any more";
}

TEST_F(RestoreOrBuildTest, SandboxErrorFailsTheStartWithoutCountingAgainstTheTemplate) {
    auto tpl = ready_template();
    ASSERT_TRUE(tpl);
    TemplateBuilder builder(env_);
    for (unsigned i = 0; i < VmTemplateStore::kMaxFailedRestores; ++i) {
        try {
            start(builder, [](RestoreAttempt&) { throw SandboxError(503, "every tap leased"); });
            ADD_FAILURE() << "the SandboxError was swallowed";
        } catch (const SandboxError& e) {
            EXPECT_EQ(e.http_status(), 503);
        }
    }
    EXPECT_EQ(store_->find("f", key_), tpl);
}

}  // namespace
}  // namespace unifaas
