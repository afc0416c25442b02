#include "gateway/gateway.h"

#include <spdlog/spdlog.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cctype>

#include "gateway/invoke_target.h"
#include "gateway/metrics_endpoint.h"
#include "gateway/stream_relay.h"
#include "gateway/tunnel.h"
#include "http/forwarding.h"
#include "version.h"

namespace unifaas {

namespace {

constexpr auto kCallbackAddressWait = std::chrono::seconds(5);
constexpr unsigned kCallbackThreads = 8;
constexpr std::string_view kTextPlain = "text/plain; charset=utf-8";

std::string human_size(std::size_t bytes) {
    if (bytes % (1024 * 1024) == 0) {
        return fmt::format("{} MiB", bytes / (1024 * 1024));
    }
    if (bytes % 1024 == 0) {
        return fmt::format("{} KiB", bytes / 1024);
    }
    return fmt::format("{} bytes", bytes);
}

void log_failure(const std::string& function, int status, const std::string& message) {
    if (status >= 500) {
        spdlog::warn("function {}: {} {}", function, status, message);
    } else {
        spdlog::debug("function {}: {} {}", function, status, message);
    }
}

void send_error(HttpExchange& ex, int status, const std::string& message, int retry_after_s = 0,
                std::shared_ptr<void> hold = {}) {
    std::string retry = std::to_string(retry_after_s);
    http::HeaderField extra[] = {{"Retry-After", retry}};
    ex.respond_simple(status, kTextPlain, message + "\n",
                      retry_after_s > 0 ? std::span<const http::HeaderField>(extra)
                                        : std::span<const http::HeaderField>(),
                      std::move(hold));
}

std::string_view path_of(std::string_view target) {
    return target.substr(0, target.find('?'));
}

}  // namespace

// Counts an invocation from the moment it is accepted until its response has been written.
class Gateway::InFlight {
  public:
    // An atomic on the hot path; the mutex only when the last request ends, for drain().
    explicit InFlight(Gateway& g) : g_(g) { g_.in_flight_.fetch_add(1, std::memory_order_relaxed); }
    ~InFlight() {
        if (g_.in_flight_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
            std::lock_guard lk(g_.mu_);
            g_.drained_.notify_all();
        }
    }
    InFlight(const InFlight&) = delete;
    InFlight& operator=(const InFlight&) = delete;

  private:
    Gateway& g_;
};

// One invocation between its request and its response.
struct Gateway::Invocation {
    Invocation(Gateway& g, std::shared_ptr<HttpExchange> exchange)
        : ex(std::move(exchange)), in_flight(std::make_shared<InFlight>(g)) {}

    // Counted when the answer is ready (the time to write it to the client is not included).
    void count(int status) {
        metrics->count_invocation(status);
        metrics->invocation_seconds.observe(std::chrono::steady_clock::now() - started);
    }
    void fail(int status, const std::string& message, int retry_after_s = 0) {
        log_failure(function, status, message);
        count(status);
        send_error(*ex, status, message, retry_after_s, in_flight);
    }

    std::shared_ptr<HttpExchange> ex;
    std::shared_ptr<InFlight> in_flight;
    std::string function;
    std::string upstream_target;
    std::shared_ptr<Pool> pool;  // keeps `metrics` alive
    FunctionMetrics* metrics = nullptr;
    Seconds request_timeout{};
    StreamLimits stream_limits;
    bool client_gone = false;               // the connection closed before the answer
    std::function<void()> cancel_upstream;  // while the instance works on the request
    std::chrono::steady_clock::time_point started = std::chrono::steady_clock::now();
};

Gateway::Gateway(const DaemonConfig& config, FunctionTable& functions, Readiness& readiness,
                 MetricsAppender extra_metrics)
    : extra_metrics_(std::move(extra_metrics)),
      config_(config),
      functions_(functions),
      readiness_(readiness),
      invoke_server_(
          invoke_options(), [this](std::shared_ptr<HttpExchange> ex) { on_request(ex); },
          [this](std::string_view target, int status, std::string_view problem) {
              return error_text(target, status, problem);
          }),
      callback_server_(kCallbackThreads) {
    setup_callback_server();
}

Gateway::~Gateway() {
    stop_accepting();
    callback_server_.stop_accepting();
    join();
}

HttpServer::Options Gateway::invoke_options() const {
    HttpServer::Options o;
    o.threads = config_.http_threads;
    o.batch_scheduling = config_.http_scheduling == "batch";
    o.max_connections = config_.max_connections;
    o.max_body_bytes = config_.max_body_bytes;
    o.stream_watermark = config_.stream_watermark;
    o.stream_request_bodies = true;  // uploads go to the instance as they arrive
    o.body_limit = [this](const http::RequestHead& head) { return body_limit(head.target); };
    o.keep_alive_allowed = [this] { return drain_ == nullptr || !drain_->draining(); };
    // Registry edits are seen through its change watch, served first in every batch: a lookup
    // from a loop then needs no syscall.
    o.first_watch_fd = functions_.registry().watch_fd();
    o.on_first_watch = [this] { functions_.registry().drain_changes(); };
    return o;
}

// Bodies of the errors the HTTP server answers before a request reaches on_request().
std::string Gateway::error_text(std::string_view target, int status,
                                std::string_view problem) const {
    auto invoked = parse_invoke_target(target);
    std::string who = invoked ? "function " + invoked->function + ": " : std::string();
    if (status == 413) {
        return who + "request body exceeds the limit of " + human_size(body_limit(target));
    }
    std::string reason(http::reason_phrase(status));
    std::transform(reason.begin(), reason.end(), reason.begin(),
                   [](unsigned char c) { return std::tolower(c); });
    return fmt::format("{}{}: {}", who, reason, problem);
}

void Gateway::setup_callback_server() {
    auto& s = callback_server_;
    s.set_payload_max_length(4096);
    auto handler = [this](const httplib::Request& req, httplib::Response& res) { ready(req, res); };
    s.Get("/ready/([0-9a-f]{1,64})", handler);
    s.Post("/ready/([0-9a-f]{1,64})", handler);
}

void Gateway::serve(Listeners listeners) {
    invoke_server_.serve(listeners.http_fd);
    callback_server_.serve(listeners.callback_fd);
}

void Gateway::stop_accepting() {
    invoke_server_.stop_accepting();
}

bool Gateway::drain(std::chrono::steady_clock::time_point deadline) {
    std::unique_lock lk(mu_);
    return drained_.wait_until(lk, deadline, [this] { return in_flight_.load() == 0; });
}

void Gateway::join() {
    invoke_server_.stop_accepting();
    callback_server_.stop_accepting();
    std::vector<std::pair<EventLoop*, std::weak_ptr<Tunnel>>> open;
    {
        std::lock_guard lk(tunnels_mu_);
        open.swap(tunnels_);
    }
    for (auto& [loop, tunnel] : open) {  // runs before the server closes its loops
        loop->post([tunnel = std::move(tunnel)] {
            if (auto t = tunnel.lock()) {
                t->cancel();
            }
        });
    }
    invoke_server_.join();
    callback_server_.join();
}

std::size_t Gateway::in_flight() const {
    return in_flight_.load(std::memory_order_relaxed);
}

void Gateway::on_request(const std::shared_ptr<HttpExchange>& ex) {
    const auto& req = ex->request();
    if (req.target.starts_with("/invoke/") || path_of(req.target) == "/invoke") {
        invoke(ex);
        return;
    }
    std::string_view path = path_of(req.target);
    if (req.method == "GET" || req.method == "HEAD") {
        if (path == "/healthz") {
            // A load balancer's health check: 503 tells it to send new requests elsewhere.
            bool draining = drain_ && drain_->draining();
            ex->respond_simple(draining ? 503 : 200, "text/plain",
                               draining ? "draining\n" : "ok\n");
            return;
        }
        if (path == "/status") {
            ex->respond_simple(200, "application/json", status_json());
            return;
        }
        if (path == "/metrics") {
            ex->respond_simple(200, "text/plain; version=0.0.4; charset=utf-8",
                               render_metrics(functions_.metrics_view(), extra_metrics_) +
                                   render_node_metrics(config_.node_name, UNIFAAS_VERSION,
                                                       drain_ && drain_->draining()));
            return;
        }
    }
    send_error(*ex, 404, "not found: use /invoke/<function>/<path>");
}

void Gateway::invoke(const std::shared_ptr<HttpExchange>& ex) {
    auto call = std::make_shared<Invocation>(*this, ex);
    auto target = parse_invoke_target(ex->request().target);
    if (!target) {
        send_error(*ex, 404, "no function named in the path: use /invoke/<function>/<path>", 0,
                   call->in_flight);
        return;
    }
    call->function = std::move(target->function);
    call->upstream_target = std::move(target->upstream_target);
    const std::string& name = call->function;
    auto fn = functions_.resolve(name, Registry::Freshness::Watched);
    switch (fn.kind) {
        case ResolvedFunction::Kind::Unknown:
            send_error(*ex, 404, fmt::format("function {}: no such function", name), 0,
                       call->in_flight);
            return;
        case ResolvedFunction::Kind::Broken:
            log_failure(name, 500, fn.error);
            send_error(*ex, 500,
                       fmt::format("function {}: configuration error: {}", name, fn.error), 0,
                       call->in_flight);
            return;
        case ResolvedFunction::Kind::Ok:
            break;
    }
    call->pool = fn.pool;
    call->metrics = &fn.pool->metrics();
    call->request_timeout = fn.spec->request_timeout;
    call->stream_limits = stream_limits(*fn.spec);
    ex->on_client_gone([weak = std::weak_ptr<Invocation>(call)] {
        if (auto c = weak.lock()) {
            client_left(*c);
        }
    });
    // The loop as affinity: a slot (its kept connection) stays with the loop that used it.
    auto affinity = reinterpret_cast<std::uintptr_t>(&ex->loop());
    fn.pool->acquire_async(
        fn.spec,
        [this, call](AcquireResult result) {
            // A free slot is handed over at once, on this loop; otherwise from another thread.
            EventLoop& loop = call->ex->loop();
            std::shared_ptr<Lease> lease = std::move(result.lease);
            if (loop.in_loop_thread()) {
                on_lease(call, std::move(lease), std::move(result.error));
                return;
            }
            loop.post([this, call, lease, error = std::move(result.error)]() mutable {
                on_lease(call, std::move(lease), std::move(error));
            });
        },
        affinity);
}

void Gateway::on_lease(const std::shared_ptr<Invocation>& call, std::shared_ptr<Lease> lease,
                       std::optional<PoolError> error) {
    if (error) {
        call->fail(error->status(), error->what(), error->retry_after_s());
        return;
    }
    if (call->client_gone) {
        return;  // the lease is given back at once
    }
    auto& ex = *call->ex;
    const auto& req = ex.request();
    UpstreamRequest up;
    std::string host = fmt::format("{}:{}", lease->address(), lease->port());
    if (ex.body_streaming()) {
        // The body is still arriving: it is relayed as it comes (re-framed chunked when the
        // client sent it chunked), with the response streams' watermark.
        bool chunked = req.framing == http::BodyFraming::Chunked;
        http::append_upstream_request_head(up.head, req, call->upstream_target, host,
                                           ex.client_address(), chunked ? 0 : req.content_length,
                                           chunked);
        up.body_source = call->ex;
        up.chunk_body = chunked;
        up.body_watermark = config_.stream_watermark;
    } else {
        // A WebSocket (or other Upgrade) handshake keeps its Upgrade: a 101 makes a tunnel.
        std::string_view upgrade = http::upgrade_protocol(req);
        http::append_upstream_request_head(up.head, req, call->upstream_target, host,
                                           ex.client_address(), ex.body().size(), false, upgrade);
        up.body = ex.body();
        up.upgrade = !upgrade.empty();
    }
    up.method = std::string(req.method);
    // (A body still arriving makes keep_alive() false until it is whole: the call checks that.)
    up.client_keep_alive = ex.body_streaming() ? req.keep_alive : ex.keep_alive();
    up.client_http11 = req.minor_version == 1;
    up.timeout = call->request_timeout;
    call->cancel_upstream = call_upstream(ex.loop(), lease, std::move(up),
                                          [this, call, lease](UpstreamReply reply) mutable {
                                              call->cancel_upstream = nullptr;
                                              on_reply(call, std::move(lease), std::move(reply));
                                          });
}

void Gateway::on_reply(const std::shared_ptr<Invocation>& call, std::shared_ptr<Lease> lease,
                       UpstreamReply reply) {
    if (reply.error_status == 413) {  // a chunked body crossed the limit while it streamed
        call->fail(413, error_text(call->ex->request().target, 413, reply.error));
        return;
    }
    if (reply.error_status != 0) {
        call->fail(reply.error_status, fmt::format("function {}: {}", call->function, reply.error));
        return;
    }
    call->count(reply.status);
    if (reply.tunnel) {
        open_tunnel(call, std::move(lease), std::move(reply));
        return;
    }
    if (reply.body) {
        relay_stream(call->ex, std::move(lease), std::move(reply), call->stream_limits,
                     call->in_flight, [call](StreamOutcome outcome) {
                         if (outcome.kind == StreamOutcome::Kind::Truncated) {
                             call->metrics->truncated_responses.fetch_add(
                                 1, std::memory_order_relaxed);
                             spdlog::warn("function {}: response truncated: {}", call->function,
                                          outcome.why);
                         }
                     });
        return;
    }
    // The instance is done with the request: its slot is free before the answer is written (a
    // client that sends its next request the moment it has this answer finds the slot free).
    // The in-flight count is held until the response has been written.
    lease.reset();
    call->ex->respond(std::move(reply.head), std::move(reply.storage), reply.body_offset,
                      reply.body_length, call->in_flight);
}

// The instance answered 101: the client's connection leaves the HTTP server and bytes flow both
// ways until either side closes. The slot, the in-flight count and (through call->ex) the
// server's connection count are held until then; the instance's connection is never reused.
void Gateway::open_tunnel(const std::shared_ptr<Invocation>& call, std::shared_ptr<Lease> lease,
                          UpstreamReply reply) {
    auto taken = call->ex->take_connection();
    if (!taken) {
        lease->drop_cache();  // the client is gone: the lease is given back now
        return;
    }
    call->metrics->tunnels.fetch_add(1, std::memory_order_relaxed);
    TunnelLimits limits;
    limits.idle = call->stream_limits.idle;
    limits.max_duration = call->stream_limits.max_duration;
    limits.watermark = config_.stream_watermark;
    std::string to_client = std::move(reply.head);
    to_client += reply.tunnel->first;
    int upstream = reply.tunnel->connection->fd();
    EventLoop& loop = call->ex->loop();
    auto tunnel = unifaas::open_tunnel(
        loop, std::move(taken->fd), std::move(to_client), upstream, std::move(taken->unread),
        limits, [call, lease = std::move(lease)](TunnelOutcome outcome) mutable {
            lease->drop_cache();  // closes the instance's side
            lease.reset();        // the slot is free (single-use: retired)
            if (outcome.kind == TunnelOutcome::Kind::Failed) {
                spdlog::debug("function {}: tunnel ended: {}", call->function, outcome.why);
            }
        });
    std::lock_guard lk(tunnels_mu_);
    std::erase_if(tunnels_, [](const auto& t) { return t.second.expired(); });
    tunnels_.emplace_back(&loop, tunnel);
}

// The invoked function's max-body-size, else the daemon's.
std::size_t Gateway::body_limit(std::string_view target) const {
    auto invoked = parse_invoke_target(target);
    if (!invoked) {
        return config_.max_body_bytes;
    }
    auto fn = functions_.resolve(invoked->function, Registry::Freshness::Watched);
    if (fn.kind != ResolvedFunction::Kind::Ok || !fn.spec->max_body_size) {
        return config_.max_body_bytes;
    }
    return *fn.spec->max_body_size;
}

StreamLimits Gateway::stream_limits(const FunctionSpec& spec) {
    auto ms = [](Seconds s) { return std::chrono::ceil<std::chrono::milliseconds>(s); };
    StreamLimits limits;
    limits.idle = ms(spec.stream_idle_timeout);
    if (spec.stream_max_duration) {
        limits.max_duration = ms(*spec.stream_max_duration);
    }
    return limits;
}

// The client's connection closed while its request waited for a slot or the instance's answer:
// the upstream exchange ends now and the slot (or the one still to come) is given back.
void Gateway::client_left(Invocation& call) {
    call.client_gone = true;
    call.count(499);  // nginx's "client closed request"
    if (auto cancel = std::move(call.cancel_upstream)) {
        cancel();
    }
}

std::string Gateway::status_json() const {
    nlohmann::json functions = nlohmann::json::array();
    for (const auto& pool : functions_.snapshot()) {
        nlohmann::json instances = nlohmann::json::array();
        for (const auto& i : pool.instances) {
            instances.push_back({{"id", i.id},
                                 {"state", to_string(i.state)},
                                 {"address", i.address},
                                 {"sandbox", i.sandbox},
                                 {"start", i.start_kind},
                                 {"capacity", i.capacity},
                                 {"in_use", i.in_use},
                                 {"requests", i.requests}});
        }
        functions.push_back(
            {{"name", pool.function}, {"queued", pool.queued}, {"instances", instances}});
    }
    nlohmann::json doc = {{"version", UNIFAAS_VERSION},
                          {"node", config_.node_name},
                          {"state", to_string(drain_ ? drain_->state() : NodeState::Serving)},
                          {"in_flight", in_flight()},
                          {"pending_callbacks", readiness_.pending()},
                          {"functions", functions}};
    return doc.dump(2) + "\n";
}

void Gateway::ready(const httplib::Request& req, httplib::Response& res) {
    const std::string token = req.matches[1];
    switch (readiness_.signal(token, req.remote_addr, kCallbackAddressWait)) {
        case Readiness::Outcome::Ready:
            res.set_content("ok\n", "text/plain");
            return;
        case Readiness::Outcome::UnknownToken:
        case Readiness::Outcome::WrongSource:
            spdlog::debug("refused readiness callback from {}", req.remote_addr);
            res.status = 404;
            res.set_content("unknown callback\n", "text/plain; charset=utf-8");
            return;
    }
}

}  // namespace unifaas
