// Logging to the systemd journal: an spdlog sink that sends each message with sd_journal_send,
// its priority, SYSLOG_IDENTIFIER=unifaas and, for messages about a function or an instance,
// the fields UNIFAAS_FUNCTION= and UNIFAAS_INSTANCE= (so `journalctl UNIFAAS_FUNCTION=hello`
// shows one function's story). The fields come from the message convention used throughout the
// daemon: "function <name>: ..." and "function <name> instance <12 hex digits>: ...".
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <spdlog/details/null_mutex.h>
#include <spdlog/sinks/base_sink.h>

namespace unifaas {

struct LogSubject {
    std::string function;  // "" when the message is not about a function
    std::string instance;  // "" when not about one instance
};

// The function and instance a log message is about, per the convention above.
LogSubject parse_log_subject(std::string_view message);

// syslog priority (0 emerg .. 7 debug) of an spdlog level.
int journal_priority(spdlog::level::level_enum level);

// Whether stderr is connected to the journal: $JOURNAL_STREAM ("<device>:<inode>") names the
// stream systemd connected stdout/stderr to, and stderr is still that stream (a redirected
// stderr is not).
bool running_under_journal();

// Whether journald's native socket exists (/run/systemd/journal/socket).
bool journal_socket_exists();

// Sends one journal entry made of "FIELD=value" strings (values may contain newlines).
// Returns false when the journal did not take it.
bool journal_send(const std::vector<std::string>& fields);

// The sink. sd_journal_send is thread-safe, so the sink takes no lock of its own.
class JournalSink : public spdlog::sinks::base_sink<spdlog::details::null_mutex> {
  public:
    explicit JournalSink(std::string identifier = "unifaas");

  protected:
    void sink_it_(const spdlog::details::log_msg& msg) override;
    void flush_() override {}

  private:
    std::string identifier_;
};

}  // namespace unifaas
