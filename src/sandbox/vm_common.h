// Pieces every microVM backend (qemu, firecracker) shares: the per-instance working directory,
// kernel command-line placeholders, console tails, the backends' shared dependencies.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>

namespace unifaas {

class Network;
class NetworkLease;
class NetnsLease;
class Firewall;
struct FunctionSpec;
class ExitWatcher;
class ScopeManager;
class Scope;
class ConsoleForwarder;
class VmTemplateStore;
struct InstanceContext;

// Readiness callbacks a backend waits for itself (a snapshot template booting), implemented by
// the daemon's readiness registry.
class CallbackRegistry {
  public:
    virtual ~CallbackRegistry() = default;
    // A fresh token (128 random bits, hex): the URL is /ready/<token>.
    virtual std::string issue() = 0;
    // A callback with `token` from `address` runs on_ready once.
    virtual void expect(const std::string& token, std::string address,
                        std::function<void()> on_ready) = 0;
    virtual void forget(const std::string& token) = 0;
};

// What the daemon hands to each VM backend; all owned by main and outliving the backends.
struct VmEnvironment {
    std::filesystem::path runtime_dir;  // instances' working dirs live in <runtime_dir>/instances
    std::uint16_t callback_port = 0;    // readiness callbacks arrive here on every address
    Network* network = nullptr;
    ExitWatcher* exits = nullptr;
    ScopeManager* scopes = nullptr;         // set: each hypervisor runs in a transient scope
    ConsoleForwarder* consoles = nullptr;   // set: guest consoles are copied to the journal
    CallbackRegistry* callbacks = nullptr;  // set: snapshot templates can be built
    VmTemplateStore* templates = nullptr;   // set: [vm] snapshot = true restores clones
    Firewall* firewall = nullptr;  // main always sets it with `network`; unset: no guest rules
};

// The transient scope holding an instance's hypervisor process (nullptr without `scopes`).
// Throws SandboxError 502 naming the unit when systemd does not start it.
std::unique_ptr<Scope> start_instance_scope(ScopeManager* scopes, const InstanceContext& ctx,
                                            pid_t pid, std::uint64_t memory_max_bytes);

// Puts the lease's interface (a microVM's tap, a container's veth host end) under the function's
// [network] policy for as long as the lease lives. Throws SandboxError 500 when the policy cannot
// be honoured (egress without egress-interface), 502 when nftables refuses.
void apply_network_policy(const VmEnvironment& env, NetworkLease& lease, const FunctionSpec& spec);
void apply_network_policy(const VmEnvironment& env, NetnsLease& lease, const FunctionSpec& spec);

// <runtime_dir>/instances/<id>, created empty (mode 0700), removed recursively on destruction.
class WorkDir {
  public:
    WorkDir(const std::filesystem::path& runtime_dir, const std::string& instance_id);
    ~WorkDir();
    WorkDir(const WorkDir&) = delete;
    WorkDir& operator=(const WorkDir&) = delete;
    const std::filesystem::path& path() const { return path_; }

  private:
    std::filesystem::path path_;
};

struct GuestAddressing {
    std::string ip;        // %ip
    std::string gateway;   // %gateway (the tap's host address)
    std::string netmask;   // %netmask
    std::string callback;  // %callback
};

// Replaces %ip %gateway %netmask %callback; any other '%' is left as it is.
std::string substitute_cmdline(const std::string& cmdline, const GuestAddressing& a);

// The last `lines` lines of a text file ("" when it cannot be read), at most 64 KiB read.
std::string tail_lines(const std::filesystem::path& file, unsigned lines);

// Whether a kernel image is Linux: a bzImage ("HdrS" setup header) or an ELF carrying a "Linux"
// note. Unikernels (OSv, Nanos) are not.
bool is_linux_kernel(const std::filesystem::path& kernel);

// The host TSC frequency in kHz (for tsc_early_khz= under TCG), 0 when unknown.
unsigned long host_tsc_khz();

}  // namespace unifaas
