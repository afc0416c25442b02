// main() of integration_tests: one private Docker engine (in its own network namespace) for the
// whole binary. The process enters that namespace before any test creates a thread, so container
// IPs and the bridge gateway are reachable from the tests; the host's namespace is not touched.
#include <unistd.h>

#include <cstdlib>
#include <iostream>
#include <memory>

#include <gtest/gtest.h>
#include <spdlog/spdlog.h>

#include "docker_engine.h"

namespace unifaas::test {

namespace {

PrivateDockerEngine* g_engine = nullptr;

class DockerEngineEnvironment : public ::testing::Environment {
  public:
    void SetUp() override {
        try {
            engine_ = std::make_unique<PrivateDockerEngine>();
            engine_->enter_netns();
            g_engine = engine_.get();
        } catch (const std::exception& e) {
            engine_.reset();
            FAIL() << "cannot set up the private Docker engine: " << e.what();
        }
    }
    void TearDown() override {
        g_engine = nullptr;
        engine_.reset();
    }

  private:
    std::unique_ptr<PrivateDockerEngine> engine_;
};

}  // namespace

PrivateDockerEngine& engine() {
    if (g_engine == nullptr) {
        throw std::logic_error("the private Docker engine is not running");
    }
    return *g_engine;
}

}  // namespace unifaas::test

int main(int argc, char** argv) {
    ::testing::InitGoogleTest(&argc, argv);
    if (geteuid() != 0) {
        // Network namespaces and dockerd need root; a run as a normal user reports and passes.
        std::cerr << "integration_tests: skipped: needs root (network namespaces, dockerd)\n";
        ::testing::GTEST_FLAG(filter) = "-*";
        return RUN_ALL_TESTS();
    }
    if (const char* level = std::getenv("UNIFAAS_TEST_LOG")) {
        spdlog::set_level(spdlog::level::from_str(level));
    }
    // Daemons under test must never reach a real system bus (or systemd): tests that want a bus
    // start a private one and point DBUS_SYSTEM_BUS_ADDRESS at it themselves.
    setenv("DBUS_SYSTEM_BUS_ADDRESS", "unix:path=/nonexistent/unifaas-tests-have-no-system-bus", 1);
    ::testing::AddGlobalTestEnvironment(new unifaas::test::DockerEngineEnvironment);
    return RUN_ALL_TESTS();
}
