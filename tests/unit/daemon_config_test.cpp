// unifaas.toml and listen addresses.
#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "config/daemon_config.h"

namespace unifaas {
namespace {

namespace fs = std::filesystem;

class DaemonConfigTest : public ::testing::Test {
  protected:
    void SetUp() override {
        char pattern[] = "/tmp/unifaas-config-test-XXXXXX";
        ASSERT_NE(mkdtemp(pattern), nullptr);
        dir_ = pattern;
    }
    void TearDown() override { fs::remove_all(dir_); }

    std::string file() const { return (dir_ / "unifaas.toml").string(); }

    DaemonConfig load(const std::string& toml) {
        std::ofstream(dir_ / "unifaas.toml") << toml;
        return load_daemon_config(dir_ / "unifaas.toml");
    }

    void expect_error(const std::string& toml, const std::string& key_and_problem) {
        try {
            load(toml);
            ADD_FAILURE() << "loaded without error:\n" << toml;
        } catch (const ConfigError& e) {
            EXPECT_EQ(std::string(e.what()), file() + ": " + key_and_problem) << toml;
        }
    }

    fs::path dir_;
};

TEST_F(DaemonConfigTest, EmptyFileGivesDefaults) {
    DaemonConfig config = load("");
    EXPECT_TRUE(config.registry.empty());
    EXPECT_EQ(config.listen.to_string(), "0.0.0.0:8123");
    EXPECT_EQ(config.callback_listen.to_string(), "0.0.0.0:8124");
    EXPECT_EQ(config.log_level, "info");
    EXPECT_EQ(config.max_body_bytes, 6u * 1024 * 1024);
    EXPECT_EQ(config.http_threads, 0u) << "default: one event loop per CPU";
    EXPECT_EQ(config.http_scheduling, "batch");
    EXPECT_EQ(config.max_connections, 4096u);
    EXPECT_EQ(config.shutdown_grace, Seconds(10));
    EXPECT_EQ(config.runtime_dir, "/run/unifaas");
    EXPECT_EQ(config.docker_socket, "/var/run/docker.sock");
}

TEST_F(DaemonConfigTest, EveryKeyExplicit) {
    DaemonConfig config = load(
        "registry = \"/srv/functions\"\nlisten = \"127.0.0.1:9000\"\n"
        "callback-listen = \"[::1]:9001\"\nlog-level = \"debug\"\nmax-body-size = 1024\n"
        "http-threads = 8\nmax-connections = 100\nshutdown-grace = 2.5\nruntime-dir = \"/tmp/rt\"\n"
        "docker-socket = \"/run/user/1000/docker.sock\"\n");
    EXPECT_EQ(config.registry, "/srv/functions");
    EXPECT_EQ(config.listen.host, "127.0.0.1");
    EXPECT_EQ(config.listen.port, 9000);
    EXPECT_EQ(config.callback_listen.host, "::1");
    EXPECT_EQ(config.callback_listen.port, 9001);
    EXPECT_EQ(config.log_level, "debug");
    EXPECT_EQ(config.max_body_bytes, 1024u);
    EXPECT_EQ(config.http_threads, 8u);
    EXPECT_EQ(config.max_connections, 100u);
    EXPECT_EQ(config.shutdown_grace, Seconds(2.5));
    EXPECT_EQ(config.runtime_dir, "/tmp/rt");
    EXPECT_EQ(config.docker_socket, "/run/user/1000/docker.sock");
}

TEST_F(DaemonConfigTest, EveryLogLevel) {
    for (const char* level : {"error", "warn", "info", "debug", "trace"}) {
        EXPECT_EQ(load(std::string("log-level = \"") + level + "\"\n").log_level, level);
    }
}

TEST_F(DaemonConfigTest, BoundsAccepted) {
    EXPECT_EQ(load("http-threads = 0\n").http_threads, 0u);
    EXPECT_EQ(load("http-threads = 256\n").http_threads, 256u);
    EXPECT_EQ(load("http-scheduling = \"inherit\"\n").http_scheduling, "inherit");
    EXPECT_EQ(load("http-scheduling = \"batch\"\n").http_scheduling, "batch");
    EXPECT_EQ(load("max-connections = 1\n").max_connections, 1u);
    EXPECT_EQ(load("max-body-size = 1\n").max_body_bytes, 1u);
    EXPECT_EQ(load("stream-watermark = 4096\n").stream_watermark, 4096u);
    EXPECT_EQ(load("shutdown-grace = 0\n").shutdown_grace, Seconds(0));
}

TEST_F(DaemonConfigTest, RelativePathsResolveAgainstConfigDir) {
    DaemonConfig config = load(
        "registry = \"functions\"\nruntime-dir = \"./run/../rt\"\ndocker-socket = \"d.sock\"\n");
    EXPECT_EQ(config.registry, dir_ / "functions");
    EXPECT_EQ(config.runtime_dir, dir_ / "rt");
    EXPECT_EQ(config.docker_socket, (dir_ / "d.sock").string());
}

TEST_F(DaemonConfigTest, RelativeConfigPathStillResolvesAgainstItsDir) {
    std::ofstream(dir_ / "unifaas.toml") << "registry = \"../reg\"\n";
    fs::path cwd = fs::current_path();
    fs::current_path(dir_);
    DaemonConfig config = load_daemon_config("unifaas.toml");
    fs::current_path(cwd);
    EXPECT_EQ(config.registry, dir_.parent_path() / "reg");
}

TEST_F(DaemonConfigTest, Errors) {
    expect_error("bogus = 1\n", "bogus: unknown key");
    expect_error("log_level = \"info\"\n", "log_level: unknown key (did you mean log-level?)");
    expect_error("[network]\nbridge = \"x\"\n", "network: unknown key");
    expect_error("registry = 5\n", "registry: expected a string, got integer");
    expect_error("registry = \"\"\n", "registry: must not be empty");
    expect_error("log-level = \"verbose\"\n",
                 "log-level: unknown log level \"verbose\" (expected error, warn, info, debug, "
                 "trace)");
    expect_error("max-body-size = 0\n", "max-body-size: must be at least 1 (got 0)");
    expect_error("stream-watermark = 100\n",
                 "stream-watermark: must be between 4096 and 67108864 (got 100)");
    expect_error("max-body-size = \"6M\"\n", "max-body-size: expected an integer, got string");
    expect_error("http-threads = -1\n", "http-threads: must be between 0 and 256 (got -1)");
    expect_error("http-threads = 257\n", "http-threads: must be between 0 and 256 (got 257)");
    expect_error("http-scheduling = \"fifo\"\n",
                 "http-scheduling: unknown scheduling \"fifo\" (expected batch, inherit)");
    expect_error("max-connections = 0\n", "max-connections: must be between 1 and 1000000 (got 0)");
    expect_error("shutdown-grace = -1\n", "shutdown-grace: must be at least 0 (got -1)");
    expect_error("shutdown-grace = true\n",
                 "shutdown-grace: expected a number of seconds, got boolean");
    expect_error("listen = 8123\n", "listen: expected a string, got integer");
    expect_error("runtime-dir = []\n", "runtime-dir: expected a string, got array");
    expect_error("docker-socket = false\n", "docker-socket: expected a string, got boolean");
}

TEST_F(DaemonConfigTest, ListenErrorsNameFileAndKey) {
    expect_error("listen = \"8123\"\n",
                 "listen: expected ADDR:PORT (e.g. 127.0.0.1:8123, [::1]:8123 or :8123), got "
                 "\"8123\"");
    expect_error("callback-listen = \"0.0.0.0:0\"\n",
                 "callback-listen: port must be between 1 and 65535 (got \"0\")");
}

TEST_F(DaemonConfigTest, SyntaxErrorGivesLine) {
    std::ofstream(dir_ / "unifaas.toml") << "log-level = \"info\"\nlisten = \n";
    try {
        load_daemon_config(dir_ / "unifaas.toml");
        FAIL() << "loaded a broken file";
    } catch (const ConfigError& e) {
        EXPECT_TRUE(std::string(e.what()).starts_with(file() + ":2:")) << e.what();
    }
}

TEST_F(DaemonConfigTest, MissingFile) {
    try {
        load_daemon_config(dir_ / "unifaas.toml");
        FAIL() << "loaded a missing file";
    } catch (const ConfigError& e) {
        EXPECT_EQ(std::string(e.what()), file() + ": cannot read: No such file or directory");
    }
}

// --- parse_listen_address ---

ListenAddress parse(const std::string& text) {
    return parse_listen_address(text, "--listen");
}

std::string parse_error(const std::string& text) {
    try {
        parse(text);
    } catch (const ConfigError& e) {
        return e.what();
    }
    ADD_FAILURE() << "parsed " << text;
    return "";
}

TEST(ListenAddressTest, Forms) {
    EXPECT_EQ(parse("127.0.0.1:8123").host, "127.0.0.1");
    EXPECT_EQ(parse("127.0.0.1:8123").port, 8123);
    EXPECT_EQ(parse("0.0.0.0:8123").host, "0.0.0.0");
    EXPECT_EQ(parse(":8123").host, "0.0.0.0");
    EXPECT_EQ(parse(":8123").port, 8123);
    EXPECT_EQ(parse("[::1]:8123").host, "::1");
    EXPECT_EQ(parse("[::]:1").host, "::");
    EXPECT_EQ(parse("[::]:1").port, 1);
    EXPECT_EQ(parse("[fe80::1%eth0]:80").host, "fe80::1%eth0");
    EXPECT_EQ(parse("localhost:65535").host, "localhost");
    EXPECT_EQ(parse("localhost:65535").port, 65535);
}

TEST(ListenAddressTest, Errors) {
    const std::string form = "expected ADDR:PORT (e.g. 127.0.0.1:8123, [::1]:8123 or :8123), got ";
    EXPECT_EQ(parse_error("8123"), "--listen: " + form + "\"8123\"");
    EXPECT_EQ(parse_error(""), "--listen: " + form + "\"\"");
    EXPECT_EQ(parse_error("[::1]"), "--listen: " + form + "\"[::1]\"");
    EXPECT_EQ(parse_error(":0"), "--listen: port must be between 1 and 65535 (got \"0\")");
    EXPECT_EQ(parse_error(":65536"), "--listen: port must be between 1 and 65535 (got \"65536\")");
    EXPECT_EQ(parse_error("1.2.3.4:"), "--listen: port must be between 1 and 65535 (got \"\")");
    EXPECT_EQ(parse_error("1.2.3.4:http"),
              "--listen: port must be between 1 and 65535 (got \"http\")");
    EXPECT_EQ(parse_error(":-1"), "--listen: port must be between 1 and 65535 (got \"-1\")");
    EXPECT_EQ(parse_error(":99999999999"),
              "--listen: port must be between 1 and 65535 (got \"99999999999\")");
    EXPECT_EQ(parse_error("::1:8123"),
              "--listen: IPv6 addresses need brackets, e.g. [::1]:8123 (got \"::1\")");
    EXPECT_EQ(parse_error("[::1:8123"), "--listen: " + form + "\"[::1:8123\"");
    EXPECT_EQ(parse_error("[zz]:8123"), "--listen: invalid IPv6 address \"[zz]\"");
    EXPECT_EQ(parse_error("[]:8123"), "--listen: invalid IPv6 address \"[]\"");
    EXPECT_EQ(parse_error("1.2.3:8123"), "--listen: invalid address \"1.2.3\"");
    EXPECT_EQ(parse_error("256.0.0.1:8123"), "--listen: invalid address \"256.0.0.1\"");
    EXPECT_EQ(parse_error("a b:8123"), "--listen: invalid address \"a b\"");
    EXPECT_EQ(parse_error("-x:8123"), "--listen: invalid address \"-x\"");
}

}  // namespace
}  // namespace unifaas

// --- network keys: subnet, tap-prefix, tap-prealloc ---

namespace unifaas {
namespace {

TEST_F(DaemonConfigTest, NetworkDefaults) {
    DaemonConfig config = load("");
    EXPECT_EQ(config.network.subnet.to_string(), "10.100.0.0/16");
    EXPECT_EQ(config.network.tap_prefix, "faas");
    EXPECT_EQ(config.network.prealloc, 4u);
}

TEST_F(DaemonConfigTest, NetworkKeysExplicit) {
    DaemonConfig config =
        load("subnet = \"192.168.128.0/20\"\ntap-prefix = \"uf_tap-\"\ntap-prealloc = 0\n");
    EXPECT_EQ(config.network.subnet.to_string(), "192.168.128.0/20");
    EXPECT_EQ(config.network.tap_prefix, "uf_tap-");
    EXPECT_EQ(config.network.prealloc, 0u);
    EXPECT_EQ(load("subnet = \"10.0.0.0/8\"\n").network.subnet.prefix, 8u);
    EXPECT_EQ(load("subnet = \"10.0.0.4/30\"\n").network.subnet.prefix, 30u);
    EXPECT_EQ(load("tap-prealloc = 64\n").network.prealloc, 64u);
}

TEST_F(DaemonConfigTest, NetworkErrors) {
    expect_error("subnet = \"10.100.0.0\"\n",
                 "subnet: expected an IPv4 subnet A.B.C.D/N (e.g. 10.100.0.0/16), got "
                 "\"10.100.0.0\"");
    expect_error("subnet = \"10.100.0.1/16\"\n",
                 "subnet: \"10.100.0.1/16\" is not aligned to its prefix (the /16 containing it "
                 "is 10.100.0.0/16)");
    expect_error("subnet = \"10.0.0.0/7\"\n",
                 "subnet: must be a /8 to /30 subnet (got 10.0.0.0/7)");
    expect_error("subnet = \"10.0.0.0/31\"\n",
                 "subnet: must be a /8 to /30 subnet (got 10.0.0.0/31)");
    expect_error("subnet = 16\n", "subnet: expected a string, got integer");
    expect_error("tap-prefix = \"\"\n",
                 "tap-prefix: must be 1 to 10 characters a-z, 0-9, '_' or '-' (got \"\")");
    expect_error("tap-prefix = \"TAP\"\n",
                 "tap-prefix: must be 1 to 10 characters a-z, 0-9, '_' or '-' (got \"TAP\")");
    expect_error("tap-prefix = \"tap0\"\n",
                 "tap-prefix: must not end with a digit, taps are named <prefix><number> (got "
                 "\"tap0\")");
    expect_error("subnet = \"10.0.0.0/8\"\ntap-prefix = \"abcdefghij\"\n",
                 "tap-prefix: \"abcdefghij\" is too long for subnet 10.0.0.0/8: its last tap "
                 "\"abcdefghij4194303\" exceeds the 15-character interface name limit");
    expect_error("tap-prealloc = 65\n", "tap-prealloc: must be between 0 and 64 (got 65)");
    expect_error("tap-prealloc = -1\n", "tap-prealloc: must be between 0 and 64 (got -1)");
    expect_error("tap_prefix = \"x\"\n", "tap_prefix: unknown key (did you mean tap-prefix?)");
}

}  // namespace
}  // namespace unifaas

namespace unifaas {
namespace {

class HypervisorConfigTest : public DaemonConfigTest {};

TEST_F(HypervisorConfigTest, Defaults) {
    DaemonConfig config = load("");
    EXPECT_EQ(config.qemu_binary, "qemu-system-x86_64");
    EXPECT_EQ(config.accel, "auto");
    EXPECT_EQ(config.firecracker_binary, "");
}

TEST_F(HypervisorConfigTest, Explicit) {
    DaemonConfig config = load(
        "qemu-binary = \"/opt/qemu/bin/qemu-system-x86_64\"\naccel = \"tcg\"\n"
        "firecracker-binary = \"/opt/fc/firecracker\"\n");
    EXPECT_EQ(config.qemu_binary, "/opt/qemu/bin/qemu-system-x86_64");
    EXPECT_EQ(config.accel, "tcg");
    EXPECT_EQ(config.firecracker_binary, "/opt/fc/firecracker");
    EXPECT_EQ(load("accel = \"kvm\"\n").accel, "kvm");
}

TEST_F(HypervisorConfigTest, UnknownAccelNamesKey) {
    expect_error("accel = \"hvf\"\n",
                 "accel: unknown accelerator \"hvf\" (expected auto, kvm, tcg)");
}

// The keys of a node behind a load balancer (docs/FLEET.md).
TEST_F(DaemonConfigTest, FleetKeys) {
    DaemonConfig defaults = load("");
    EXPECT_EQ(defaults.node_name, host_name());
    EXPECT_FALSE(defaults.node_name.empty());
    EXPECT_EQ(defaults.drain_delay, Seconds(5));
    EXPECT_FALSE(defaults.agent_listen) << "the agent-check port is off by default";

    DaemonConfig c =
        load("node-name = \"edge-3.example\"\ndrain-delay = 2.5\nagent-listen = \":8125\"\n");
    EXPECT_EQ(c.node_name, "edge-3.example");
    EXPECT_EQ(c.drain_delay, Seconds(2.5));
    ASSERT_TRUE(c.agent_listen);
    EXPECT_EQ(c.agent_listen->to_string(), "0.0.0.0:8125");
    EXPECT_EQ(load("drain-delay = 0\n").drain_delay, Seconds(0));
}

TEST_F(DaemonConfigTest, FleetKeysRefuseBadValues) {
    expect_error("node-name = \"\"\n",
                 "node-name: node name \"\" must be 1 to 253 letters, digits, '-', '_' or '.'");
    expect_error("node-name = \"a b\"\n",
                 "node-name: node name \"a b\" must be 1 to 253 letters, digits, '-', '_' or '.'");
    expect_error("agent-listen = \"8125\"\n",
                 "agent-listen: expected ADDR:PORT (e.g. 127.0.0.1:8123, [::1]:8123 or :8123), "
                 "got \"8125\"");
    try {
        load("drain-delay = -1\n");
        ADD_FAILURE() << "a negative drain-delay loaded";
    } catch (const ConfigError& e) {
        EXPECT_NE(std::string(e.what()).find("drain-delay"), std::string::npos) << e.what();
    }
}

TEST_F(DaemonConfigTest, SnapshotKeys) {
    DaemonConfig defaults = load("");
    EXPECT_EQ(defaults.snapshot_dir, "/var/lib/unifaas/snapshots");
    EXPECT_EQ(defaults.snapshot_max_mib, 8192u);
    DaemonConfig config = load("snapshot-dir = \"/tmp/snaps\"\nsnapshot-max-size = 512\n");
    EXPECT_EQ(config.snapshot_dir, "/tmp/snaps");
    EXPECT_EQ(config.snapshot_max_mib, 512u);
}

TEST_F(DaemonConfigTest, OciSpareMemory) {
    EXPECT_EQ(load("").oci_spare_memory_mib, 512u);
    EXPECT_EQ(load("oci-spare-memory = 0\n").oci_spare_memory_mib, 0u);
    try {
        load("oci-spare-memory = -1\n");
        ADD_FAILURE() << "a negative oci-spare-memory loaded";
    } catch (const ConfigError& e) {
        EXPECT_NE(std::string(e.what()).find("oci-spare-memory"), std::string::npos) << e.what();
    }
}

}  // namespace
}  // namespace unifaas

namespace unifaas {
namespace {

TEST_F(DaemonConfigTest, EgressInterface) {
    EXPECT_EQ(load("").egress_interface, "");
    EXPECT_EQ(load("egress-interface = \"eth0\"").egress_interface, "eth0");
    expect_error("egress-interface = \"eth0; flush\"",
                 "egress-interface: not an interface name \"eth0; flush\"");
    expect_error("egress-interface = \"abcdefghijklmnop\"",
                 "egress-interface: not an interface name \"abcdefghijklmnop\"");
}

}  // namespace
}  // namespace unifaas
