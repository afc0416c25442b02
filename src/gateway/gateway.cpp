#include "gateway/gateway.h"

#include <spdlog/spdlog.h>
#include <nlohmann/json.hpp>

#include "gateway/invoke_target.h"
#include "gateway/metrics_endpoint.h"
#include "gateway/proxy.h"
#include "version.h"

namespace unifaas {

namespace {

constexpr auto kCallbackAddressWait = std::chrono::seconds(5);
constexpr unsigned kCallbackThreads = 8;

void send_error(httplib::Response& res, int status, const std::string& message,
                int retry_after_s = 0) {
    res.status = status;
    if (retry_after_s > 0) {
        res.set_header("Retry-After", std::to_string(retry_after_s));
    }
    res.set_content(message + "\n", "text/plain; charset=utf-8");
}

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

Gateway::Gateway(const DaemonConfig& config, FunctionTable& functions, Readiness& readiness,
                 MetricsAppender extra_metrics)
    : extra_metrics_(std::move(extra_metrics)),
      config_(config),
      functions_(functions),
      readiness_(readiness),
      invoke_server_(config.http_threads),
      callback_server_(kCallbackThreads) {
    setup_invoke_server();
    setup_callback_server();
}

Gateway::~Gateway() {
    stop_accepting();
    callback_server_.stop_accepting();
    join();
}

void Gateway::setup_invoke_server() {
    auto& s = invoke_server_;
    s.set_tcp_nodelay(true);
    s.set_keep_alive_max_count(100000);
    s.set_payload_max_length(config_.max_body_bytes);

    auto handler = [this](const httplib::Request& req, httplib::Response& res) {
        invoke(req, res);
    };
    const std::string pattern = "/invoke/.*";
    s.Get(pattern, handler);
    s.Post(pattern, handler);
    s.Put(pattern, handler);
    s.Patch(pattern, handler);
    s.Delete(pattern, handler);
    s.Options(pattern, handler);
    s.Get("/healthz", [](const httplib::Request&, httplib::Response& res) {
        res.set_content("ok\n", "text/plain");
    });
    s.Get("/status", [this](const httplib::Request&, httplib::Response& res) { status(res); });
    s.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
        res.set_content(render_metrics(functions_.metrics_view(), extra_metrics_),
                        "text/plain; version=0.0.4; charset=utf-8");
    });

    // Errors the server produces itself (no handler ran): give them a short text body too.
    s.set_error_handler(httplib::Server::HandlerWithResponse(
        [this](const httplib::Request& req, httplib::Response& res) {
            if (!res.body.empty() || !res.headers.empty()) {
                return httplib::Server::HandlerResponse::Unhandled;  // an answer of ours or a
                                                                     // function's
            }
            auto target = parse_invoke_target(req.target);
            std::string who = target ? "function " + target->function + ": " : std::string();
            switch (res.status) {
                case 413:
                    send_error(res, 413,
                               who + "request body exceeds the limit of " +
                                   human_size(config_.max_body_bytes));
                    break;
                case 404:
                    send_error(res, 404, "not found: use /invoke/<function>/<path>");
                    break;
                default:
                    send_error(res, res.status, who + "bad request");
            }
            return httplib::Server::HandlerResponse::Handled;
        }));
    s.set_exception_handler(
        [](const httplib::Request& req, httplib::Response& res, std::exception_ptr ep) {
            std::string what = "internal error";
            try {
                std::rethrow_exception(ep);
            } catch (const std::exception& e) {
                what = e.what();
            } catch (...) {
            }
            spdlog::error("{} {}: {}", req.method, req.path, what);
            send_error(res, 500, what);
        });
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
    invoke_server_.join();
    callback_server_.join();
}

std::size_t Gateway::in_flight() const {
    return in_flight_.load(std::memory_order_relaxed);
}

void Gateway::invoke(const httplib::Request& req, httplib::Response& res) {
    auto in_flight = std::make_shared<InFlight>(*this);
    auto target = parse_invoke_target(req.target);
    if (!target) {
        send_error(res, 404, "no function named in the path: use /invoke/<function>/<path>");
        return;
    }
    const std::string& name = target->function;
    auto fn = functions_.resolve(name);
    switch (fn.kind) {
        case ResolvedFunction::Kind::Unknown:
            send_error(res, 404, fmt::format("function {}: no such function", name));
            return;
        case ResolvedFunction::Kind::Broken:
            log_failure(name, 500, fn.error);
            send_error(res, 500,
                       fmt::format("function {}: configuration error: {}", name, fn.error));
            return;
        case ResolvedFunction::Kind::Ok:
            break;
    }

    // Counted when the answer is ready (the time to write it to the client is not included).
    struct Record {
        FunctionMetrics& metrics;
        httplib::Response& res;
        std::chrono::steady_clock::time_point start = std::chrono::steady_clock::now();
        ~Record() {
            metrics.count_invocation(res.status);
            metrics.invocation_seconds.observe(std::chrono::steady_clock::now() - start);
        }
    } record{fn.pool->metrics(), res};

    std::shared_ptr<Lease> lease;
    try {
        lease = fn.pool->acquire(fn.spec);
    } catch (const PoolError& e) {
        log_failure(name, e.status(), e.what());
        send_error(res, e.status(), e.what(), e.retry_after_s());
        return;
    }

    httplib::Response upstream;
    try {
        upstream = forward(*lease, req, target->upstream_target, fn.spec->request_timeout);
    } catch (const ProxyError& e) {
        std::string message = fmt::format("function {}: {}", name, e.what());
        log_failure(name, e.status(), message);
        send_error(res, e.status(), message);
        return;
    }

    res.status = upstream.status;
    res.headers = downstream_response_headers(upstream.headers);
    std::string content_type = upstream.get_header_value("Content-Type");
    auto body = std::make_shared<std::string>(std::move(upstream.body));
    // The slot (and the in-flight count) are held until the response has been written.
    res.set_content_provider(
        body->size(), content_type,
        [body](std::size_t offset, std::size_t length, httplib::DataSink& sink) {
            return sink.write(body->data() + offset, length);
        },
        [lease, in_flight](bool) {});
}

void Gateway::status(httplib::Response& res) {
    nlohmann::json functions = nlohmann::json::array();
    for (const auto& pool : functions_.snapshot()) {
        nlohmann::json instances = nlohmann::json::array();
        for (const auto& i : pool.instances) {
            instances.push_back({{"id", i.id},
                                 {"state", to_string(i.state)},
                                 {"address", i.address},
                                 {"sandbox", i.sandbox},
                                 {"capacity", i.capacity},
                                 {"in_use", i.in_use},
                                 {"requests", i.requests}});
        }
        functions.push_back(
            {{"name", pool.function}, {"queued", pool.queued}, {"instances", instances}});
    }
    nlohmann::json doc = {{"version", UNIFAAS_VERSION},
                          {"in_flight", in_flight()},
                          {"pending_callbacks", readiness_.pending()},
                          {"functions", functions}};
    res.set_content(doc.dump(2) + "\n", "application/json");
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
            send_error(res, 404, "unknown callback");
            return;
    }
}

}  // namespace unifaas
