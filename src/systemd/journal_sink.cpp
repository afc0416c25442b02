#include "systemd/journal_sink.h"

#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <filesystem>

// Otherwise sd-journal.h makes sd_journal_sendv a macro adding this file's CODE_FILE/CODE_LINE
// to every entry; the entries carry the location of the log call instead, when spdlog has it.
#define SD_JOURNAL_SUPPRESS_LOCATION
#include <systemd/sd-journal.h>

namespace unifaas {

namespace {

constexpr std::string_view kFunctionPrefix = "function ";
constexpr std::string_view kInstanceInfix = " instance ";
constexpr std::size_t kInstanceIdLength = 12;

bool name_char(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
           c == '.' || c == '-';
}

bool alnum(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

bool lower_hex(char c) {
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
}

}  // namespace

LogSubject parse_log_subject(std::string_view message) {
    if (message.substr(0, kFunctionPrefix.size()) != kFunctionPrefix) {
        return {};
    }
    std::string_view rest = message.substr(kFunctionPrefix.size());
    std::size_t end = 0;
    while (end < rest.size() && name_char(rest[end])) {
        ++end;
    }
    // Function names are [A-Za-z0-9][A-Za-z0-9_.-]*.
    if (end == 0 || !alnum(rest[0]) || end == rest.size()) {
        return {};
    }
    std::string_view name = rest.substr(0, end);
    rest = rest.substr(end);
    if (rest[0] == ':') {
        return {std::string(name), {}};
    }
    if (rest.substr(0, kInstanceInfix.size()) != kInstanceInfix) {
        return {};
    }
    rest = rest.substr(kInstanceInfix.size());
    if (rest.size() <= kInstanceIdLength || rest[kInstanceIdLength] != ':') {
        return {};
    }
    for (std::size_t i = 0; i < kInstanceIdLength; ++i) {
        if (!lower_hex(rest[i])) {
            return {};
        }
    }
    return {std::string(name), std::string(rest.substr(0, kInstanceIdLength))};
}

int journal_priority(spdlog::level::level_enum level) {
    switch (level) {
        case spdlog::level::trace:
        case spdlog::level::debug:
            return 7;  // LOG_DEBUG
        case spdlog::level::info:
            return 6;  // LOG_INFO
        case spdlog::level::warn:
            return 4;  // LOG_WARNING
        case spdlog::level::err:
            return 3;  // LOG_ERR
        case spdlog::level::critical:
            return 2;  // LOG_CRIT
        default:
            return 6;
    }
}

bool running_under_journal() {
    const char* stream = std::getenv("JOURNAL_STREAM");
    if (stream == nullptr) {
        return false;
    }
    std::uintmax_t device = 0;
    std::uintmax_t inode = 0;
    int consumed = 0;
    if (std::sscanf(stream, "%" SCNuMAX ":%" SCNuMAX "%n", &device, &inode, &consumed) != 2 ||
        stream[consumed] != '\0') {
        return false;
    }
    struct stat st {};
    if (::fstat(STDERR_FILENO, &st) != 0) {
        return false;
    }
    return static_cast<std::uintmax_t>(st.st_dev) == device &&
           static_cast<std::uintmax_t>(st.st_ino) == inode;
}

bool journal_socket_exists() {
    std::error_code ec;
    return std::filesystem::is_socket("/run/systemd/journal/socket", ec);
}

bool journal_send(const std::vector<std::string>& fields) {
    std::vector<iovec> iov;
    iov.reserve(fields.size());
    for (const auto& field : fields) {
        iov.push_back({const_cast<char*>(field.data()), field.size()});
    }
    return sd_journal_sendv(iov.data(), static_cast<int>(iov.size())) == 0;
}

JournalSink::JournalSink(std::string identifier) : identifier_(std::move(identifier)) {}

void JournalSink::sink_it_(const spdlog::details::log_msg& msg) {
    std::string_view text(msg.payload.data(), msg.payload.size());
    std::vector<std::string> fields = {
        "MESSAGE=" + std::string(text),
        "PRIORITY=" + std::to_string(journal_priority(msg.level)),
        "SYSLOG_IDENTIFIER=" + identifier_,
    };
    LogSubject subject = parse_log_subject(text);
    if (!subject.function.empty()) {
        fields.push_back("UNIFAAS_FUNCTION=" + subject.function);
    }
    if (!subject.instance.empty()) {
        fields.push_back("UNIFAAS_INSTANCE=" + subject.instance);
    }
    if (!msg.source.empty()) {
        fields.push_back(std::string("CODE_FILE=") + msg.source.filename);
        fields.push_back("CODE_LINE=" + std::to_string(msg.source.line));
        fields.push_back(std::string("CODE_FUNC=") + msg.source.funcname);
    }
    journal_send(fields);
}

}  // namespace unifaas
