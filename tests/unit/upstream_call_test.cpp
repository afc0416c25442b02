// call_upstream against a scripted upstream on 127.0.0.1: response framings, the head handed to
// the client, keep-alive reuse, the retry on a connection the instance closed, refused
// connections, timeouts and interim responses. The lease comes from a real Pool whose in-process
// backend "starts" an instance at 127.0.0.1:<the test upstream's port>.
#include "gateway/upstream_call.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <functional>
#include <future>
#include <mutex>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include "gateway/listening_server.h"
#include "http/message.h"
#include "http_bodies.h"
#include "pool/pool.h"
#include "util/unique_fd.h"

namespace unifaas {
namespace {

using test::chunked;
using test::pattern;

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

bool contains(std::string_view haystack, std::string_view needle) {
    return haystack.find(needle) != std::string_view::npos;
}

// Whether a head has a field named `name` (ASCII case-insensitive).
bool has_field(std::string_view head, std::string_view name) {
    std::size_t pos = head.find("\r\n");
    while (pos != std::string_view::npos && pos + 2 < head.size()) {
        pos += 2;
        std::size_t end = head.find("\r\n", pos);
        std::string_view line = head.substr(pos, end - pos);
        std::size_t colon = line.find(':');
        if (colon != std::string_view::npos && http::iequals(line.substr(0, colon), name)) {
            return true;
        }
        pos = end;
    }
    return false;
}

// A blocking upstream on one thread: serves one connection at a time, answering each request as
// the script says.
class TestUpstream {
  public:
    struct Reply {
        Reply(std::string bytes = {}, bool close_after = false, bool hang = false,
              std::string later = {})
            : bytes(std::move(bytes)),
              close_after(close_after),
              hang(hang),
              later(std::move(later)) {}
        std::string bytes;
        bool close_after;   // close the connection after writing `bytes`
        bool hang;          // never answer (nor read further)
        std::string later;  // written 50 ms after `bytes` (a head and its body apart)
    };
    // (connection number, request number on it, the request) -> what to do.
    using Script = std::function<Reply(int, int, const std::string&)>;

    explicit TestUpstream(Script script) : script_(std::move(script)) {
        listen_.reset(bind_listener("127.0.0.1", 0));
        port_ = local_port(listen_.get());
        int p[2];
        if (pipe2(p, O_CLOEXEC) != 0) {
            throw std::system_error(errno, std::generic_category(), "pipe2");
        }
        stop_r_.reset(p[0]);
        stop_w_.reset(p[1]);
        thread_ = std::thread([this] { run(); });
    }
    ~TestUpstream() {
        (void)!write(stop_w_.get(), "x", 1);
        thread_.join();
    }

    std::uint16_t port() const { return port_; }
    int connections() const {
        std::lock_guard lk(mu_);
        return accepted_;
    }
    std::vector<std::string> requests() const {
        std::lock_guard lk(mu_);
        return requests_;
    }
    // Waits until `n` connections have ended (closed by either side).
    bool wait_ended(int n, milliseconds timeout = 3s) {
        std::unique_lock lk(mu_);
        return cv_.wait_for(lk, timeout, [&] { return ended_ >= n; });
    }

  private:
    // False when the test upstream stops.
    bool wait_readable(int fd) {
        pollfd p[2] = {{fd, POLLIN, 0}, {stop_r_.get(), POLLIN, 0}};
        while (poll(p, 2, -1) < 0) {
            if (errno != EINTR) {
                return false;
            }
        }
        return p[1].revents == 0;
    }

    void run() {
        for (int conn = 0;; ++conn) {
            if (!wait_readable(listen_.get())) {
                return;
            }
            UniqueFd fd(accept4(listen_.get(), nullptr, nullptr, SOCK_CLOEXEC));
            if (!fd) {
                continue;
            }
            {
                std::lock_guard lk(mu_);
                ++accepted_;
            }
            serve(fd.get(), conn);
            fd.reset();
            std::lock_guard lk(mu_);
            ++ended_;
            cv_.notify_all();
        }
    }

    static std::size_t content_length(std::string_view head) {
        std::size_t pos = 0;
        while ((pos = head.find("\r\n", pos)) != std::string_view::npos) {
            pos += 2;
            std::string_view rest = head.substr(pos);
            if (rest.size() > 15 && http::iequals(rest.substr(0, 15), "content-length:")) {
                return std::stoul(std::string(rest.substr(15, rest.find("\r\n") - 15)));
            }
        }
        return 0;
    }

    static bool send_all(int fd, std::string_view out) {
        while (!out.empty()) {
            ssize_t n = send(fd, out.data(), out.size(), MSG_NOSIGNAL);
            if (n <= 0) {
                return false;
            }
            out.remove_prefix(static_cast<std::size_t>(n));
        }
        return true;
    }

    void serve(int fd, int conn) {
        std::string buf;
        bool hanging = false;
        int number = 0;
        while (true) {
            std::size_t end;
            while (!hanging && (end = buf.find("\r\n\r\n")) != std::string::npos) {
                std::size_t total =
                    end + 4 + content_length(std::string_view(buf).substr(0, end + 4));
                if (buf.size() < total) {
                    break;
                }
                std::string request = buf.substr(0, total);
                buf.erase(0, total);
                {
                    std::lock_guard lk(mu_);
                    requests_.push_back(request);
                }
                Reply reply = script_(conn, number++, request);
                if (reply.hang) {
                    hanging = true;
                    break;
                }
                if (!send_all(fd, reply.bytes)) {
                    return;
                }
                if (!reply.later.empty()) {
                    std::this_thread::sleep_for(50ms);  // shapes the reply; not a synchronisation
                    if (!send_all(fd, reply.later)) {
                        return;
                    }
                }
                if (reply.close_after) {
                    return;
                }
            }
            if (!wait_readable(fd)) {
                return;
            }
            char chunk[16 * 1024];
            ssize_t n = recv(fd, chunk, sizeof(chunk), 0);
            if (n <= 0) {
                return;
            }
            buf.append(chunk, static_cast<std::size_t>(n));
        }
    }

    Script script_;
    UniqueFd listen_;
    std::uint16_t port_ = 0;
    UniqueFd stop_r_, stop_w_;
    std::thread thread_;
    mutable std::mutex mu_;
    std::condition_variable cv_;
    int accepted_ = 0;
    int ended_ = 0;
    std::vector<std::string> requests_;
};

// Starts "instances" that are whatever listens at 127.0.0.1:port.
class LocalBackend : public Backend, public Backends {
  public:
    class LocalInstance : public Instance {
      public:
        LocalInstance(LocalBackend& b, std::uint16_t port) : b_(b), port_(port) {}
        ~LocalInstance() override {
            std::lock_guard lk(b_.mu_);
            ++b_.destroyed_;
            b_.cv_.notify_all();
        }
        std::string address() const override { return "127.0.0.1"; }
        std::uint16_t port() const override { return port_; }
        std::string describe() const override { return "local test instance"; }
        std::string output_tail() const override { return {}; }

      private:
        LocalBackend& b_;
        std::uint16_t port_;
    };

    std::unique_ptr<Instance> start(const InstanceContext& ctx) override {
        std::lock_guard lk(mu_);
        callback_paths_.push_back(ctx.callback_path);
        cv_.notify_all();
        return std::make_unique<LocalInstance>(*this, port.load());
    }
    Backend* for_spec(const FunctionSpec&) override { return this; }

    // The callback path of the n-th instance started (0-based), "" when none starts in time.
    std::string wait_started(std::size_t n) {
        std::unique_lock lk(mu_);
        if (!cv_.wait_for(lk, 3s, [&] { return callback_paths_.size() > n; })) {
            return {};
        }
        return callback_paths_[n];
    }
    bool wait_destroyed(int n) {
        std::unique_lock lk(mu_);
        return cv_.wait_for(lk, 3s, [&] { return destroyed_ >= n; });
    }

    std::atomic<std::uint16_t> port{0};

  private:
    std::mutex mu_;
    std::condition_variable cv_;
    std::vector<std::string> callback_paths_;
    int destroyed_ = 0;
};

class UpstreamCallTest : public ::testing::Test {
  protected:
    void SetUp() override {
        auto s = std::make_shared<FunctionSpec>();
        s->name = "fn";
        s->concurrent_requests = 1;
        s->max_instances = 1;
        s->queue_timeout = Seconds(3);
        s->boot_timeout = Seconds(3);
        s->sandbox = [] {
            ContainerSpec c;
            c.image = "img";
            return c;
        }();
        spec = s;
        loop.start("upstream-test");
    }

    void TearDown() override {
        loop.stop();
        loop.join();  // drops what the loop still holds (calls and their leases)
        EXPECT_EQ(done_calls.load(), started_calls) << "done() did not run exactly once per call";
        EXPECT_EQ(done_off_loop.load(), 0) << "done() ran off the loop thread";
        pool->shutdown();
    }

    // A lease on the function's instance, reached at 127.0.0.1:port (started and made ready on
    // first use; later leases get the same instance and slot while it lives).
    std::shared_ptr<Lease> lease(std::uint16_t port) {
        backend.port = port;
        auto acquired = std::async(std::launch::async, [this] { return pool->acquire(spec); });
        if (started_ == 0) {
            std::string path = backend.wait_started(started_++);
            EXPECT_FALSE(path.empty()) << "no instance started";
            std::string token = path.substr(std::string("/ready/").size());
            EXPECT_EQ(readiness.signal(token, "127.0.0.1", 3s), Readiness::Outcome::Ready);
        }
        if (acquired.wait_for(5s) != std::future_status::ready) {
            ADD_FAILURE() << "no lease";
            return nullptr;
        }
        return std::shared_ptr<Lease>(acquired.get());
    }

    static UpstreamRequest request(std::string_view method, std::string_view body = {},
                                   std::string_view target = "/fn") {
        UpstreamRequest r;
        r.head =
            std::string(method) + " " + std::string(target) + " HTTP/1.1\r\nHost: 127.0.0.1\r\n";
        if (!body.empty() || method == "POST") {
            r.head += "Content-Length: " + std::to_string(body.size()) + "\r\n";
        }
        r.head += "\r\n";
        r.body = body;
        r.method = std::string(method);
        r.timeout = Seconds(3);
        return r;
    }

    // Runs the call on the loop; the future is set by done().
    std::future<UpstreamReply> start_call(std::shared_ptr<Lease> lease, UpstreamRequest req) {
        auto result = std::make_shared<std::promise<UpstreamReply>>();
        ++started_calls;
        loop.post([this, lease = std::move(lease), req = std::move(req), result]() mutable {
            call_upstream(loop, std::move(lease), std::move(req), [this, result](UpstreamReply r) {
                ++done_calls;
                if (!loop.in_loop_thread()) {
                    ++done_off_loop;
                }
                result->set_value(std::move(r));
            });
        });
        return result->get_future();
    }

    // Runs the call on the loop and waits for done(); a body handed over for streaming is read
    // to its end here (as StreamRelay would) into storage.
    UpstreamReply call(std::shared_ptr<Lease> lease, UpstreamRequest req) {
        auto f = start_call(lease, std::move(req));
        if (f.wait_for(5s) != std::future_status::ready) {
            ADD_FAILURE() << "done() never ran";
            return {};
        }
        auto reply = f.get();
        if (reply.body) {
            read_rest(reply, *lease);
        }
        return reply;
    }

    static void read_rest(UpstreamReply& r, Lease& lease) {
        UpstreamBody& b = *r.body;
        std::string body = b.first;
        int fd = b.connection->fd();
        bool reusable = b.reusable;
        bool done = false;
        char buf[65536];
        while (!done) {
            pollfd p{fd, POLLIN, 0};
            if (poll(&p, 1, 5000) <= 0) {
                ADD_FAILURE() << "the body stalled";
                break;
            }
            ssize_t n = recv(fd, buf, sizeof(buf), 0);
            if (n < 0 && errno == EAGAIN) {
                continue;
            }
            if (n <= 0) {
                done = b.framing == http::BodyFraming::UntilClose;
                EXPECT_TRUE(done) << "the body ended early";
                reusable = false;
                break;
            }
            std::string_view data(buf, static_cast<std::size_t>(n));
            if (b.framing == http::BodyFraming::Length) {
                auto take = std::min<std::uint64_t>(data.size(), b.remaining);
                body.append(data.substr(0, take));
                b.remaining -= take;
                done = b.remaining == 0;
            } else if (b.framing == http::BodyFraming::Chunked) {
                b.decoder.feed(data, body);
                EXPECT_FALSE(b.decoder.failed()) << b.decoder.error();
                done = b.decoder.done() || b.decoder.failed();
            } else {
                body.append(data);
            }
        }
        if (reusable) {
            b.connection->used = true;
        } else {
            lease.drop_cache();
        }
        r.storage = std::move(body);
        r.body_offset = 0;
        r.body_length = r.storage.size();
    }

    static std::string body(const UpstreamReply& r) {
        return r.storage.substr(r.body_offset, r.body_length);
    }

    LocalBackend backend;
    Readiness readiness;
    TimerQueue timers;
    WorkQueue starts{"start", 2};
    WorkQueue stops{"stop", 2};
    std::shared_ptr<Pool> pool =
        std::make_shared<Pool>("fn", PoolServices{backend, readiness, timers, starts, stops});
    std::shared_ptr<const FunctionSpec> spec;
    EventLoop loop;
    std::size_t started_ = 0;  // instances made ready
    int started_calls = 0;
    std::atomic<int> done_calls{0};
    std::atomic<int> done_off_loop{0};
};

const std::string kOk = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

TEST_F(UpstreamCallTest, ContentLengthResponseReachesDoneWithoutHopByHopFields) {
    TestUpstream up([](int, int, const std::string&) {
        return TestUpstream::Reply{
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: keep-alive, X-Hop\r\n"
            "Keep-Alive: timeout=5\r\nX-Hop: secret\r\nX-Custom: kept\r\nContent-Length: 5\r\n\r\n"
            "hello"};
    });
    std::string payload = "payload";
    auto reply = call(lease(up.port()), request("POST", payload));
    EXPECT_EQ(reply.error_status, 0) << reply.error;
    EXPECT_EQ(reply.status, 200);
    EXPECT_EQ(body(reply), "hello");
    EXPECT_EQ(reply.head.rfind("HTTP/1.1 200 OK\r\n", 0), 0u) << reply.head;
    EXPECT_TRUE(reply.head.ends_with("\r\n\r\n"));
    EXPECT_TRUE(contains(reply.head, "\r\nContent-Type: text/plain\r\n")) << reply.head;
    EXPECT_TRUE(contains(reply.head, "\r\nX-Custom: kept\r\n")) << reply.head;
    EXPECT_TRUE(contains(reply.head, "\r\nContent-Length: 5\r\n")) << reply.head;
    for (auto hop : {"Connection", "Keep-Alive", "X-Hop"}) {
        EXPECT_FALSE(has_field(reply.head, hop)) << hop << " forwarded: " << reply.head;
    }
    auto seen = up.requests();
    ASSERT_EQ(seen.size(), 1u);
    EXPECT_EQ(seen[0].rfind("POST /fn HTTP/1.1\r\n", 0), 0u) << seen[0];
    EXPECT_TRUE(seen[0].ends_with("\r\n\r\npayload")) << seen[0];
}

// A function that writes its head and a small body apart (two write()s) is answered whole, in
// one buffered write, rather than through a stream relay; a large body that trails its head
// still streams at once.
TEST_F(UpstreamCallTest, SmallBodyTrailingItsHeadIsBufferedLargeOneStreams) {
    const std::string large = pattern(64 * 1024);
    TestUpstream up([&](int, int number, const std::string&) {
        if (number == 0) {
            return TestUpstream::Reply{"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", false, false,
                                       "hello"};
        }
        return TestUpstream::Reply{"HTTP/1.1 200 OK\r\nContent-Length: 65536\r\n\r\n", false, false,
                                   large};
    });
    auto reply = call(lease(up.port()), request("GET"));
    EXPECT_EQ(reply.error_status, 0) << reply.error;
    EXPECT_EQ(reply.body, nullptr) << "a 5-byte body was streamed";
    EXPECT_EQ(body(reply), "hello");
    reply = call(lease(up.port()), request("GET"));
    EXPECT_NE(reply.body, nullptr) << "a 64 KiB body that trails its head was held back";
    EXPECT_TRUE(body(reply) == large);
}

TEST_F(UpstreamCallTest, ChunkedResponseIsDecoded) {
    const std::string large = pattern(2000);  // one read (see LargeResponsesKeepTheirHead...)
    TestUpstream up([&](int, int, const std::string&) {
        return TestUpstream::Reply{
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Custom: c\r\n\r\n" +
            chunked(large, 300)};
    });
    auto reply = call(lease(up.port()), request("GET"));
    EXPECT_EQ(reply.error_status, 0) << reply.error;
    EXPECT_EQ(reply.status, 200);
    EXPECT_EQ(reply.body_length, large.size());
    EXPECT_TRUE(body(reply) == large);
    EXPECT_TRUE(contains(reply.head, "\r\nContent-Length: 2000\r\n")) << reply.head;
    EXPECT_TRUE(contains(reply.head, "\r\nX-Custom: c\r\n")) << reply.head;
    EXPECT_FALSE(has_field(reply.head, "Transfer-Encoding")) << reply.head;
    // The connection is still in a known state: reused.
    reply = call(lease(up.port()), request("GET"));
    EXPECT_TRUE(body(reply) == large);
    EXPECT_EQ(up.connections(), 1);
}

TEST_F(UpstreamCallTest, ResponseUntilCloseIsReadToTheEndAndTheConnectionNotReused) {
    TestUpstream up([](int, int, const std::string&) {
        return TestUpstream::Reply{
            "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nstreamed until close", true};
    });
    auto reply = call(lease(up.port()), request("GET"));
    EXPECT_EQ(reply.error_status, 0) << reply.error;
    EXPECT_EQ(reply.status, 200);
    EXPECT_EQ(body(reply), "streamed until close");
    EXPECT_EQ(reply.head.rfind("HTTP/1.1 200 OK\r\n", 0), 0u) << reply.head;
    // Its end is not known with the head: it streams, chunked to an HTTP/1.1 client.
    ASSERT_TRUE(reply.body);
    EXPECT_EQ(reply.body->downstream, http::DownstreamFraming::Chunked);
    EXPECT_TRUE(contains(reply.head, "\r\nTransfer-Encoding: chunked\r\n")) << reply.head;
    EXPECT_FALSE(has_field(reply.head, "Connection")) << reply.head;
    reply = call(lease(up.port()), request("GET"));
    EXPECT_EQ(reply.error_status, 0) << reply.error;
    EXPECT_EQ(body(reply), "streamed until close");
    EXPECT_EQ(up.connections(), 2);
}

TEST_F(UpstreamCallTest, LargeResponsesKeepTheirHeadInEveryFraming) {
    // A body that arrives in many reads: the buffer holding the response head grows (and moves)
    // after the head was parsed; the head for the client is made at the end. (It used to be made
    // from the views of the first parse, into freed memory: ASan heap-use-after-free.)
    const std::string large = pattern(300'000);
    const std::string fields = "Content-Type: application/x-test\r\nX-Custom: kept\r\n";
    TestUpstream up([&](int, int, const std::string& req) {
        if (req.starts_with("GET /length ")) {
            return TestUpstream::Reply{"HTTP/1.1 200 Fine\r\n" + fields + "Content-Length: " +
                                       std::to_string(large.size()) + "\r\n\r\n" + large};
        }
        if (req.starts_with("GET /chunked ")) {
            return TestUpstream::Reply{"HTTP/1.1 200 Fine\r\n" + fields +
                                       "Transfer-Encoding: chunked\r\n\r\n" + chunked(large, 1000)};
        }
        return TestUpstream::Reply{"HTTP/1.0 200 Fine\r\n" + fields + "\r\n" + large, true};
    });
    for (auto target : {"/length", "/chunked", "/close"}) {
        SCOPED_TRACE(target);
        auto reply = call(lease(up.port()), request("GET", {}, target));
        EXPECT_EQ(reply.error_status, 0) << reply.error;
        EXPECT_EQ(reply.status, 200);
        EXPECT_EQ(reply.body_length, large.size());
        EXPECT_TRUE(body(reply) == large);
        // Longer than one read: the body streams after the head, whose framing says how.
        ASSERT_TRUE(reply.body);
        std::string framing = std::string_view(target) == "/length"
                                  ? "Content-Length: " + std::to_string(large.size())
                                  : std::string("Transfer-Encoding: chunked");
        std::string expected_head = "HTTP/1.1 200 Fine\r\n" + fields + framing + "\r\n\r\n";
        EXPECT_TRUE(reply.head == expected_head)
            << "head for the client:\n"
            << testing::PrintToString(reply.head) << "\nexpected:\n"
            << testing::PrintToString(expected_head);
    }
}

TEST_F(UpstreamCallTest, KeepAliveConnectionIsReusedForTheNextCall) {
    TestUpstream up([](int conn, int number, const std::string&) {
        std::string text = std::to_string(conn) + "/" + std::to_string(number);
        return TestUpstream::Reply{"HTTP/1.1 200 OK\r\nContent-Length: " +
                                   std::to_string(text.size()) + "\r\n\r\n" + text};
    });
    auto reply = call(lease(up.port()), request("GET"));
    EXPECT_EQ(body(reply), "0/0");
    EXPECT_FALSE(has_field(reply.head, "Connection")) << reply.head;
    auto second = request("GET");
    second.client_keep_alive = false;  // the client's connection ends after this response
    reply = call(lease(up.port()), std::move(second));
    EXPECT_EQ(reply.error_status, 0) << reply.error;
    EXPECT_EQ(body(reply), "0/1");
    EXPECT_TRUE(contains(reply.head, "\r\nConnection: close\r\n")) << reply.head;
    EXPECT_EQ(up.connections(), 1);
    EXPECT_EQ(up.requests().size(), 2u);
}

TEST_F(UpstreamCallTest, HeadResponseHasNoBodyAndKeepsTheConnection) {
    TestUpstream up([](int, int, const std::string& req) {
        if (req.starts_with("HEAD")) {
            return TestUpstream::Reply{"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n"};
        }
        return TestUpstream::Reply{kOk};
    });
    auto reply = call(lease(up.port()), request("HEAD"));
    EXPECT_EQ(reply.error_status, 0) << reply.error;
    EXPECT_EQ(reply.body_length, 0u);
    EXPECT_TRUE(contains(reply.head, "\r\nContent-Length: 1234\r\n")) << reply.head;
    reply = call(lease(up.port()), request("GET"));
    EXPECT_EQ(body(reply), "ok");
    EXPECT_EQ(up.connections(), 1);
}

TEST_F(UpstreamCallTest, IdleConnectionTheInstanceClosedIsRetriedOnANewOne) {
    TestUpstream up([](int conn, int, const std::string&) {
        // The first connection is closed right after its response, which said keep-alive.
        return TestUpstream::Reply{
            "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n" + std::to_string(conn), conn == 0};
    });
    auto reply = call(lease(up.port()), request("GET"));
    EXPECT_EQ(body(reply), "0");
    ASSERT_TRUE(up.wait_ended(1));
    std::string payload = "sent twice";
    reply = call(lease(up.port()), request("POST", payload));
    EXPECT_EQ(reply.error_status, 0) << reply.error;
    EXPECT_EQ(body(reply), "1");
    EXPECT_EQ(up.connections(), 2);
    auto seen = up.requests();
    ASSERT_EQ(seen.size(), 2u);
    EXPECT_TRUE(seen[1].ends_with("\r\n\r\nsent twice")) << seen[1];
}

TEST_F(UpstreamCallTest, RetryHappensOnceAndNeverOnAFreshConnection) {
    TestUpstream up([](int conn, int, const std::string&) {
        if (conn == 0) {
            return TestUpstream::Reply{kOk, true};  // closes the idle connection
        }
        return TestUpstream::Reply{"", true};  // closes without an answer
    });
    auto reply = call(lease(up.port()), request("GET"));
    EXPECT_EQ(body(reply), "ok");
    ASSERT_TRUE(up.wait_ended(1));
    // Reused connection: closed; the retry's fresh one: closed without an answer. No third.
    reply = call(lease(up.port()), request("GET"));
    EXPECT_EQ(reply.error_status, 502);
    EXPECT_TRUE(contains(reply.error, "closed the connection without a response")) << reply.error;
    EXPECT_EQ(up.connections(), 2);
    // A fresh connection that fails is not retried.
    reply = call(lease(up.port()), request("GET"));
    EXPECT_EQ(reply.error_status, 502);
    EXPECT_EQ(up.connections(), 3);
    // Neither marks the instance broken.
    auto snap = pool->snapshot();
    ASSERT_EQ(snap.instances.size(), 1u);
    EXPECT_EQ(snap.instances[0].state, InstanceState::Ready);
}

TEST_F(UpstreamCallTest, RefusedConnectionGives502AndRetiresTheInstance) {
    std::uint16_t port;
    {
        UniqueFd closed(bind_listener("127.0.0.1", 0));
        port = local_port(closed.get());
    }  // nothing listens there any more
    auto reply = call(lease(port), request("GET"));
    EXPECT_EQ(reply.error_status, 502);
    EXPECT_TRUE(contains(reply.error, "Connection refused")) << reply.error;
    EXPECT_TRUE(pool->snapshot().instances.empty()) << "the broken instance still serves";
    EXPECT_TRUE(backend.wait_destroyed(1)) << "the broken instance was not stopped";
}

TEST_F(UpstreamCallTest, NoAnswerWithinTheTimeoutGives504) {
    TestUpstream up([](int, int, const std::string&) {
        TestUpstream::Reply r;
        r.hang = true;
        return r;
    });
    auto req = request("GET");
    req.timeout = Seconds(0.3);
    auto start = Clock::now();
    auto reply = call(lease(up.port()), std::move(req));
    EXPECT_GE(Clock::now() - start, 250ms);
    EXPECT_EQ(reply.error_status, 504);
    EXPECT_TRUE(contains(reply.error, "request-timeout")) << reply.error;
    EXPECT_TRUE(up.wait_ended(1)) << "the connection in an unknown state was kept";
    auto snap = pool->snapshot();
    ASSERT_EQ(snap.instances.size(), 1u) << "a slow instance is not a broken one";
    EXPECT_EQ(snap.instances[0].state, InstanceState::Ready);
}

TEST_F(UpstreamCallTest, InstanceStoppedDuringACallGives502WithoutRetry) {
    auto received = std::make_shared<std::promise<void>>();
    TestUpstream up([received](int, int number, const std::string&) {
        if (number == 0) {
            return TestUpstream::Reply{kOk};
        }
        received->set_value();
        TestUpstream::Reply r;
        r.hang = true;
        return r;
    });
    auto reply = call(lease(up.port()), request("GET"));
    EXPECT_EQ(body(reply), "ok");
    auto l = lease(up.port());
    std::string id = l->instance_id();
    auto req = request("GET");
    req.timeout = Seconds(3);
    auto pending = start_call(std::move(l), std::move(req));
    ASSERT_EQ(received->get_future().wait_for(3s), std::future_status::ready);
    auto start = Clock::now();
    ASSERT_TRUE(pool->stop_instance(id, "stopped by the test"));
    ASSERT_EQ(pending.wait_for(2s), std::future_status::ready) << "waited for request-timeout";
    reply = pending.get();
    EXPECT_LT(Clock::now() - start, 2s);
    EXPECT_EQ(reply.error_status, 502);
    EXPECT_TRUE(contains(reply.error, "stopped by the test")) << reply.error;
    EXPECT_EQ(up.connections(), 1) << "a request to a stopped instance was retried";
}

TEST_F(UpstreamCallTest, InterimResponsesAreSkipped) {
    TestUpstream up([](int, int, const std::string&) {
        return TestUpstream::Reply{
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n"
            "HTTP/1.1 201 Created\r\nContent-Length: 7\r\n\r\ncreated"};
    });
    std::string payload = "new";
    auto reply = call(lease(up.port()), request("POST", payload));
    EXPECT_EQ(reply.error_status, 0) << reply.error;
    EXPECT_EQ(reply.status, 201);
    EXPECT_EQ(body(reply), "created");
    EXPECT_EQ(reply.head.rfind("HTTP/1.1 201 Created\r\n", 0), 0u) << reply.head;
    EXPECT_FALSE(has_field(reply.head, "Link")) << reply.head;
}

// A 101 to an upgrade request ends the call with the connection handed over (and the bytes the
// instance sent after the head); to any other request it is invalid.
TEST_F(UpstreamCallTest, SwitchingProtocolsHandsTheConnectionOverOnlyForAnUpgrade) {
    const std::string switched =
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Accept: abc\r\n\r\n";
    TestUpstream up([&](int conn, int, const std::string&) {
        return TestUpstream::Reply{switched + (conn == 0 ? "first frame" : kOk), false, false};
    });
    auto l = lease(up.port());
    UpstreamRequest req = request("GET");
    req.upgrade = true;
    auto f = start_call(l, std::move(req));
    ASSERT_EQ(f.wait_for(5s), std::future_status::ready);
    auto reply = f.get();
    EXPECT_EQ(reply.error_status, 0) << reply.error;
    EXPECT_EQ(reply.status, 101);
    EXPECT_FALSE(reply.body);
    ASSERT_TRUE(reply.tunnel);
    EXPECT_EQ(reply.head,
              "HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: abc\r\n"
              "Connection: Upgrade\r\nUpgrade: websocket\r\n\r\n");
    ASSERT_NE(reply.tunnel->connection, nullptr);
    std::string first = reply.tunnel->first;
    int fd = reply.tunnel->connection->fd();
    while (first.size() < 11) {  // the rest of what the instance wrote, from the same socket
        pollfd p{fd, POLLIN, 0};
        ASSERT_GT(poll(&p, 1, 5000), 0);
        char buf[64];
        ssize_t n = recv(fd, buf, sizeof(buf), 0);
        ASSERT_GT(n, 0);
        first.append(buf, static_cast<std::size_t>(n));
    }
    EXPECT_EQ(first, "first frame");
    l->drop_cache();
    l.reset();

    // The same 101 to a request that did not ask for it: the instance is broken (502).
    auto reply2 = call(lease(up.port()), request("GET"));
    EXPECT_EQ(reply2.error_status, 502);
    EXPECT_TRUE(contains(reply2.error, "unexpected 101")) << reply2.error;
    EXPECT_FALSE(reply2.tunnel);
}

TEST_F(UpstreamCallTest, InvalidResponseGives502) {
    TestUpstream up([](int, int, const std::string&) {
        return TestUpstream::Reply{"this is not http\r\n\r\n"};
    });
    auto reply = call(lease(up.port()), request("GET"));
    EXPECT_EQ(reply.error_status, 502);
    EXPECT_TRUE(contains(reply.error, "invalid response")) << reply.error;
    EXPECT_TRUE(up.wait_ended(1)) << "a connection in an unknown state was kept";
}

}  // namespace
}  // namespace unifaas
