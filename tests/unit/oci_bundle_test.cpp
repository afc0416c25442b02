// The OCI backend's pure parts: config.json against a golden file, the process of an instance
// (entrypoint, callback as argv[1], environment order), image configs.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "config/function_spec.h"
#include "sandbox/oci_backend.h"
#include "sandbox/oci_bundle.h"
#include "sandbox/oci_image.h"
#include "sandbox/sandbox.h"

namespace unifaas {
namespace {

namespace fs = std::filesystem;

const fs::path kGolden = fs::path(UNIFAAS_SOURCE_DIR) / "tests" / "data" / "oci" / "config.json";

FunctionSpec oci_function() {
    FunctionSpec spec;
    spec.name = "hello";
    spec.port = 9000;
    spec.env = {{"GREETING", "hi"}};
    ContainerSpec container;
    container.engine = ContainerEngine::Oci;
    container.image = "rootfs";
    container.image_path = "/srv/functions/hello/rootfs";
    spec.sandbox = container;
    return spec;
}

OciLaunch golden_launch() {
    FunctionSpec spec = oci_function();
    ImageProcess image;
    image.entrypoint = {"/hello", "--serve"};
    image.cmd = {"ignored"};
    image.env = {"PATH=/bin", "LANG=C"};
    image.cwd = "/srv";
    image.uid = 1000;
    image.gid = 100;
    OciLaunch launch;
    fill_process({&spec, &image, "0123456789ab", "http://10.100.0.1:8124/ready/tok"}, launch);
    launch.rootfs = "/run/unifaas/images/sha256-abc/rootfs";
    launch.hostname = "unifaas-0123456789ab";
    launch.netns = "/run/unifaas/netns/faasv0";
    launch.memory_bytes = 64 << 20;
    launch.pids_limit = 256;
    launch.cgroups_path = "/unifaas/0123456789ab";
    return launch;
}

TEST(OciBundleTest, ConfigMatchesGoldenFile) {
    std::string text = oci_config(golden_launch()).dump(2) + "\n";
    if (std::getenv("UNIFAAS_UPDATE_GOLDEN") != nullptr) {
        std::ofstream(kGolden) << text;
    }
    std::ifstream in(kGolden);
    ASSERT_TRUE(in) << kGolden;
    std::stringstream golden;
    golden << in.rdbuf();
    EXPECT_EQ(text, golden.str());
}

TEST(OciBundleTest, ProcessTakesImageEntrypointAndCallbackAsArgv1) {
    OciLaunch l = golden_launch();
    EXPECT_EQ(l.args,
              (std::vector<std::string>{"/hello", "--serve", "http://10.100.0.1:8124/ready/tok"}));
    EXPECT_EQ(l.env, (std::vector<std::string>{"PATH=/bin", "LANG=C", "GREETING=hi",
                                               "UNIFAAS_CALLBACK=http://10.100.0.1:8124/ready/tok",
                                               "PORT=9000", "UNIFAAS_FUNCTION=hello",
                                               "UNIFAAS_INSTANCE=0123456789ab"}));
    EXPECT_EQ(l.cwd, "/srv");
    EXPECT_EQ(l.uid, 1000u);
    EXPECT_EQ(l.gid, 100u);
}

TEST(OciBundleTest, FunctionEntrypointWinsAndPlainRootfsGetsDefaultPath) {
    FunctionSpec spec = oci_function();
    std::get<ContainerSpec>(spec.sandbox).entrypoint = {"/bin/fn"};
    OciLaunch l;
    fill_process({&spec, nullptr, "id", "http://cb"}, l);
    EXPECT_EQ(l.args, (std::vector<std::string>{"/bin/fn", "http://cb"}));
    EXPECT_EQ(l.env.at(0).rfind("PATH=/usr/local/sbin:", 0), 0u);
    EXPECT_EQ(l.cwd, "/");
}

TEST(OciBundleTest, NoEntrypointIsA500NamingTheFunction) {
    FunctionSpec spec = oci_function();
    OciLaunch l;
    try {
        fill_process({&spec, nullptr, "id", "http://cb"}, l);
        FAIL() << "no error";
    } catch (const SandboxError& e) {
        EXPECT_EQ(e.http_status(), 500);
        EXPECT_NE(std::string(e.what()).find("function \"hello\": image "
                                             "/srv/functions/hello/rootfs has no entrypoint"),
                  std::string::npos)
            << e.what();
    }
}

TEST(OciBundleTest, ImageConfigFields) {
    ImageProcess p = parse_image_config(
        R"({"config":{"Entrypoint":["/a"],"Cmd":["b"],"Env":["X=1"],"WorkingDir":"/w",)"
        R"("User":"7:8"}})");
    EXPECT_EQ(p.entrypoint, std::vector<std::string>{"/a"});
    EXPECT_EQ(p.cmd, std::vector<std::string>{"b"});
    EXPECT_EQ(p.env, std::vector<std::string>{"X=1"});
    EXPECT_EQ(p.cwd, "/w");
    EXPECT_EQ(p.uid, 7u);
    EXPECT_EQ(p.gid, 8u);
    EXPECT_TRUE(parse_image_config(R"({"config":null})").entrypoint.empty());
    EXPECT_THROW(parse_image_config(R"({"config":{"User":"nobody"}})"), std::runtime_error);
}

}  // namespace
}  // namespace unifaas
