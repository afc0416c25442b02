#include "sandbox/vm_common.h"

#include <elf.h>
#include <sys/stat.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <sstream>
#include <system_error>
#include <vector>

#include "config/function_spec.h"
#include "net/firewall.h"
#include "net/network.h"
#include "sandbox/sandbox.h"
#include "systemd/scope_manager.h"

namespace unifaas {

namespace fs = std::filesystem;

WorkDir::WorkDir(const fs::path& runtime_dir, const std::string& instance_id)
    : path_(runtime_dir / "instances" / instance_id) {
    fs::create_directories(path_.parent_path());
    std::error_code ec;
    fs::remove_all(path_, ec);  // a leftover of a crashed run with the same id
    fs::create_directory(path_);
    fs::permissions(path_, fs::perms::owner_all, fs::perm_options::replace);
}

WorkDir::~WorkDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
}

std::string substitute_cmdline(const std::string& cmdline, const GuestAddressing& a) {
    static const std::pair<std::string_view, const std::string GuestAddressing::*> kPlaceholders[] =
        {{"%ip", &GuestAddressing::ip},
         {"%gateway", &GuestAddressing::gateway},
         {"%netmask", &GuestAddressing::netmask},
         {"%callback", &GuestAddressing::callback}};
    std::string out;
    out.reserve(cmdline.size() + 64);
    for (std::size_t i = 0; i < cmdline.size();) {
        bool replaced = false;
        if (cmdline[i] == '%') {
            for (const auto& [name, member] : kPlaceholders) {
                if (cmdline.compare(i, name.size(), name) == 0) {
                    out += a.*member;
                    i += name.size();
                    replaced = true;
                    break;
                }
            }
        }
        if (!replaced) {
            out += cmdline[i++];
        }
    }
    return out;
}

std::string tail_lines(const fs::path& file, unsigned lines) {
    std::ifstream in(file, std::ios::binary);
    if (!in) {
        return {};
    }
    in.seekg(0, std::ios::end);
    std::streamoff size = in.tellg();
    std::streamoff start = std::max<std::streamoff>(0, size - 64 * 1024);
    in.seekg(start);
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    text.erase(std::remove(text.begin(), text.end(), '\r'), text.end());
    while (!text.empty() && text.back() == '\n') {
        text.pop_back();
    }
    std::size_t pos = text.size();
    for (unsigned n = 0; n < lines && pos != std::string::npos && pos > 0; ++n) {
        pos = text.rfind('\n', pos - 1);
    }
    return pos == std::string::npos || pos == 0 ? text : text.substr(pos + 1);
}

namespace {

bool elf_has_linux_note(std::ifstream& in) {
    Elf64_Ehdr eh{};
    in.seekg(0);
    if (!in.read(reinterpret_cast<char*>(&eh), sizeof(eh)) || eh.e_ident[EI_CLASS] != ELFCLASS64 ||
        eh.e_phentsize != sizeof(Elf64_Phdr) || eh.e_phnum > 64) {
        return false;
    }
    for (unsigned i = 0; i < eh.e_phnum; ++i) {
        Elf64_Phdr ph{};
        in.seekg(static_cast<std::streamoff>(eh.e_phoff + i * sizeof(ph)));
        if (!in.read(reinterpret_cast<char*>(&ph), sizeof(ph))) {
            return false;
        }
        if (ph.p_type != PT_NOTE || ph.p_filesz > (1u << 20)) {
            continue;
        }
        std::vector<char> notes(ph.p_filesz);
        in.seekg(static_cast<std::streamoff>(ph.p_offset));
        if (!in.read(notes.data(), static_cast<std::streamsize>(notes.size()))) {
            continue;
        }
        for (std::size_t off = 0; off + sizeof(Elf64_Nhdr) <= notes.size();) {
            Elf64_Nhdr nh{};
            std::memcpy(&nh, notes.data() + off, sizeof(nh));
            std::size_t name_at = off + sizeof(nh);
            if (name_at + nh.n_namesz > notes.size()) {
                break;
            }
            if (nh.n_namesz == 6 && std::memcmp(notes.data() + name_at, "Linux", 6) == 0) {
                return true;
            }
            off = name_at + ((nh.n_namesz + 3) & ~3u) + ((nh.n_descsz + 3) & ~3u);
        }
    }
    return false;
}

}  // namespace

bool is_linux_kernel(const fs::path& kernel) {
    std::ifstream in(kernel, std::ios::binary);
    char head[0x206] = {};
    if (!in.read(head, sizeof(head))) {
        return false;
    }
    if (std::memcmp(head + 0x202, "HdrS", 4) == 0) {
        return true;  // bzImage
    }
    if (std::memcmp(head, ELFMAG, SELFMAG) == 0) {
        return elf_has_linux_note(in);
    }
    return false;
}

unsigned long host_tsc_khz() {
    // The kernel's calibrated value when exposed; else the "cpu MHz" of /proc/cpuinfo.
    std::ifstream tsc("/sys/devices/system/cpu/cpu0/tsc_freq_khz");
    unsigned long khz = 0;
    if (tsc >> khz && khz > 0) {
        return khz;
    }
    std::ifstream cpuinfo("/proc/cpuinfo");
    std::string line;
    while (std::getline(cpuinfo, line)) {
        if (line.rfind("cpu MHz", 0) == 0) {
            auto colon = line.find(':');
            if (colon != std::string::npos) {
                return static_cast<unsigned long>(std::stod(line.substr(colon + 1)) * 1000.0);
            }
        }
    }
    return 0;
}

namespace {

// The element that puts `ifname` under the function's policy; nullptr without a firewall.
std::unique_ptr<FirewallAttachment> policy_rules(const VmEnvironment& env,
                                                 const std::string& ifname,
                                                 const FunctionSpec& spec) {
    if (env.firewall == nullptr) {
        return nullptr;
    }
    if (spec.network.egress && env.firewall->config().egress_interface.empty()) {
        throw SandboxError(500, spec.file.string() +
                                    ": network.egress: the daemon has no egress-interface "
                                    "configured (unifaas.toml)");
    }
    try {
        return env.firewall->attach(ifname, spec.network);
    } catch (const FirewallError& e) {
        throw SandboxError(502, e.what());
    }
}

}  // namespace

void apply_network_policy(const VmEnvironment& env, NetworkLease& lease, const FunctionSpec& spec) {
    lease.hold(policy_rules(env, lease.tap(), spec));
}

void apply_network_policy(const VmEnvironment& env, NetnsLease& lease, const FunctionSpec& spec) {
    lease.hold(policy_rules(env, lease.host_interface(), spec));
}

std::unique_ptr<Scope> start_instance_scope(ScopeManager* scopes, const InstanceContext& ctx,
                                            pid_t pid, std::uint64_t memory_max_bytes) {
    if (scopes == nullptr) {
        return nullptr;
    }
    try {
        return scopes->create(ctx.spec->name, ctx.instance_id, pid, memory_max_bytes);
    } catch (const ScopeError& e) {
        throw SandboxError(502, e.what());
    }
}

}  // namespace unifaas
