#include "sandbox/docker_client.h"

#include <arpa/inet.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cctype>
#include <cstdint>
#include <filesystem>

#include <httplib.h>
#include <spdlog/spdlog.h>

namespace unifaas::docker {

namespace {

using nlohmann::json;

constexpr time_t kConnectTimeoutSeconds = 5;
constexpr time_t kReadTimeoutSeconds = 120;        // removing a busy container can take a while
constexpr time_t kEventReadTimeoutSeconds = 3600;  // an idle event stream is normal

// Docker rejects the Host header cpp-httplib derives from a socket path.
const httplib::Headers& api_headers() {
    static const httplib::Headers headers{{"Host", "localhost"}};
    return headers;
}

std::string url_encode(const std::string& text) {
    static const char hex[] = "0123456789ABCDEF";
    std::string out;
    for (unsigned char c : text) {
        if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
            out += static_cast<char>(c);
        } else {
            out += '%';
            out += hex[c >> 4];
            out += hex[c & 15];
        }
    }
    return out;
}

std::unique_ptr<httplib::Client> make_client(const std::string& socket_path, time_t read_timeout) {
    auto cli = std::make_unique<httplib::Client>(socket_path);
    cli->set_address_family(AF_UNIX);
    cli->set_connection_timeout(kConnectTimeoutSeconds, 0);
    cli->set_read_timeout(read_timeout, 0);
    cli->set_write_timeout(kReadTimeoutSeconds, 0);
    cli->set_keep_alive(false);
    return cli;
}

// The "message" of an engine error body, or the body itself when it is not JSON.
std::string message_of(const std::string& body) {
    auto parsed = json::parse(body, nullptr, false);
    if (parsed.is_object() && parsed.contains("message") && parsed["message"].is_string()) {
        return parsed["message"].get<std::string>();
    }
    auto end = body.find_last_not_of(" \r\n\t");
    return end == std::string::npos ? std::string() : body.substr(0, end + 1);
}

std::string describe(httplib::Error error) {
    switch (error) {
        case httplib::Error::Connection:
            return "cannot connect";
        case httplib::Error::ConnectionTimeout:
            return "connecting timed out";
        case httplib::Error::Read:
            return "connection lost while reading the answer";
        case httplib::Error::Write:
            return "connection lost while sending the request";
        default:
            return httplib::to_string(error);
    }
}

// What went wrong reaching the engine, e.g. "cannot connect (no such socket)".
[[noreturn]] void throw_unreachable(const std::string& socket_path, httplib::Error error) {
    std::string cause = describe(error);
    std::error_code ec;
    if (error == httplib::Error::Connection) {
        if (!std::filesystem::exists(socket_path, ec)) {
            cause += " (no such socket)";
        } else if (!std::filesystem::is_socket(socket_path, ec)) {
            cause += " (not a socket)";
        } else if (access(socket_path.c_str(), R_OK | W_OK) != 0) {
            cause += " (permission denied)";
        }
    }
    throw EngineUnreachable(cause);
}

[[noreturn]] void throw_engine_error(const std::string& request, int status,
                                     const std::string& body) {
    std::string message = message_of(body);
    throw EngineError(status, message,
                      request + ": HTTP " + std::to_string(status) + ": " + message);
}

// Returns the response when its status is one of `ok`; throws otherwise.
const httplib::Response& expect(const httplib::Result& result, const std::string& socket_path,
                                const std::string& request, std::initializer_list<int> ok) {
    if (!result) {
        throw_unreachable(socket_path, result.error());
    }
    for (int status : ok) {
        if (result->status == status) {
            return *result;
        }
    }
    throw_engine_error(request, result->status, result->body);
}

json parse_body(const httplib::Response& response, const std::string& request) {
    auto parsed = json::parse(response.body, nullptr, false);
    if (parsed.is_discarded()) {
        throw EngineError(response.status, "", request + ": the engine's answer is not JSON");
    }
    return parsed;
}

std::string string_at(const json& object, const char* key) {
    auto it = object.find(key);
    return it != object.end() && it->is_string() ? it->get<std::string>() : std::string();
}

std::map<std::string, std::string> labels_of(const json& labels) {
    std::map<std::string, std::string> out;
    if (labels.is_object()) {
        for (const auto& [key, value] : labels.items()) {
            if (value.is_string()) {
                out.emplace(key, value.get<std::string>());
            }
        }
    }
    return out;
}

// The first network the container is attached to that gave it an IPv4 address.
void read_network(const json& settings, ContainerInfo& info) {
    info.ip = string_at(settings, "IPAddress");
    info.gateway = string_at(settings, "Gateway");
    auto networks = settings.find("Networks");
    if (!info.ip.empty() || networks == settings.end() || !networks->is_object()) {
        return;
    }
    for (const auto& [name, network] : networks->items()) {
        std::string ip = string_at(network, "IPAddress");
        if (!ip.empty()) {
            info.ip = ip;
            info.gateway = string_at(network, "Gateway");
            return;
        }
    }
}

// The first host address of an IPv4 subnet ("172.17.0.0/16" -> "172.17.0.1"): Docker's default
// choice of gateway, used when a network's IPAM config does not name one.
std::string first_host_of(const std::string& subnet) {
    auto slash = subnet.find('/');
    in_addr addr{};
    if (slash == std::string::npos ||
        inet_pton(AF_INET, subnet.substr(0, slash).c_str(), &addr) != 1) {
        return "";
    }
    addr.s_addr = htonl(ntohl(addr.s_addr) + 1);
    char text[INET_ADDRSTRLEN];
    return inet_ntop(AF_INET, &addr, text, sizeof text) ? text : "";
}

}  // namespace

std::string demultiplex_log_stream(const std::string& raw) {
    std::string out;
    std::size_t pos = 0;
    while (pos + 8 <= raw.size()) {
        auto stream = static_cast<unsigned char>(raw[pos]);
        if (stream > 2 || raw[pos + 1] != 0 || raw[pos + 2] != 0 || raw[pos + 3] != 0) {
            return pos == 0 ? raw : out + raw.substr(pos);  // not multiplexed (TTY container)
        }
        std::uint32_t size = 0;
        for (int i = 4; i < 8; ++i) {
            size = (size << 8) | static_cast<unsigned char>(raw[pos + i]);
        }
        pos += 8;
        out.append(raw, pos, std::min<std::size_t>(size, raw.size() - pos));
        pos += size;
    }
    return out;
}

DockerClient::DockerClient(std::string socket_path) : socket_path_(std::move(socket_path)) {}

DockerClient::~DockerClient() = default;

DockerClient::Borrowed::Borrowed(const DockerClient& owner, std::unique_ptr<httplib::Client> client)
    : owner_(owner), client_(std::move(client)) {}

DockerClient::Borrowed::~Borrowed() {
    owner_.give_back(std::move(client_));
}

httplib::Client* DockerClient::Borrowed::operator->() const {
    return client_.get();
}

namespace {
constexpr std::size_t kIdleConnections = 4;
}  // namespace

DockerClient::Borrowed DockerClient::connect() const {
    {
        std::lock_guard lock(idle_mutex_);
        if (!idle_.empty()) {
            auto client = std::move(idle_.back());
            idle_.pop_back();
            return Borrowed(*this, std::move(client));
        }
    }
    auto client = make_client(socket_path_, kReadTimeoutSeconds);
    // cpp-httplib checks a kept connection before reusing it and reconnects when the engine
    // closed it (idle timeout, restart).
    client->set_keep_alive(true);
    return Borrowed(*this, std::move(client));
}

void DockerClient::give_back(std::unique_ptr<httplib::Client> client) const {
    std::lock_guard lock(idle_mutex_);
    if (idle_.size() < kIdleConnections) {
        idle_.push_back(std::move(client));
    }
}

void DockerClient::ping() const {
    const std::string request = "GET /_ping";
    expect(connect()->Get("/_ping", api_headers()), socket_path_, request, {200});
}

std::string DockerClient::create_container(const std::string& name, const json& config) const {
    const std::string request = "create container " + name;
    auto result = connect()->Post("/containers/create?name=" + url_encode(name), api_headers(),
                                  config.dump(), "application/json");
    const auto& response = expect(result, socket_path_, request, {201});
    auto body = parse_body(response, request);
    for (const auto& warning : body.value("Warnings", json::array())) {
        if (warning.is_string()) {
            spdlog::debug("docker: {}: {}", request, warning.get<std::string>());
        }
    }
    std::string id = string_at(body, "Id");
    if (id.empty()) {
        throw EngineError(response.status, "", request + ": the engine returned no container id");
    }
    return id;
}

void DockerClient::start_container(const std::string& id) const {
    const std::string request = "start container " + id.substr(0, 12);
    auto result = connect()->Post("/containers/" + id + "/start", api_headers(), "", "text/plain");
    expect(result, socket_path_, request, {204, 304});
}

ContainerInfo DockerClient::inspect_container(const std::string& id) const {
    const std::string request = "inspect container " + id.substr(0, 12);
    auto result = connect()->Get("/containers/" + id + "/json", api_headers());
    auto body = parse_body(expect(result, socket_path_, request, {200}), request);

    ContainerInfo info;
    info.id = string_at(body, "Id");
    info.name = string_at(body, "Name");
    if (!info.name.empty() && info.name.front() == '/') {
        info.name.erase(0, 1);
    }
    const auto& state = body.value("State", json::object());
    info.state.status = string_at(state, "Status");
    info.state.running = state.value("Running", false);
    info.state.exit_code = state.value("ExitCode", 0);
    info.state.oom_killed = state.value("OOMKilled", false);
    info.state.error = string_at(state, "Error");
    read_network(body.value("NetworkSettings", json::object()), info);
    info.labels = labels_of(body.value("Config", json::object()).value("Labels", json::object()));
    return info;
}

std::string DockerClient::logs_tail(const std::string& id, unsigned lines) const {
    const std::string request = "logs of container " + id.substr(0, 12);
    auto result = connect()->Get(
        "/containers/" + id + "/logs?stdout=1&stderr=1&tail=" + std::to_string(lines),
        api_headers());
    return demultiplex_log_stream(expect(result, socket_path_, request, {200}).body);
}

bool DockerClient::remove_container(const std::string& id) const {
    const std::string request = "remove container " + id.substr(0, 12);
    auto result = connect()->Delete("/containers/" + id + "?force=true&v=true", api_headers());
    // 409: a removal of this container is already in progress.
    return expect(result, socket_path_, request, {204, 404, 409}).status != 404;
}

std::vector<ContainerSummary> DockerClient::list_containers(const std::string& label) const {
    const std::string request = "list containers" + (label.empty() ? "" : " with label " + label);
    std::string path = "/containers/json?all=1";
    if (!label.empty()) {
        path += "&filters=" + url_encode(json{{"label", {label}}}.dump());
    }
    auto result = connect()->Get(path, api_headers());
    auto body = parse_body(expect(result, socket_path_, request, {200}), request);

    std::vector<ContainerSummary> out;
    for (const auto& item : body) {
        ContainerSummary summary;
        summary.id = string_at(item, "Id");
        auto names = item.value("Names", json::array());
        if (!names.empty() && names[0].is_string()) {
            summary.name = names[0].get<std::string>();
            if (!summary.name.empty() && summary.name.front() == '/') {
                summary.name.erase(0, 1);
            }
        }
        summary.state = string_at(item, "State");
        summary.labels = labels_of(item.value("Labels", json::object()));
        out.push_back(std::move(summary));
    }
    return out;
}

std::string DockerClient::network_gateway(const std::string& network) const {
    const std::string request = "inspect network " + network;
    auto result = connect()->Get("/networks/" + url_encode(network), api_headers());
    auto body = parse_body(expect(result, socket_path_, request, {200}), request);

    auto configs = body.value("IPAM", json::object()).value("Config", json::array());
    for (const auto& config : configs) {
        std::string gateway = string_at(config, "Gateway");
        if (!gateway.empty() && gateway.find(':') == std::string::npos) {
            return gateway;
        }
    }
    for (const auto& config : configs) {
        std::string gateway = first_host_of(string_at(config, "Subnet"));
        if (!gateway.empty()) {
            return gateway;
        }
    }
    throw EngineError(200, "", request + ": the network has no IPv4 gateway");
}

json DockerClient::info() const {
    const std::string request = "GET /info";
    return parse_body(expect(connect()->Get("/info", api_headers()), socket_path_, request, {200}),
                      request);
}

// ---------------------------------------------------------------------------------------------

EventStream::EventStream(std::string socket_path, json filters)
    : socket_path_(std::move(socket_path)), filters_(filters.dump()) {}

EventStream::~EventStream() = default;

bool EventStream::cancelled() const {
    std::lock_guard lock(mutex_);
    return cancelled_;
}

void EventStream::cancel() {
    std::lock_guard lock(mutex_);
    cancelled_ = true;
    if (active_ != nullptr) {
        active_->stop();  // shuts the socket down under a blocked read
    }
}

void EventStream::run(const std::string& since, const std::function<void()>& on_connected,
                      const EventHandler& on_event) {
    auto cli = make_client(socket_path_, kEventReadTimeoutSeconds);
    {
        std::lock_guard lock(mutex_);
        if (cancelled_) {
            return;
        }
        active_ = cli.get();
    }
    struct Deactivate {
        EventStream* self;
        ~Deactivate() {
            std::lock_guard lock(self->mutex_);
            self->active_ = nullptr;
        }
    } deactivate{this};

    std::string path = "/events?filters=" + url_encode(filters_);
    if (!since.empty()) {
        path += "&since=" + url_encode(since);
    }
    int status = 0;
    std::string pending;  // an incomplete line, or the error body
    auto on_response = [&](const httplib::Response& response) {
        status = response.status;
        if (cancelled()) {
            return false;
        }
        if (status == 200 && on_connected) {
            on_connected();
        }
        return true;
    };
    auto on_data = [&](const char* data, std::size_t len) {
        pending.append(data, len);
        if (status != 200) {
            return !cancelled();
        }
        std::size_t start = 0;
        for (auto end = pending.find('\n'); end != std::string::npos;
             end = pending.find('\n', start)) {
            auto event =
                json::parse(pending.begin() + start, pending.begin() + end, nullptr, false);
            start = end + 1;
            if (event.is_object()) {
                on_event(event);
            }
        }
        pending.erase(0, start);
        return !cancelled();
    };

    auto result = cli->Get(path, api_headers(), on_response, on_data);
    if (cancelled()) {
        return;
    }
    if (!result) {
        throw_unreachable(socket_path_, result.error());
    }
    if (status != 200) {
        throw_engine_error("GET /events", status, pending);
    }
}

}  // namespace unifaas::docker
