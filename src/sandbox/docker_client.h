// A small Docker Engine API client over a unix socket (API 1.41, dockerd 20.10 and later).
// One DockerClient may be used from many threads: each call borrows a keep-alive connection from
// a small idle set (a cold start's create, start and inspect then share one, as a CLI's would).
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace httplib {
class Client;
}

namespace unifaas::docker {

// The engine answered with an HTTP error; engine_message() is its "message" text.
class EngineError : public std::runtime_error {
  public:
    EngineError(int status, std::string engine_message, const std::string& what)
        : std::runtime_error(what), status_(status), engine_message_(std::move(engine_message)) {}
    int status() const { return status_; }
    const std::string& engine_message() const { return engine_message_; }

  private:
    int status_;
    std::string engine_message_;
};

// The engine could not be reached at all (no socket, refused, connection broken).
class EngineUnreachable : public std::runtime_error {
  public:
    using std::runtime_error::runtime_error;
};

struct ContainerState {
    std::string status;  // "created", "running", "exited", ...
    bool running = false;
    int exit_code = 0;
    bool oom_killed = false;
    std::string error;  // the engine's or runtime's error text, if any
};

struct ContainerInfo {
    std::string id;
    std::string name;
    std::string ip;       // first network's IPv4 address ("" when none)
    std::string gateway;  // that network's gateway
    ContainerState state;
    std::map<std::string, std::string> labels;
};

struct ContainerSummary {
    std::string id;
    std::string name;  // without the leading '/'
    std::string state;
    std::map<std::string, std::string> labels;
};

class DockerClient {
  public:
    explicit DockerClient(std::string socket_path);
    ~DockerClient();
    DockerClient(const DockerClient&) = delete;
    DockerClient& operator=(const DockerClient&) = delete;

    const std::string& socket_path() const { return socket_path_; }

    // Throws EngineUnreachable or EngineError; returns when the engine answers /_ping.
    void ping() const;
    // POST /containers/create; config is the Engine API's ContainerConfig (with HostConfig).
    // Returns the new container's id.
    std::string create_container(const std::string& name, const nlohmann::json& config) const;
    void start_container(const std::string& id) const;
    ContainerInfo inspect_container(const std::string& id) const;
    // The last `lines` lines of stdout and stderr, interleaved as written.
    std::string logs_tail(const std::string& id, unsigned lines) const;
    // DELETE ?force=true&v=true. Returns false when there was no such container.
    bool remove_container(const std::string& id) const;
    // All containers (running or not) carrying `label` ("key" or "key=value"; "" for all).
    std::vector<ContainerSummary> list_containers(const std::string& label) const;
    // The gateway address of a network (the host side of the default "bridge").
    std::string network_gateway(const std::string& network) const;
    // GET /info: the engine's system information (CgroupDriver, Plugins.Log, ...).
    nlohmann::json info() const;

  private:
    // A connection borrowed for one call; given back when it goes out of scope.
    class Borrowed {
      public:
        Borrowed(const DockerClient& owner, std::unique_ptr<httplib::Client> client);
        ~Borrowed();
        Borrowed(const Borrowed&) = delete;
        Borrowed& operator=(const Borrowed&) = delete;
        httplib::Client* operator->() const;

      private:
        const DockerClient& owner_;
        std::unique_ptr<httplib::Client> client_;
    };
    Borrowed connect() const;
    void give_back(std::unique_ptr<httplib::Client> client) const;

    std::string socket_path_;
    mutable std::mutex idle_mutex_;
    mutable std::vector<std::unique_ptr<httplib::Client>> idle_;
};

// GET /events as a blocking stream. run() may be called repeatedly (reconnects); cancel() makes a
// running run() return soon and every later run() return at once. Thread-safe.
class EventStream {
  public:
    using EventHandler = std::function<void(const nlohmann::json& event)>;

    EventStream(std::string socket_path, nlohmann::json filters);
    ~EventStream();
    EventStream(const EventStream&) = delete;
    EventStream& operator=(const EventStream&) = delete;

    // Streams events since `since` ("" for new events only, else "<seconds>.<nanoseconds>").
    // Calls on_connected once the engine accepted the subscription, then on_event per event.
    // Returns when the engine ends the stream or after cancel(); throws EngineUnreachable or
    // EngineError when it cannot subscribe or the connection breaks.
    void run(const std::string& since, const std::function<void()>& on_connected,
             const EventHandler& on_event);
    void cancel();
    bool cancelled() const;

  private:
    std::string socket_path_;
    std::string filters_;
    mutable std::mutex mutex_;
    bool cancelled_ = false;
    httplib::Client* active_ = nullptr;  // the client of the run() in progress
};

// Splits Docker's multiplexed log stream (8-byte frame headers) into its payload bytes.
std::string demultiplex_log_stream(const std::string& raw);

}  // namespace unifaas::docker
