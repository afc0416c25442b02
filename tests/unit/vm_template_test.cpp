// VmTemplateStore: templates on disk, their replacement, failure accounting and the size cap.
#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>
#include <fstream>

#include "sandbox/vm_template.h"

namespace unifaas {
namespace {

namespace fs = std::filesystem;

class VmTemplateStoreTest : public ::testing::Test {
  protected:
    void SetUp() override {
        char tmpl[] = "/tmp/unifaas-templates-XXXXXX";
        ASSERT_NE(mkdtemp(tmpl), nullptr);
        dir_ = tmpl;
    }
    void TearDown() override { fs::remove_all(dir_); }

    // A complete build of `key` for `function` with a RAM file of `bytes`.
    std::shared_ptr<VmTemplate> build(VmTemplateStore& store, const std::string& function,
                                      const std::string& key, std::size_t bytes = 16) {
        EXPECT_TRUE(store.begin_build(function, key));
        fs::path partial = store.partial_dir(key);
        fs::create_directories(partial);
        std::ofstream(partial / "memory") << std::string(bytes, 'm');
        std::ofstream(partial / "state") << "state";
        return store.finish_build(function, key, partial, "02:fa:0a:64:00:02", "console=ttyS0");
    }

    fs::path dir_;
};

TEST_F(VmTemplateStoreTest, BuiltTemplateIsFoundAndSurvivesARestart) {
    {
        VmTemplateStore store(dir_, 1 << 20);
        auto tpl = build(store, "f", "k1");
        ASSERT_TRUE(tpl);
        EXPECT_EQ(store.find("f", "k1"), tpl);
        EXPECT_FALSE(store.begin_build("f", "k1")) << "already there";
        EXPECT_TRUE(fs::exists(tpl->memory_file()));
    }
    VmTemplateStore again(dir_, 1 << 20);
    auto tpl = again.find("f", "k1");
    ASSERT_TRUE(tpl);
    EXPECT_EQ(tpl->mac(), "02:fa:0a:64:00:02");
    EXPECT_EQ(tpl->kernel_cmdline(), "console=ttyS0");
}

TEST_F(VmTemplateStoreTest, PartialTemplatesAreRemovedAtStart) {
    fs::create_directories(dir_ / ".partial-k1-0011");
    std::ofstream(dir_ / ".partial-k1-0011" / "memory") << "half";
    VmTemplateStore store(dir_, 1 << 20);
    EXPECT_TRUE(fs::is_empty(dir_));
    EXPECT_FALSE(store.find("f", "k1"));
}

TEST_F(VmTemplateStoreTest, NewKeyDiscardsTheOldOnceItsLastCloneIsGone) {
    VmTemplateStore store(dir_, 1 << 20);
    auto old = build(store, "f", "k1");
    fs::path old_dir = old->dir();
    EXPECT_FALSE(store.find("f", "k2")) << "another key: nothing to restore";
    EXPECT_TRUE(fs::exists(old_dir)) << "a clone still maps it";
    old.reset();
    EXPECT_FALSE(fs::exists(old_dir));
    EXPECT_TRUE(build(store, "f", "k2"));
}

TEST_F(VmTemplateStoreTest, FailedRestoresInARowDiscardTheTemplate) {
    VmTemplateStore store(dir_, 1 << 20);
    auto tpl = build(store, "f", "k1");
    store.restore_failed(tpl);
    store.restore_succeeded(tpl);  // resets the run
    for (unsigned i = 0; i + 1 < VmTemplateStore::kMaxFailedRestores; ++i) {
        store.restore_failed(tpl);
    }
    EXPECT_EQ(store.find("f", "k1"), tpl);
    store.restore_failed(tpl);
    EXPECT_FALSE(store.find("f", "k1"));
    fs::path dir = tpl->dir();
    EXPECT_TRUE(fs::exists(dir)) << "deleted while a clone still holds it";
    tpl.reset();
    EXPECT_FALSE(fs::exists(dir)) << "a discarded template is deleted with its last user";
    EXPECT_TRUE(store.begin_build("f", "k1")) << "rebuilt at the next cold start";
}

TEST_F(VmTemplateStoreTest, SizeCapSkipsTheTemplateAndFailedBuildsStopRetrying) {
    VmTemplateStore store(dir_, 1024);
    EXPECT_FALSE(build(store, "f", "k1", 64 * 1024));
    EXPECT_FALSE(store.find("f", "k1"));
    EXPECT_FALSE(store.begin_build("f", "k1")) << "over the cap: not built again";
    EXPECT_TRUE(fs::is_empty(dir_));

    EXPECT_TRUE(store.begin_build("g", "k2"));
    store.abandon_build("k2", {});
    EXPECT_TRUE(store.begin_build("g", "k2"));
    store.abandon_build("k2", {});
    EXPECT_FALSE(store.begin_build("g", "k2")) << "a guest that never calls back is not rebooted";
}

}  // namespace
}  // namespace unifaas
