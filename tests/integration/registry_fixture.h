// RegistryTest: what every daemon-level integration test starts from — an empty registry
// directory, container functions running the example image on the suite's private engine, and the
// daemon under test. Fixtures add their own checks before TearDown() ends the daemon.
#pragma once

#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <memory>
#include <string>

#include "daemon_process.h"
#include "docker_engine.h"

namespace unifaas::test {

class RegistryTest : public ::testing::Test {
  protected:
    void SetUp() override {
        char tmpl[] = "/tmp/unifaas-registry-XXXXXX";
        ASSERT_NE(mkdtemp(tmpl), nullptr);
        registry_ = tmpl;
        ASSERT_TRUE(engine().unifaas_containers().empty()) << "a previous test leaked";
    }

    // Stops the daemon (exit status 0 expected), then checks no container is left.
    void TearDown() override {
        if (daemon_ && daemon_->running()) {
            int status = daemon_->terminate();
            EXPECT_EQ(status, 0) << daemon_->log();
        }
        daemon_.reset();
        EXPECT_TRUE(engine().unifaas_containers().empty()) << "containers leaked";
        std::filesystem::remove_all(registry_);
    }

    void write_function(const std::string& name, const std::string& toml) {
        std::filesystem::create_directories(registry_ / name);
        std::ofstream(registry_ / name / "function.toml") << toml;
    }

    // A container function running the example image, with extra top-level keys and
    // [container] lines.
    void add_hello(const std::string& name, const std::string& top = "",
                   const std::string& container_extra = "") {
        write_function(name, top + "\n[container]\nimage = \"" + engine().image_name() +
                                 "\"\nmemory = 64\n" + container_extra + "\n");
    }

    void start_daemon(const std::string& extra_config = "") {
        DaemonProcess::Options o;
        o.registry = registry_;
        o.docker_socket = engine().socket_path();
        o.extra_config = extra_config;
        daemon_ = std::make_unique<DaemonProcess>(o);
    }

    std::filesystem::path registry_;
    std::unique_ptr<DaemonProcess> daemon_;
};

}  // namespace unifaas::test
