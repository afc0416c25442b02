#include "sandbox/qmp_client.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <cerrno>
#include <cstring>
#include <thread>

#include <fmt/format.h>

namespace unifaas {

using nlohmann::json;

namespace {

int remaining_ms(QmpClient::Clock::time_point deadline) {
    auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - QmpClient::Clock::now());
    return left.count() < 0 ? 0 : static_cast<int>(left.count());
}

UniqueFd connect_unix(const std::filesystem::path& path, QmpClient::Clock::time_point deadline) {
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    if (path.string().size() >= sizeof(addr.sun_path)) {
        throw QmpError("qmp socket path too long: " + path.string());
    }
    std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
    for (;;) {
        UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
        if (!fd) {
            throw QmpError(fmt::format("qmp socket: {}", std::strerror(errno)));
        }
        if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0) {
            return fd;
        }
        int err = errno;
        // QEMU creates the socket while it parses its options: not there yet, or not listening.
        if ((err != ENOENT && err != ECONNREFUSED) || remaining_ms(deadline) == 0) {
            throw QmpError(fmt::format("qmp connect {}: {}", path.string(), std::strerror(err)));
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
}

}  // namespace

QmpClient::QmpClient(const std::filesystem::path& socket, Clock::time_point deadline)
    : fd_(connect_unix(socket, deadline)), deadline_(deadline) {
    json greeting = read_message();
    if (!greeting.contains("QMP")) {
        throw QmpError("qmp: no greeting from " + socket.string());
    }
    execute("qmp_capabilities");
}

json QmpClient::read_message() {
    for (;;) {
        auto newline = buffer_.find('\n');
        if (newline != std::string::npos) {
            std::string line = buffer_.substr(0, newline);
            buffer_.erase(0, newline + 1);
            json message = json::parse(line, nullptr, /*allow_exceptions=*/false);
            if (message.is_discarded() || !message.is_object()) {
                throw QmpError("qmp: unparsable message: " + line.substr(0, 200));
            }
            return message;
        }
        pollfd p{fd_.get(), POLLIN, 0};
        int ready = ::poll(&p, 1, remaining_ms(deadline_));
        if (ready == 0) {
            throw QmpError("qmp: no answer from qemu in time");
        }
        if (ready < 0 && errno == EINTR) {
            continue;
        }
        char chunk[4096];
        ssize_t n = ::read(fd_.get(), chunk, sizeof(chunk));
        if (n <= 0) {
            throw QmpError("qmp: qemu closed the connection");
        }
        buffer_.append(chunk, static_cast<std::size_t>(n));
    }
}

json QmpClient::execute(const std::string& command, const json& arguments) {
    json request = {{"execute", command}};
    if (!arguments.is_null()) {
        request["arguments"] = arguments;
    }
    std::string line = request.dump() + "\n";
    if (::send(fd_.get(), line.data(), line.size(), MSG_NOSIGNAL) !=
        static_cast<ssize_t>(line.size())) {
        throw QmpError(fmt::format("qmp {}: {}", command, std::strerror(errno)));
    }
    for (;;) {
        json message = read_message();
        if (message.contains("event")) {
            if (message["event"] == "MIGRATION") {
                migration_status_ = message["data"].value("status", "");
            }
            continue;
        }
        if (message.contains("error")) {
            throw QmpError(fmt::format("qmp {}: {}", command,
                                       message["error"].value("desc", message["error"].dump())));
        }
        return message.value("return", json::object());
    }
}

void QmpClient::enable_ignore_shared() {
    execute("migrate-set-capabilities",
            {{"capabilities", json::array({{{"capability", "x-ignore-shared"}, {"state", true}},
                                           {{"capability", "events"}, {"state", true}}})}});
}

void QmpClient::wait_for_migration(const char* what) {
    while (migration_status_ != "completed") {
        if (migration_status_ == "failed" || migration_status_ == "cancelled") {
            std::string detail;
            try {
                detail = execute("query-migrate").value("error-desc", "");
            } catch (const QmpError&) {
            }
            throw QmpError(fmt::format("qmp {}: migration {}{}{}", what, migration_status_,
                                       detail.empty() ? "" : ": ", detail));
        }
        json message = read_message();
        if (message.contains("event") && message["event"] == "MIGRATION") {
            migration_status_ = message["data"].value("status", "");
        }
    }
}

void QmpClient::save(const std::string& uri) {
    migration_status_.clear();
    execute("stop");
    execute("migrate", {{"uri", uri}});
    wait_for_migration("save");
}

void QmpClient::restore(const std::string& uri) {
    migration_status_.clear();
    execute("migrate-incoming", {{"uri", uri}});
    wait_for_migration("restore");
    // The incoming side starts the guest by itself once the state is loaded (no -S).
    if (execute("query-status").value("status", "") != "running") {
        execute("cont");
    }
}

}  // namespace unifaas
