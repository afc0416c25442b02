// ConsoleForwarder: follows the console files of microVMs (QEMU's serial console, Firecracker's
// output) and hands every new complete line on, tagged with its function and instance — by
// default to the journal (SYSLOG_IDENTIFIER=unifaas-console, PRIORITY=6, UNIFAAS_FUNCTION=,
// UNIFAAS_INSTANCE=). The files themselves stay as they are (error messages quote their tails).
// One thread waits on inotify (IN_MODIFY) for all files: nothing runs while the guests are quiet.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>

namespace unifaas {

// Sends one console line to the journal.
void journal_console_line(const std::string& function, const std::string& instance,
                          std::string_view line);

class ConsoleForwarder {
  public:
    using Id = std::uint64_t;
    // Called with each line (without its "\n" or "\r\n"; empty lines are skipped), from the
    // forwarder's thread or from remove(). Must not call back into the forwarder.
    using Emit = std::function<void(const std::string& function, const std::string& instance,
                                    std::string_view line)>;
    // A line longer than this is passed on in pieces of this size.
    static constexpr std::size_t kMaxLine = 16 * 1024;

    ConsoleForwarder();  // to the journal
    explicit ConsoleForwarder(Emit emit);
    ~ConsoleForwarder();
    ConsoleForwarder(const ConsoleForwarder&) = delete;
    ConsoleForwarder& operator=(const ConsoleForwarder&) = delete;

    // Follows `file` from its start; creates it (empty, mode 0600) when it does not exist yet, so
    // a hypervisor that opens it a moment later (QEMU truncates it) writes into the followed
    // inode. Lines already in it are passed on at once. Throws std::system_error.
    Id add(const std::filesystem::path& file, const std::string& function,
           const std::string& instance);
    // Passes on what is left (a last line without "\n" too) and stops following. Unknown ids are
    // ignored.
    void remove(Id id);

  private:
    struct Entry;

    void run();
    void drain(Entry& entry);
    void emit_line(const Entry& entry, std::string_view line);

    Emit emit_;
    int inotify_fd_ = -1;
    int wake_fd_ = -1;
    std::mutex mu_;
    bool stop_ = false;
    Id next_id_ = 1;
    std::unordered_map<Id, Entry> entries_;
    std::unordered_map<int, Id> by_watch_;
    std::thread thread_;
};

// Follows one console for its lifetime; does nothing without a forwarder. A file that cannot be
// followed is logged, never fatal to the instance.
class ForwardedConsole {
  public:
    ForwardedConsole(ConsoleForwarder* forwarder, const std::filesystem::path& file,
                     const std::string& function, const std::string& instance);
    ~ForwardedConsole();
    ForwardedConsole(const ForwardedConsole&) = delete;
    ForwardedConsole& operator=(const ForwardedConsole&) = delete;

  private:
    ConsoleForwarder* forwarder_ = nullptr;
    ConsoleForwarder::Id id_ = 0;
};

}  // namespace unifaas
