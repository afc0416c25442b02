// unifaas: flags + config -> wire the components -> run until SIGINT/SIGTERM. Nothing else.
#include <getopt.h>
#include <signal.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>
#include <sys/resource.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include <iostream>
#include <optional>

#include "bus/bus_service.h"
#include "config/daemon_config.h"
#include "fleet/agent_server.h"
#include "fleet/drain_switch.h"
#include "fleet/load_report.h"
#include "gateway/gateway.h"
#include "net/firewall.h"
#include "net/network.h"
#include "net/tap_device.h"
#include "net/veth_namespace.h"
#include "pool/function_table.h"
#include "pool/observer_list.h"
#include "registry/registry.h"
#include "sandbox/accel.h"
#include "sandbox/backend_set.h"
#include "sandbox/child_process.h"
#include "sandbox/docker_backend.h"
#include "sandbox/firecracker_backend.h"
#include "sandbox/oci_backend.h"
#include "sandbox/qemu_backend.h"
#include "sandbox/restore_channel.h"
#include "sandbox/vm_template.h"
#include "systemd/console_forwarder.h"
#include "systemd/journal_sink.h"
#include "systemd/listen_fds.h"
#include "systemd/notify.h"
#include "systemd/scope_manager.h"
#include "version.h"

namespace {

using namespace unifaas;

constexpr const char* kUsage = R"(Usage: unifaas -r|--registry DIR [options]

Function-as-a-Service daemon: starts functions on demand in containers and microVMs and routes
HTTP invocations (/invoke/<function>/<path>) to them.

Options:
  -r, --registry DIR       directory with one subdirectory per function (function.toml)
  -l, --log-level LEVEL    error, warn, info (default), debug or trace
      --listen ADDR:PORT   address for invocations (default 0.0.0.0:8123)
      --config FILE        daemon configuration (TOML), e.g. /etc/unifaas/unifaas.toml;
                           flags override it
      --cleanup-taps       remove every tap named with the tap prefix (default faasN) and exit
      --version            print the version and exit
  -h, --help               print this help and exit
)";

struct Flags {
    std::optional<std::string> registry;
    std::optional<std::string> log_level;
    std::optional<std::string> listen;
    std::optional<std::string> config;
    bool cleanup_taps = false;
};

// Parses argv; exits for --help, --version and usage errors.
Flags parse_flags(int argc, char** argv) {
    enum { kListen = 256, kConfig, kVersion, kCleanupTaps };
    static const option options[] = {{"registry", required_argument, nullptr, 'r'},
                                     {"log-level", required_argument, nullptr, 'l'},
                                     {"listen", required_argument, nullptr, kListen},
                                     {"config", required_argument, nullptr, kConfig},
                                     {"version", no_argument, nullptr, kVersion},
                                     {"cleanup-taps", no_argument, nullptr, kCleanupTaps},
                                     {"help", no_argument, nullptr, 'h'},
                                     {nullptr, 0, nullptr, 0}};
    Flags flags;
    int c;
    while ((c = getopt_long(argc, argv, "r:l:h", options, nullptr)) != -1) {
        switch (c) {
            case 'r':
                flags.registry = optarg;
                break;
            case 'l':
                flags.log_level = optarg;
                break;
            case kListen:
                flags.listen = optarg;
                break;
            case kConfig:
                flags.config = optarg;
                break;
            case kCleanupTaps:
                flags.cleanup_taps = true;
                break;
            case kVersion:
                std::cout << "unifaas " << UNIFAAS_VERSION << "\n";
                std::exit(0);
            case 'h':
                std::cout << kUsage;
                std::exit(0);
            default:
                std::cerr << kUsage;
                std::exit(2);
        }
    }
    if (optind < argc) {
        std::cerr << "unifaas: unexpected argument: " << argv[optind] << "\n" << kUsage;
        std::exit(2);
    }
    return flags;
}

DaemonConfig make_config(const Flags& flags) {
    DaemonConfig config = flags.config ? load_daemon_config(*flags.config) : DaemonConfig{};
    if (flags.registry) {
        config.registry = *flags.registry;
    }
    if (flags.log_level) {
        config.log_level = *flags.log_level;
    }
    if (flags.listen) {
        config.listen = parse_listen_address(*flags.listen, "--listen");
    }
    if (config.registry.empty() && !flags.cleanup_taps) {
        throw ConfigError("no registry: pass -r DIR or set registry in the config file");
    }
    auto level = spdlog::level::from_str(config.log_level);
    if (level == spdlog::level::off && config.log_level != "off") {
        throw ConfigError("log level: unknown level \"" + config.log_level +
                          "\" (expected error, warn, info, debug, trace)");
    }
    return config;
}

// Whether the daemon's stderr is the journal (and journald takes native entries too).
bool log_to_journal() {
    return running_under_journal() && journal_socket_exists();
}

// To the journal, with UNIFAAS_FUNCTION/UNIFAAS_INSTANCE fields, when stderr goes there.
void setup_logging(const std::string& level) {
    std::shared_ptr<spdlog::logger> logger;
    if (log_to_journal()) {
        logger = std::make_shared<spdlog::logger>("unifaas", std::make_shared<JournalSink>());
    } else {
        logger = spdlog::stderr_color_mt("unifaas");
        logger->set_pattern("%^%l%$: %v");
    }
    spdlog::set_default_logger(logger);
    spdlog::set_level(spdlog::level::from_str(level));
}

sigset_t handled_signals() {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGHUP);
    return set;
}

Listeners open_listeners(const DaemonConfig& config) {
    auto activated = take_activated_sockets();
    const std::vector<std::string> order = {"http", "callback"};
    Listeners l;
    l.http_fd = pick_socket(activated, "http", order);
    l.callback_fd = pick_socket(activated, "callback", order);
    l.agent_fd = pick_socket(activated, "agent", {});
    if (l.agent_fd < 0 && config.agent_listen) {
        l.agent_fd = bind_listener(config.agent_listen->host, config.agent_listen->port);
    }
    if (l.http_fd < 0) {
        l.http_fd = bind_listener(config.listen.host, config.listen.port);
    } else {
        spdlog::info("serving invocations on the socket passed by the service manager");
    }
    if (l.callback_fd < 0) {
        l.callback_fd = bind_listener(config.callback_listen.host, config.callback_listen.port);
    }
    return l;
}

// HAProxy's agent-check port (docs/FLEET.md): state and free capacity, one line a connection.
std::unique_ptr<AgentServer> open_agent(int fd, const DrainSwitch& drain,
                                        const FunctionTable& functions) {
    if (fd < 0) {
        return nullptr;
    }
    spdlog::info("agent-check on {}", local_address(fd));
    return std::make_unique<AgentServer>(fd, [&drain, &functions] {
        std::vector<PoolLoad> loads;
        for (const auto& pool : functions.snapshot()) {
            loads.push_back(load_of(pool));
        }
        return agent_reply(drain.state(), capacity_weight(loads));
    });
}

// SIGTERM: /healthz answers 503 and the agent "drain" for drain-delay while requests are still
// served, so a load balancer stops sending before the listener closes. SIGINT (Ctrl-C) and a
// second signal skip the wait; SIGHUP still reloads.
void drain_before_stopping(int sig, const DaemonConfig& config, DrainSwitch& drain,
                           const std::function<void()>& reload) {
    drain.begin_shutdown();
    if (sig != SIGTERM || config.drain_delay.count() <= 0) {
        return;
    }
    spdlog::info("draining for {:.1f} s (drain-delay) before closing the listener",
                 config.drain_delay.count());
    auto until =
        std::chrono::steady_clock::now() +
        std::chrono::duration_cast<std::chrono::steady_clock::duration>(config.drain_delay);
    sigset_t signals = handled_signals();
    for (;;) {
        auto left = until - std::chrono::steady_clock::now();
        if (left <= std::chrono::steady_clock::duration::zero()) {
            return;
        }
        auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(left).count();
        timespec timeout{static_cast<time_t>(ns / 1'000'000'000),
                         static_cast<long>(ns % 1'000'000'000)};
        int got = sigtimedwait(&signals, nullptr, &timeout);
        if (got == SIGHUP) {
            reload();
        } else if (got > 0) {
            spdlog::info("{} received: stopping without waiting out the drain delay",
                         strsignal(got));
            return;
        }
    }
}

// The guest network for microVMs. Without the privilege to make taps, the daemon still serves
// containers and says once why microVMs are off; a subnet that overlaps the host's addresses
// stops it.
bool ip_forwarding_enabled() {
    std::FILE* f = std::fopen("/proc/sys/net/ipv4/ip_forward", "r");
    int value = 0;
    if (f != nullptr) {
        if (std::fscanf(f, "%d", &value) != 1) {
            value = 0;
        }
        std::fclose(f);
    }
    return value != 0;
}

std::unique_ptr<Network> open_network(const NetworkConfig& config) {
    try {
        auto network = std::make_unique<Network>(config);
        spdlog::info("microVM network: subnet {}, taps {}N", config.subnet.to_string(),
                     config.tap_prefix);
        return network;
    } catch (const std::system_error& e) {
        spdlog::warn("microVM functions are disabled: cannot manage taps: {}", e.what());
        return nullptr;
    }
}

// The guest firewall (nftables table inet unifaas) over the taps and the containers' veths.
// MicroVMs and OCI containers run only behind it: when it cannot be installed they are
// disabled, as without taps.
std::unique_ptr<Firewall> open_firewall(const DaemonConfig& config,
                                        std::unique_ptr<Network>& network,
                                        std::uint16_t callback_port, std::uint16_t invoke_port) {
    if (!network) {
        return nullptr;
    }
    FirewallConfig rules{callback_port,           invoke_port,
                         config.egress_interface, {config.network.tap_prefix},
                         {config.network.subnet}, kRestorePort};
    try {
        auto firewall = std::make_unique<Firewall>(std::move(rules));
        spdlog::info(
            "guest firewall: table inet unifaas (callback port {}, invoke port {}, egress "
            "{})",
            callback_port, invoke_port,
            config.egress_interface.empty() ? "off" : config.egress_interface);
        if (!config.egress_interface.empty() && !ip_forwarding_enabled()) {
            spdlog::warn(
                "egress-interface {} is set but net.ipv4.ip_forward is 0: functions "
                "with egress = true reach nothing outside",
                config.egress_interface);
        }
        return firewall;
    } catch (const std::exception& e) {
        spdlog::warn(
            "microVM and OCI functions are disabled: cannot install the guest firewall: {}",
            e.what());
        network.reset();
        return nullptr;
    }
}

void add_vm_backends(BackendSet& backends, const DaemonConfig& config, const VmEnvironment& env) {
    Accel accel = choose_accel(config.accel);
    backends.set_vm(HypervisorType::Qemu,
                    std::make_unique<QemuBackend>(env, config.qemu_binary, accel));
    backends.set_vm(HypervisorType::Microvm,
                    std::make_unique<QemuBackend>(env, config.qemu_binary, accel));
    backends.set_vm(
        HypervisorType::Firecracker,
        std::make_unique<FirecrackerBackend>(env, find_firecracker(config.firecracker_binary)));
}

// /metrics samples of the tap network.
Gateway::MetricsAppender tap_metrics(const Network* network) {
    if (!network) {
        return {};
    }
    return [network](std::string& out) {
        auto stats = network->stats();
        out +=
            "# HELP unifaas_tap_leases Taps of the microVM network by use.\n"
            "# TYPE unifaas_tap_leases gauge\n";
        out += "unifaas_tap_leases{state=\"leased\"} " + std::to_string(stats.leased) + "\n";
        out += "unifaas_tap_leases{state=\"idle\"} " + std::to_string(stats.idle) + "\n";
        out +=
            "# HELP unifaas_tap_capacity /30 blocks in the subnet.\n"
            "# TYPE unifaas_tap_capacity gauge\n";
        out += "unifaas_tap_capacity " + std::to_string(stats.capacity) + "\n";
    };
}

// A transient scope per microVM when systemd runs the machine; otherwise says once why not.
std::unique_ptr<ScopeManager> open_scopes() {
    std::string reason;
    auto scopes = ScopeManager::connect(reason);
    if (scopes) {
        spdlog::info("systemd {}: each microVM runs in a transient scope in {}", scopes->version(),
                     kInstanceSlice);
    } else {
        spdlog::info("running without transient scopes: {}", reason);
    }
    return scopes;
}

// microVM consoles go to the journal too when the daemon logs there.
std::unique_ptr<ConsoleForwarder> open_consoles() {
    if (!log_to_journal()) {
        return nullptr;
    }
    try {
        return std::make_unique<ConsoleForwarder>();
    } catch (const std::system_error& e) {
        spdlog::warn("microVM consoles are not copied to the journal: {}", e.what());
        return nullptr;
    }
}

// Containers join the instances' slice when systemd manages the machine, and log to the journal
// when the daemon does.
std::unique_ptr<DockerBackend> make_docker_backend(const DaemonConfig& config,
                                                   std::uint16_t callback_port, bool in_slice) {
    auto docker = std::make_unique<DockerBackend>(config.docker_socket, callback_port);
    if (in_slice) {
        docker->set_cgroup_parent(kInstanceSlice);
    }
    docker->set_journald_logs(log_to_journal());
    return docker;
}

// Working directories of instances a crashed run left behind.
void remove_stale_workdirs(const std::filesystem::path& runtime_dir) {
    std::error_code ec;
    std::filesystem::create_directories(runtime_dir, ec);
    std::filesystem::remove_all(runtime_dir / "instances", ec);
}

// systemd's accounting of an instance's unit, for the bus; unknown without scopes, or for a unit
// systemd does not know (a container's cgroup under the cgroupfs driver).
AccountingSource scope_accounting(ScopeManager* scopes) {
    if (scopes == nullptr) {
        return {};
    }
    return [scopes](const std::string& unit) {
        UnitAccounting out;
        if (unit.empty()) {
            return out;
        }
        try {
            ScopeAccounting a = scopes->accounting(unit);
            out.memory_current = a.memory_current;
            out.cpu_usage_nsec = a.cpu_usage_nsec;
            out.tasks_current = a.tasks_current;
        } catch (const ScopeError& e) {
            spdlog::debug("systemd: no accounting for {}: {}", unit, e.what());
        }
        return out;
    };
}

// The management interface on the system bus (org.unifaas). Optional: without a system bus or the
// name, the daemon serves anyway and says once why. Pools report to the bus through `events`.
std::unique_ptr<BusService> open_bus(const std::string& listen_address, FunctionTable& functions,
                                     Registry& registry, Network* network, ObserverRelay& events,
                                     AccountingSource accounting, std::function<unsigned()> reload,
                                     DrainSwitch& drain) {
    BusService::Config info{UNIFAAS_VERSION, listen_address,
                            network ? network->config().subnet.to_string() : ""};
    try {
        auto bus = std::make_unique<BusService>(info, functions, registry, network,
                                                std::move(accounting), reload);
        bus->set_drain_switch(&drain);
        bus->start(&events);
        spdlog::info("D-Bus interface {} on the system bus", BusService::kBusName);
        return bus;
    } catch (const std::exception& e) {
        spdlog::warn("D-Bus interface disabled: {}", e.what());
        return nullptr;
    }
}

// Re-reads the registry (SIGHUP, ExecReload=, D-Bus Reload()), telling systemd around it.
unsigned reload_registry(FunctionTable& functions, ServiceNotifier& notifier) {
    notifier.reloading();
    auto [ok, bad] = functions.load_all();
    spdlog::info("reloaded: {} functions ({} with errors)", ok, bad);
    notifier.reloaded(ok, bad);
    return ok;
}

// The guest network with the containers' namespaces under the runtime directory.
NetworkConfig network_config(const DaemonConfig& config) {
    NetworkConfig network = config.network;
    network.netns_dir = config.runtime_dir / "netns";
    return network;
}

// Snapshot templates ([vm] snapshot = true). Without a usable snapshot-dir such functions boot.
std::unique_ptr<VmTemplateStore> open_snapshot_templates(const DaemonConfig& config) {
    try {
        return std::make_unique<VmTemplateStore>(config.snapshot_dir,
                                                 config.snapshot_max_mib << 20);
    } catch (const std::exception& e) {
        spdlog::warn("snapshot templates unavailable ({}): functions with snapshot = true boot",
                     e.what());
        return nullptr;
    }
}

int cleanup_taps(const DaemonConfig& config) {
    unsigned removed =
        remove_taps_with_prefix(config.network.tap_prefix) +
        remove_veth_namespaces(config.network.tap_prefix, network_config(config).netns_dir);
    std::cout << "removed " << removed << " tap" << (removed == 1 ? "" : "s") << " named "
              << config.network.tap_prefix << "N\n";
    try {
        if (remove_firewall_table()) {
            std::cout << "removed nftables table inet unifaas\n";
        }
    } catch (const std::exception& e) {
        std::cerr << "unifaas: " << e.what() << "\n";
        return 1;
    }
    return 0;
}

int run(const DaemonConfig& config) {
    Registry registry(config.registry);
    Readiness readiness;
    TimerQueue timers;
    WorkQueue starts("start", 8);
    WorkQueue stops("stop", 4);

    // Bound (or taken from systemd) first: instances are told the callback port actually served.
    Listeners listeners = open_listeners(config);
    std::uint16_t callback_port = local_port(listeners.callback_fd);

    ExitWatcher exits;
    std::unique_ptr<Network> network = open_network(network_config(config));
    std::unique_ptr<Firewall> firewall =
        open_firewall(config, network, callback_port, local_port(listeners.http_fd));
    std::unique_ptr<ScopeManager> scopes = open_scopes();
    std::unique_ptr<ConsoleForwarder> consoles = open_consoles();
    remove_stale_workdirs(config.runtime_dir);
    VmEnvironment vm_env{config.runtime_dir, callback_port, network.get(), &exits};
    vm_env.scopes = scopes.get();
    vm_env.firewall = firewall.get();
    vm_env.consoles = consoles.get();
    std::unique_ptr<VmTemplateStore> templates = open_snapshot_templates(config);
    vm_env.callbacks = &readiness;
    vm_env.templates = templates.get();

    BackendSet backends;
    backends.set_container(make_docker_backend(config, callback_port, scopes != nullptr));
    add_vm_backends(backends, config, vm_env);
    if (network) {
        backends.set_oci(std::make_unique<OciBackend>(vm_env, config.oci_spare_memory_mib));
    }
    if (unsigned removed = backends.remove_leftovers(); removed > 0) {
        spdlog::info("removed {} sandboxes left behind by an earlier run", removed);
    }

    ServiceNotifier notifier;   // READY, STATUS, RELOADING, STOPPING, WATCHDOG to systemd
    ObserverRelay pool_events;  // the bus, made after the table it serves, attaches to it
    ObserverList observers;
    observers.add(&notifier);
    observers.add(&pool_events);
    FunctionTable functions(registry,
                            PoolServices{backends, readiness, timers, starts, stops, &observers});
    Gateway gateway(config, functions, readiness, tap_metrics(network.get()));
    DrainSwitch drain;
    gateway.set_drain_switch(&drain);
    auto agent = open_agent(listeners.agent_fd, drain, functions);
    gateway.serve(listeners);
    // The address actually served: with socket activation it is the socket's, not the config's.
    const std::string listen_address = local_address(listeners.http_fd);
    auto bus = open_bus(
        listen_address, functions, registry, network.get(), pool_events,
        scope_accounting(scopes.get()), [&] { return reload_registry(functions, notifier); },
        drain);
    auto [loaded, broken] = functions.load_all();
    spdlog::info("unifaas {} serving {} functions ({} with errors) from {} on {}", UNIFAAS_VERSION,
                 loaded, broken, registry.dir().string(), listen_address);
    notifier.ready(loaded, broken);

    sigset_t signals = handled_signals();
    for (;;) {
        int sig = 0;
        sigwait(&signals, &sig);
        if (sig == SIGHUP) {
            reload_registry(functions, notifier);
            continue;
        }
        spdlog::info("{} received: shutting down", strsignal(sig));
        notifier.stopping();
        drain_before_stopping(sig, config, drain, [&] { reload_registry(functions, notifier); });
        break;
    }

    drain.stopping();
    gateway.stop_accepting();
    if (!gateway.drain(std::chrono::steady_clock::now() +
                       std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                           config.shutdown_grace))) {
        spdlog::warn("{} requests still in progress after the grace period: stopping anyway",
                     gateway.in_flight());
    }
    functions.shutdown();
    gateway.join();
    spdlog::info("stopped");
    return 0;
}

// Every client connection and every instance slot holds a descriptor: the soft limit (often
// 1024) would stop a daemon allowed max-connections 4096 long before that. Raised to the hard
// limit, as systemd expects services to do themselves.
void raise_fd_limit() {
    rlimit limit{};
    if (getrlimit(RLIMIT_NOFILE, &limit) == 0 && limit.rlim_cur < limit.rlim_max) {
        limit.rlim_cur = limit.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &limit) != 0) {
            spdlog::debug("cannot raise the descriptor limit: {}", std::strerror(errno));
        }
    }
}

}  // namespace

int main(int argc, char** argv) {
    Flags flags = parse_flags(argc, argv);
    DaemonConfig config;
    try {
        config = make_config(flags);
    } catch (const std::exception& e) {
        std::cerr << "unifaas: " << e.what() << "\n";
        return 2;
    }
    setup_logging(config.log_level);
    // Signals are taken synchronously by the main thread; every thread started later inherits
    // the mask. A peer closing a connection mid-write must not kill the daemon.
    sigset_t signals = handled_signals();
    pthread_sigmask(SIG_BLOCK, &signals, nullptr);
    signal(SIGPIPE, SIG_IGN);
    raise_fd_limit();
    try {
        return flags.cleanup_taps ? cleanup_taps(config) : run(config);
    } catch (const std::exception& e) {
        spdlog::critical("{}", e.what());
        return 1;
    }
}
