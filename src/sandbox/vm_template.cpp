#include "sandbox/vm_template.h"

#include <sys/stat.h>

#include <fstream>
#include <iterator>

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <nlohmann/json.hpp>

#include "sandbox/restore_channel.h"
#include "util/random.h"

namespace unifaas {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr const char* kPartialPrefix = ".partial-";
constexpr const char* kMetaFile = "template.json";

// Two FNV-1a 64-bit hashes with different offsets: a cache key, not a security boundary (the
// directory is the daemon's own).
class Digest {
  public:
    void add(std::string_view bytes) {
        for (unsigned char c : bytes) {
            a_ = (a_ ^ c) * 0x100000001b3ULL;
            b_ = (b_ ^ c) * 0x100000001b3ULL;
        }
        a_ = (a_ ^ 0xff) * 0x100000001b3ULL;  // field separator
        b_ = (b_ ^ 0xfe) * 0x100000001b3ULL;
    }
    void add_file_identity(const fs::path& path) {
        struct stat st {};
        if (path.empty() || ::stat(path.c_str(), &st) != 0) {
            add(path.string() + ":missing");
            return;
        }
        add(fmt::format("{}:{}:{}:{}.{}", path.string(), st.st_size, st.st_ino, st.st_mtim.tv_sec,
                        st.st_mtim.tv_nsec));
    }
    std::string hex() const { return fmt::format("{:016x}{:016x}", a_, b_); }

  private:
    std::uint64_t a_ = 0xcbf29ce484222325ULL;
    std::uint64_t b_ = 0x84222325cbf29ce4ULL;
};

std::string read_file(const fs::path& path) {
    std::ifstream in(path, std::ios::binary);
    return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

}  // namespace

VmTemplate::VmTemplate(std::string key, std::string function, fs::path dir, std::string mac,
                       std::string kernel_cmdline)
    : key_(std::move(key)),
      function_(std::move(function)),
      dir_(std::move(dir)),
      mac_(std::move(mac)),
      kernel_cmdline_(std::move(kernel_cmdline)) {}

VmTemplate::~VmTemplate() {
    if (discarded_) {
        std::error_code ec;
        fs::remove_all(dir_, ec);
        spdlog::info("function {}: template {} deleted", function_, key_);
    }
}

std::string template_key(const FunctionSpec& spec, const std::string& hypervisor_binary,
                         Accel accel) {
    const VmSpec& vm = spec.vm();
    Digest d;
    d.add(fmt::format("restore-protocol {}", kRestoreProtocolVersion));
    d.add(spec.name);
    d.add(read_file(spec.file));
    d.add_file_identity(vm.kernel);
    d.add_file_identity(vm.initrd ? *vm.initrd : fs::path());
    d.add_file_identity(vm.image);
    d.add_file_identity(hypervisor_binary);
    d.add(to_string(accel));
    d.add(fmt::format("{} MiB {} cpus port {}", vm.memory_mib, vm.cpus, spec.port));
    return d.hex();
}

VmTemplateStore::VmTemplateStore(fs::path dir, std::uint64_t max_bytes)
    : dir_(std::move(dir)), max_bytes_(max_bytes) {
    fs::create_directories(dir_);
    fs::permissions(dir_, fs::perms::owner_all, fs::perm_options::replace);
    load_existing();
}

void VmTemplateStore::load_existing() {
    for (const auto& entry : fs::directory_iterator(dir_)) {
        std::string name = entry.path().filename().string();
        std::error_code ec;
        if (name.rfind(kPartialPrefix, 0) == 0) {
            fs::remove_all(entry.path(), ec);
            spdlog::info("snapshots: removed the partial template {}", entry.path().string());
            continue;
        }
        json meta = json::parse(read_file(entry.path() / kMetaFile), nullptr, false);
        if (meta.is_discarded() || !meta.is_object() || !fs::exists(entry.path() / "state") ||
            !fs::exists(entry.path() / "memory")) {
            fs::remove_all(entry.path(), ec);
            spdlog::info("snapshots: removed the unusable template {}", entry.path().string());
            continue;
        }
        auto tpl = std::make_shared<VmTemplate>(meta.value("key", ""), meta.value("function", ""),
                                                entry.path(), meta.value("mac", ""),
                                                meta.value("kernel_cmdline", ""));
        auto [it, inserted] = by_function_.emplace(tpl->function(), tpl);
        if (!inserted) {
            tpl->discard();  // two for one function: keep one, the other goes
        }
    }
}

std::shared_ptr<VmTemplate> VmTemplateStore::find(const std::string& function,
                                                  const std::string& key) {
    std::lock_guard lk(mu_);
    auto it = by_function_.find(function);
    if (it == by_function_.end()) {
        return nullptr;
    }
    if (it->second->key() != key) {
        spdlog::info("function {}: template {} is out of date (now {})", function,
                     it->second->key(), key);
        drop_locked(function);
        return nullptr;
    }
    return it->second;
}

void VmTemplateStore::drop_locked(const std::string& function) {
    auto it = by_function_.find(function);
    if (it != by_function_.end()) {
        it->second->discard();
        by_function_.erase(it);
    }
}

bool VmTemplateStore::begin_build(const std::string& function, const std::string& key) {
    std::lock_guard lk(mu_);
    auto it = by_function_.find(function);
    if ((it != by_function_.end() && it->second->key() == key) || building_.count(key) != 0 ||
        failed_builds_[key] >= kMaxFailedBuilds) {
        return false;
    }
    building_.insert(key);
    return true;
}

fs::path VmTemplateStore::partial_dir(const std::string& key) const {
    return dir_ / (kPartialPrefix + key + "-" + random_hex(4));
}

std::uint64_t VmTemplateStore::used_bytes() const {
    std::uint64_t total = 0;
    std::error_code ec;
    for (auto it = fs::recursive_directory_iterator(dir_, ec);
         !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
        struct stat st {};
        if (::lstat(it->path().c_str(), &st) == 0 && S_ISREG(st.st_mode)) {
            total += static_cast<std::uint64_t>(st.st_blocks) * 512;  // sparse RAM files
        }
    }
    return total;
}

std::shared_ptr<VmTemplate> VmTemplateStore::finish_build(const std::string& function,
                                                          const std::string& key,
                                                          const fs::path& partial,
                                                          const std::string& mac,
                                                          const std::string& kernel_cmdline) {
    std::lock_guard lk(mu_);
    building_.erase(key);
    std::error_code ec;
    std::uint64_t used = used_bytes();
    if (used > max_bytes_) {
        fs::remove_all(partial, ec);
        failed_builds_[key] = kMaxFailedBuilds;
        spdlog::warn(
            "function {}: template {} skipped: snapshots take {} MiB, over the "
            "snapshot-max-size of {} MiB",
            function, key, used >> 20, max_bytes_ >> 20);
        return nullptr;
    }
    {
        std::ofstream meta(partial / kMetaFile);
        meta << json{{"key", key},
                     {"function", function},
                     {"mac", mac},
                     {"kernel_cmdline", kernel_cmdline}}
                    .dump();
        if (!meta.flush()) {
            fs::remove_all(partial, ec);
            spdlog::warn("function {}: template {} skipped: cannot write {}", function, key,
                         (partial / kMetaFile).string());
            return nullptr;
        }
    }
    // Its own name: a discarded template of the same key may still be in use (and deleted later).
    fs::path final_dir = dir_ / (key + "-" + random_hex(4));
    fs::rename(partial, final_dir, ec);
    if (ec) {
        fs::remove_all(partial, ec);
        spdlog::warn("function {}: template {} skipped: rename: {}", function, key, ec.message());
        return nullptr;
    }
    drop_locked(function);
    auto tpl = std::make_shared<VmTemplate>(key, function, final_dir, mac, kernel_cmdline);
    by_function_[function] = tpl;
    failures_.erase(key);
    return tpl;
}

void VmTemplateStore::abandon_build(const std::string& key, const fs::path& partial) {
    std::error_code ec;
    fs::remove_all(partial, ec);
    std::lock_guard lk(mu_);
    building_.erase(key);
    ++failed_builds_[key];
}

void VmTemplateStore::restore_failed(const std::shared_ptr<VmTemplate>& tpl) {
    std::lock_guard lk(mu_);
    if (++failures_[tpl->key()] < kMaxFailedRestores) {
        return;
    }
    spdlog::warn("function {}: template {} discarded after {} failed restores in a row",
                 tpl->function(), tpl->key(), kMaxFailedRestores);
    failures_.erase(tpl->key());
    auto it = by_function_.find(tpl->function());
    if (it != by_function_.end() && it->second == tpl) {
        drop_locked(tpl->function());
    }
}

void VmTemplateStore::restore_succeeded(const std::shared_ptr<VmTemplate>& tpl) {
    std::lock_guard lk(mu_);
    failures_.erase(tpl->key());
}

}  // namespace unifaas
