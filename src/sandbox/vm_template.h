// VM templates for snapshot cold starts: a template is a VM of one function that booted until
// its function was ready, then was paused and saved (its RAM file and device state) and stopped.
// It is never resumed; clones restore from it with the RAM mapped copy-on-write.
//
// VmTemplateStore keeps them under one directory (the daemon's `snapshot-dir`), one
// subdirectory per template (<key>-<random>):
//   <dir>/<key>/memory         guest RAM (the template's file-backed memory backend)
//   <dir>/<key>/state          device state (QEMU migration stream)
//   <dir>/<key>/template.json  key, function, MAC and kernel command line the clones reuse
// A template is written to <dir>/.partial-<key>-<random> and renamed when complete, so a crash
// mid-save leaves only a partial directory, removed at the next start.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>

#include "config/function_spec.h"
#include "sandbox/accel.h"

namespace unifaas {

// A saved template. Its directory is deleted once it is discarded (replaced by a newer key,
// failed too often) and the last clone using it is gone.
class VmTemplate {
  public:
    VmTemplate(std::string key, std::string function, std::filesystem::path dir, std::string mac,
               std::string kernel_cmdline);
    ~VmTemplate();
    VmTemplate(const VmTemplate&) = delete;
    VmTemplate& operator=(const VmTemplate&) = delete;

    const std::string& key() const { return key_; }
    const std::string& function() const { return function_; }
    std::filesystem::path memory_file() const { return dir_ / "memory"; }
    std::filesystem::path state_file() const { return dir_ / "state"; }
    const std::filesystem::path& dir() const { return dir_; }
    const std::string& mac() const { return mac_; }  // the guest's MAC inside the snapshot
    const std::string& kernel_cmdline() const { return kernel_cmdline_; }
    void discard() { discarded_ = true; }

  private:
    std::string key_;
    std::string function_;
    std::filesystem::path dir_;
    std::string mac_;
    std::string kernel_cmdline_;
    bool discarded_ = false;  // set under the store's lock; read when the last owner lets go
};

// Everything that shapes a VM, digested: the function.toml's bytes, kernel, initrd and image
// (size, mtime, inode), the hypervisor binary (same), accelerator, memory, cpus and the guest
// restore protocol version. 32 hex digits.
std::string template_key(const FunctionSpec& spec, const std::string& hypervisor_binary,
                         Accel accel);

class VmTemplateStore {
  public:
    // Creates `dir` when missing, removes partial templates, and takes over complete ones (a
    // template of an earlier run is reused when its key still matches). `max_bytes` bounds the
    // disk space all templates take together.
    VmTemplateStore(std::filesystem::path dir, std::uint64_t max_bytes);

    // The ready template of `function` with `key`, or nullptr. A template of the function with
    // another key is discarded (deleted once no clone uses it).
    std::shared_ptr<VmTemplate> find(const std::string& function, const std::string& key);

    // Claims building `key`: false while it is being built or ready, or after kMaxFailedBuilds
    // failed builds of that key (a guest that never calls back is not booted again and again). On
    // true, the caller builds into partial_dir() and then calls finish_build or abandon_build.
    bool begin_build(const std::string& function, const std::string& key);
    std::filesystem::path partial_dir(const std::string& key) const;
    // Moves a complete partial directory into place. Returns nullptr (and deletes it) when the
    // store's size cap would be exceeded; the cause is logged.
    std::shared_ptr<VmTemplate> finish_build(const std::string& function, const std::string& key,
                                             const std::filesystem::path& partial,
                                             const std::string& mac,
                                             const std::string& kernel_cmdline);
    void abandon_build(const std::string& key, const std::filesystem::path& partial);

    // A clone of `tpl` did (not) come up. After kMaxFailedRestores failures in a row the template
    // is discarded (the next cold start boots and builds a new one).
    void restore_failed(const std::shared_ptr<VmTemplate>& tpl);
    void restore_succeeded(const std::shared_ptr<VmTemplate>& tpl);

    const std::filesystem::path& dir() const { return dir_; }

    static constexpr unsigned kMaxFailedRestores = 3;
    static constexpr unsigned kMaxFailedBuilds = 2;

  private:
    void load_existing();
    std::uint64_t used_bytes() const;
    void drop_locked(const std::string& function);

    std::filesystem::path dir_;
    std::uint64_t max_bytes_;
    mutable std::mutex mu_;
    std::map<std::string, std::shared_ptr<VmTemplate>> by_function_;
    std::map<std::string, unsigned> failures_;       // by key
    std::set<std::string> building_;                 // keys
    std::map<std::string, unsigned> failed_builds_;  // by key
};

}  // namespace unifaas
