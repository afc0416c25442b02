// QmpClient: the few QEMU Machine Protocol commands a snapshot needs, over the unix socket given
// with `-qmp unix:PATH,server=on,wait=off`. One JSON object per line each way; asynchronous
// events arrive between answers and are collected while waiting.
#pragma once

#include <chrono>
#include <filesystem>
#include <stdexcept>
#include <string>

#include <nlohmann/json.hpp>

#include "util/unique_fd.h"

namespace unifaas {

// A command QEMU refused ("qmp migrate: <desc>"), a broken connection or a timeout.
class QmpError : public std::runtime_error {
  public:
    using std::runtime_error::runtime_error;
};

class QmpClient {
  public:
    using Clock = std::chrono::steady_clock;

    // Connects (QEMU creates the socket while it starts: retried until `deadline`), reads the
    // greeting and negotiates capabilities.
    QmpClient(const std::filesystem::path& socket, Clock::time_point deadline);

    // Runs one command; returns its "return" member. Throws QmpError on an "error" answer.
    nlohmann::json execute(const std::string& command, const nlohmann::json& arguments = nullptr);

    // Migration with x-ignore-shared (RAM in a shared file-backed memory backend is not copied)
    // and MIGRATION events.
    void enable_ignore_shared();
    // Pauses the guest and writes its device state through `uri` ("exec:cat > FILE"); returns when
    // the migration completed. Throws QmpError when it failed or `deadline` passed.
    void save(const std::string& uri);
    // On a qemu started with `-incoming defer`: loads the state from `uri`, returns when done
    // (the guest then runs).
    void restore(const std::string& uri);

  private:
    nlohmann::json read_message();
    void wait_for_migration(const char* what);

    UniqueFd fd_;
    Clock::time_point deadline_;
    std::string buffer_;
    std::string migration_status_;  // from the last MIGRATION event
};

}  // namespace unifaas
