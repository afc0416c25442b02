// OciOutputCap: keeps the output files of OCI containers bounded when nothing else takes their
// lines (no journal: the daemon is not under systemd). The runtime appends to
// <instance>/output.log itself (O_APPEND); one thread waits on inotify (IN_MODIFY) for all
// files, and when one has grown past the limit, its content moves to output.log.1 (replacing
// the previous one) and output.log starts again from empty. At most 2 x limit per instance;
// the container never blocks on its output. Lines written between the copy and the truncation
// (microseconds) are lost.
#pragma once

#include <cstdint>
#include <filesystem>
#include <mutex>
#include <thread>
#include <unordered_map>

namespace unifaas {

class OciOutputCap {
  public:
    using Id = int;  // the inotify watch descriptor
    static constexpr std::uint64_t kDefaultLimit = 1 << 20;

    explicit OciOutputCap(std::uint64_t limit_bytes = kDefaultLimit);  // throws system_error
    ~OciOutputCap();
    OciOutputCap(const OciOutputCap&) = delete;
    OciOutputCap& operator=(const OciOutputCap&) = delete;

    // Watches `file` (created empty when missing). Throws std::system_error.
    Id add(const std::filesystem::path& file);
    void remove(Id id);

    // The file's last `lines` lines, continuing into the rotated file when it has fewer.
    static std::string tail(const std::filesystem::path& file, unsigned lines);

  private:
    void run();
    void check(Id id);

    const std::uint64_t limit_;
    int inotify_fd_ = -1;
    int wake_fd_ = -1;
    std::mutex mu_;
    std::unordered_map<Id, std::filesystem::path> files_;
    std::thread thread_;
};

// One instance's file under an OciOutputCap (none: nothing to do) for its lifetime.
class CappedOutput {
  public:
    CappedOutput(OciOutputCap* cap, const std::filesystem::path& file);
    ~CappedOutput();
    CappedOutput(const CappedOutput&) = delete;
    CappedOutput& operator=(const CappedOutput&) = delete;

  private:
    OciOutputCap* cap_;
    OciOutputCap::Id id_ = -1;
};

}  // namespace unifaas
