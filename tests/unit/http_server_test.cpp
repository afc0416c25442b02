// HttpServer (and the EventLoop under it) over real 127.0.0.1 sockets: the test writes raw request
// bytes and reads raw responses, so framing, keep-alive, limits and timeouts are really checked.
#include "gateway/http_server.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <linux/sockios.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sched.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <deque>
#include <future>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "gateway/listening_server.h"
#include "http/message.h"
#include "http_bodies.h"
#include "util/unique_fd.h"

namespace unifaas {
namespace {

using test::chunked;
using test::pattern;

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

// Waits for a state no event announces (a counter); an event is awaited directly elsewhere.
template <typename Pred>
bool eventually(Pred pred, milliseconds timeout = 3s) {
    auto deadline = Clock::now() + timeout;
    while (!pred()) {
        if (Clock::now() >= deadline) {
            return false;
        }
        std::this_thread::sleep_for(2ms);
    }
    return true;
}

milliseconds since(Clock::time_point start) {
    return std::chrono::duration_cast<milliseconds>(Clock::now() - start);
}

// A one-shot event another thread fires.
class Signal {
  public:
    void fire() {
        std::lock_guard lk(mu_);
        fired_ = true;
        cv_.notify_all();
    }
    bool wait(milliseconds timeout) {
        std::unique_lock lk(mu_);
        return cv_.wait_for(lk, timeout, [&] { return fired_; });
    }

  private:
    std::mutex mu_;
    std::condition_variable cv_;
    bool fired_ = false;
};

struct Response {
    int status = 0;
    std::string head;  // status line and header fields through the blank line
    std::string body;

    // The value of the first field named `name` (ASCII case-insensitive).
    std::optional<std::string> header(std::string_view name) const {
        std::size_t pos = head.find("\r\n") + 2;
        while (pos < head.size()) {
            std::size_t end = head.find("\r\n", pos);
            std::string_view line(head.data() + pos, end - pos);
            std::size_t colon = line.find(':');
            if (colon != std::string_view::npos && http::iequals(line.substr(0, colon), name)) {
                std::string_view value = line.substr(colon + 1);
                while (!value.empty() && value.front() == ' ') {
                    value.remove_prefix(1);
                }
                return std::string(value);
            }
            pos = end + 2;
        }
        return std::nullopt;
    }
};

// A blocking client socket on 127.0.0.1 that reads with poll() deadlines.
class RawClient {
  public:
    enum class Read { Data, Timeout, Closed };

    explicit RawClient(std::uint16_t port) {
        fd_.reset(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
        sockaddr_in addr{};
        addr.sin_family = AF_INET;
        addr.sin_port = htons(port);
        addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        connected_ =
            fd_ && connect(fd_.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
    }

    bool connected() const { return connected_; }
    int fd() const { return fd_.get(); }
    std::string& buffer() { return buf_; }

    std::uint16_t local_port() const {
        sockaddr_in addr{};
        socklen_t len = sizeof(addr);
        getsockname(fd_.get(), reinterpret_cast<sockaddr*>(&addr), &len);
        return ntohs(addr.sin_port);
    }

    bool send_all(std::string_view data) {
        while (!data.empty()) {
            ssize_t n = send(fd_.get(), data.data(), data.size(), MSG_NOSIGNAL);
            if (n < 0 && errno == EINTR) {
                continue;
            }
            if (n <= 0) {
                return false;
            }
            data.remove_prefix(static_cast<std::size_t>(n));
        }
        return true;
    }

    // Appends what arrives before `deadline` to the buffer.
    Read read_more(Clock::time_point deadline) {
        while (true) {
            if (closed_) {
                return Read::Closed;
            }
            auto left = std::chrono::ceil<milliseconds>(deadline - Clock::now()).count();
            pollfd p{fd_.get(), POLLIN, 0};
            int r = poll(&p, 1, left > 0 ? static_cast<int>(left) : 0);
            if (r < 0 && errno == EINTR) {
                continue;
            }
            if (r <= 0) {
                return Read::Timeout;
            }
            char chunk[64 * 1024];
            ssize_t n = recv(fd_.get(), chunk, sizeof(chunk), MSG_DONTWAIT);
            if (n > 0) {
                buf_.append(chunk, static_cast<std::size_t>(n));
                return Read::Data;
            }
            if (n < 0 && (errno == EINTR || errno == EAGAIN)) {
                continue;
            }
            closed_ = true;  // EOF, or reset
            reset_ = n < 0;
            return Read::Closed;
        }
    }

    // The next response: a 1xx head alone, otherwise the head and a body framed by
    // Content-Length or, without one, by the end of the connection. nullopt when it does not
    // arrive whole within `timeout`.
    std::optional<Response> read_response(milliseconds timeout = 3s) {
        auto deadline = Clock::now() + timeout;
        std::size_t end;
        while ((end = buf_.find("\r\n\r\n")) == std::string::npos) {
            if (read_more(deadline) != Read::Data) {
                return std::nullopt;
            }
        }
        Response r;
        r.head = buf_.substr(0, end + 4);
        if (r.head.rfind("HTTP/1.1 ", 0) != 0 || r.head.size() < 12) {
            ADD_FAILURE() << "not an HTTP/1.1 status line: " << r.head;
            return std::nullopt;
        }
        r.status = std::stoi(r.head.substr(9, 3));
        if (r.status < 200) {
            buf_.erase(0, end + 4);
            return r;
        }
        if (auto cl = r.header("Content-Length")) {
            std::size_t length = std::stoul(*cl);
            while (buf_.size() < end + 4 + length) {
                if (read_more(deadline) != Read::Data) {
                    return std::nullopt;
                }
            }
            r.body = buf_.substr(end + 4, length);
            buf_.erase(0, end + 4 + length);
            return r;
        }
        while (read_more(deadline) == Read::Data) {
        }
        if (!closed_) {
            return std::nullopt;
        }
        r.body = buf_.substr(end + 4);
        buf_.clear();
        return r;
    }

    // True when the server ends the connection (EOF or reset) within `timeout`; bytes that
    // arrive meanwhile stay in the buffer.
    bool wait_closed(milliseconds timeout = 3s) {
        auto deadline = Clock::now() + timeout;
        while (true) {
            switch (read_more(deadline)) {
                case Read::Closed:
                    return true;
                case Read::Timeout:
                    return false;
                case Read::Data:
                    break;
            }
        }
    }

    // True when nothing arrives (and the connection stays open) for `duration`.
    bool silent_for(milliseconds duration) {
        pollfd p{fd_.get(), POLLIN, 0};
        return poll(&p, 1, static_cast<int>(duration.count())) == 0;
    }

    // True once the peer's kernel has taken (acknowledged) everything sent.
    bool wait_sent(milliseconds timeout = 2s) {
        return eventually(
            [&] {
                int unsent = -1;
                return ioctl(fd_.get(), SIOCOUTQ, &unsent) == 0 && unsent == 0;
            },
            timeout);
    }

    // Closes with a reset (SO_LINGER 0) instead of a FIN.
    void abort() {
        linger l{1, 0};
        setsockopt(fd_.get(), SOL_SOCKET, SO_LINGER, &l, sizeof(l));
        fd_.reset();
    }

    bool reset() const { return reset_; }

  private:
    UniqueFd fd_;
    bool connected_ = false;
    bool closed_ = false;
    bool reset_ = false;
    std::string buf_;
};

std::string get(std::string_view target, std::string_view extra = {}) {
    return "GET " + std::string(target) + " HTTP/1.1\r\nHost: test\r\n" + std::string(extra) +
           "\r\n";
}

std::string post(std::string_view target, std::string_view body) {
    return "POST " + std::string(target) +
           " HTTP/1.1\r\nHost: test\r\nContent-Length: " + std::to_string(body.size()) +
           "\r\n\r\n" + std::string(body);
}

// "METHOD target body": what the echo handler answers.
std::string describe(HttpExchange& ex) {
    return std::string(ex.request().method) + " " + std::string(ex.request().target) + " " +
           std::string(ex.body());
}

// Exchanges the handler hands over to the test thread, which answers them later.
class ExchangeQueue {
  public:
    void push(std::shared_ptr<HttpExchange> ex) {
        std::lock_guard lk(mu_);
        queue_.push_back(std::move(ex));
        cv_.notify_all();
    }
    std::shared_ptr<HttpExchange> pop(milliseconds timeout = 3s) {
        std::unique_lock lk(mu_);
        if (!cv_.wait_for(lk, timeout, [&] { return !queue_.empty(); })) {
            return nullptr;
        }
        auto ex = std::move(queue_.front());
        queue_.pop_front();
        return ex;
    }
    void clear() {
        std::lock_guard lk(mu_);
        queue_.clear();
    }

  private:
    std::mutex mu_;
    std::condition_variable cv_;
    std::deque<std::shared_ptr<HttpExchange>> queue_;
};

// Answers `ex` on its loop, as a handler working on another thread would.
void respond_later(const std::shared_ptr<HttpExchange>& ex, int status, std::string body,
                   std::shared_ptr<void> hold = {}) {
    ex->loop().post([ex, status, body = std::move(body), hold = std::move(hold)] {
        ex->respond_simple(status, "text/plain", body, {}, hold);
    });
}

class HttpServerTest : public ::testing::Test {
  protected:
    static HttpServer::Options options() {
        HttpServer::Options o;
        o.threads = 2;
        o.io_timeout = 2s;
        o.idle_timeout = 5s;
        o.linger = 2s;
        return o;
    }

    void start(HttpServer::Options o, HttpServer::RequestHandler handler) {
        server = std::make_unique<HttpServer>(
            o, std::move(handler), [](std::string_view target, int status, std::string_view what) {
                return "error " + std::to_string(status) + " for [" + std::string(target) +
                       "]: " + std::string(what);
            });
        int fd = bind_listener("127.0.0.1", 0);
        port = local_port(fd);
        server->serve(fd);
    }
    // Every request answered at once with describe().
    void start_echo(HttpServer::Options o = options()) {
        start(o, [](std::shared_ptr<HttpExchange> ex) {
            ex->respond_simple(200, "text/plain", describe(*ex));
        });
    }
    // Every request handed to `queue`.
    void start_queued(HttpServer::Options o = options()) {
        start(o, [this](std::shared_ptr<HttpExchange> ex) { queue.push(std::move(ex)); });
    }

    void TearDown() override {
        queue.clear();  // exchanges must not outlive the server
        server.reset();
    }

    std::unique_ptr<HttpServer> server;
    std::uint16_t port = 0;
    ExchangeQueue queue;
};

// ---- EventLoop --------------------------------------------------------------------------------

TEST(HttpServerEventLoop, PostRunsTasksInOrderOnTheLoopThread) {
    EventLoop loop;
    loop.start("test-loop");
    std::vector<int> order;  // loop thread only
    std::promise<bool> all_on_loop;
    std::atomic<bool> on_loop{true};
    std::thread other([&] {
        for (int i = 0; i < 100; ++i) {
            loop.post([&, i] {
                on_loop = on_loop && loop.in_loop_thread();
                order.push_back(i);
            });
        }
        loop.post([&] { all_on_loop.set_value(on_loop.load()); });
    });
    other.join();
    auto done = all_on_loop.get_future();
    ASSERT_EQ(done.wait_for(3s), std::future_status::ready);
    EXPECT_TRUE(done.get());
    EXPECT_FALSE(loop.in_loop_thread());
    ASSERT_EQ(order.size(), 100u);
    for (int i = 0; i < 100; ++i) {
        EXPECT_EQ(order[i], i);
    }
}

TEST(HttpServerEventLoop, TimersFireInDeadlineOrderAndCancelledOnesNever) {
    EventLoop loop;
    loop.start("test-loop");
    std::string fired;  // loop thread only
    std::promise<std::string> result;
    auto start = Clock::now();
    loop.post([&] {
        auto now = EventLoop::Clock::now();
        loop.add_timer(now + 40ms, [&] { fired += "B"; });
        loop.add_timer(now + 10ms, [&] { fired += "A"; });
        auto cancelled = loop.add_timer(now + 20ms, [&] { fired += "X"; });
        loop.cancel_timer(cancelled);
        EXPECT_EQ(cancelled, loop.no_timer());
        loop.cancel_timer(cancelled);  // no-op
        loop.add_timer(now + 60ms, [&] { result.set_value(fired); });
    });
    auto f = result.get_future();
    ASSERT_EQ(f.wait_for(3s), std::future_status::ready);
    EXPECT_EQ(f.get(), "AB");
    EXPECT_GE(since(start), 60ms);
}

TEST(HttpServerEventLoop, ReleaseLaterKeepsAnObjectUntilTheBatchEnds) {
    EventLoop loop;
    loop.start("test-loop");
    std::promise<std::pair<bool, bool>> result;
    loop.post([&] {
        auto object = std::make_shared<int>(1);
        std::weak_ptr<int> weak = object;
        loop.release_later(std::move(object));
        bool alive_in_batch = !weak.expired();
        loop.post([&, weak, alive_in_batch] {
            result.set_value({alive_in_batch, !weak.expired()});
        });
    });
    auto f = result.get_future();
    ASSERT_EQ(f.wait_for(3s), std::future_status::ready);
    auto [in_batch, after] = f.get();
    EXPECT_TRUE(in_batch);
    EXPECT_FALSE(after);
}

// A descriptor added with add_first() is served before the others of its batch, even when it
// became ready after them: what it signals is known to every handler of that batch.
TEST(HttpServerEventLoop, FirstHandlerRunsBeforeTheRestOfItsBatch) {
    struct Recorder : EventLoop::Handler {
        Recorder(char name, std::string& log, int fd) : name(name), log(log), fd(fd) {}
        void on_events(std::uint32_t) override {
            std::uint64_t value = 0;
            (void)!read(fd, &value, sizeof(value));
            log += name;
            if (log.size() == 2) {
                done.set_value(log);
            }
        }
        char name;
        std::string& log;
        int fd;
        std::promise<std::string> done;
    };
    UniqueFd plain(eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
    UniqueFd first(eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
    std::string log;  // loop thread only
    Recorder plain_handler('P', log, plain.get());
    Recorder first_handler('F', log, first.get());
    auto result = plain_handler.done.get_future();
    EventLoop loop;
    loop.start("test-loop");
    loop.post([&] {
        loop.add(plain.get(), EPOLLIN, &plain_handler);
        loop.add_first(first.get(), &first_handler);
        std::uint64_t one = 1;
        // Both become ready while the loop is busy here: one batch, the plain one first in it.
        EXPECT_EQ(write(plain.get(), &one, sizeof(one)), 8);
        EXPECT_EQ(write(first.get(), &one, sizeof(one)), 8);
    });
    ASSERT_EQ(result.wait_for(3s), std::future_status::ready)
        << "the plain handler did not run last";
    EXPECT_EQ(result.get(), "FP");
    loop.stop();
    loop.join();
}

// ---- HttpServer: requests and responses --------------------------------------------------------

TEST_F(HttpServerTest, SimpleGetGetsStatusLineContentLengthAndBody) {
    std::promise<std::string> address;
    start(options(), [&](std::shared_ptr<HttpExchange> ex) {
        address.set_value(ex->client_address());
        ex->respond_simple(200, "text/plain", describe(*ex));
    });
    RawClient c(port);
    ASSERT_TRUE(c.connected());
    ASSERT_TRUE(c.send_all(get("/hello?x=1")));
    auto r = c.read_response();
    ASSERT_TRUE(r);
    EXPECT_EQ(r->head.substr(0, r->head.find("\r\n")), "HTTP/1.1 200 OK");
    EXPECT_EQ(r->header("Content-Length"), "15");
    EXPECT_EQ(r->header("Content-Type"), "text/plain");
    EXPECT_EQ(r->header("Connection"), std::nullopt);
    EXPECT_EQ(r->body, "GET /hello?x=1 ");
    EXPECT_TRUE(c.buffer().empty()) << "bytes after the body: " << c.buffer();
    EXPECT_EQ(address.get_future().get(), "127.0.0.1");
}

TEST_F(HttpServerTest, KeepAliveServesTwoRequestsOnOneConnection) {
    start_echo();
    RawClient c(port);
    ASSERT_TRUE(c.send_all(get("/one")));
    auto first = c.read_response();
    ASSERT_TRUE(first);
    EXPECT_EQ(first->body, "GET /one ");
    EXPECT_EQ(first->header("Connection"), std::nullopt);
    ASSERT_TRUE(c.send_all(post("/two", "payload")));
    auto second = c.read_response();
    ASSERT_TRUE(second);
    EXPECT_EQ(second->body, "POST /two payload");
    EXPECT_EQ(server->connections(), 1u);
}

TEST_F(HttpServerTest, PipelinedRequestsAreAnsweredOneAtATimeInOrder) {
    start_queued();
    RawClient c(port);
    // One write: a GET, a POST with a body, a GET.
    ASSERT_TRUE(c.send_all(get("/a") + post("/b", "xyz") + get("/c")));
    for (std::string expected : {"GET /a ", "POST /b xyz", "GET /c "}) {
        auto ex = queue.pop();
        ASSERT_TRUE(ex);
        EXPECT_EQ(describe(*ex), expected);
        EXPECT_EQ(queue.pop(50ms), nullptr) << "next request dispatched before this response";
        respond_later(ex, 200, "answer to " + expected);
    }
    for (std::string expected : {"GET /a ", "POST /b xyz", "GET /c "}) {
        auto r = c.read_response();
        ASSERT_TRUE(r);
        EXPECT_EQ(r->body, "answer to " + expected);
    }
}

TEST_F(HttpServerTest, Http10WithoutKeepAliveGetsConnectionCloseAndIsClosed) {
    start_echo();
    RawClient c(port);
    ASSERT_TRUE(c.send_all("GET /old HTTP/1.0\r\n\r\n"));
    auto r = c.read_response();
    ASSERT_TRUE(r);
    EXPECT_EQ(r->body, "GET /old ");
    EXPECT_EQ(r->header("Connection"), "close");
    EXPECT_TRUE(c.wait_closed());
    EXPECT_TRUE(c.buffer().empty());
}

TEST_F(HttpServerTest, Http10WithKeepAliveAndHttp11WithCloseAreHonoured) {
    start_echo();
    RawClient c10(port);
    ASSERT_TRUE(c10.send_all("GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"));
    auto r = c10.read_response();
    ASSERT_TRUE(r);
    EXPECT_EQ(r->header("Connection"), std::nullopt);
    ASSERT_TRUE(c10.send_all("GET /b HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"));
    r = c10.read_response();
    ASSERT_TRUE(r);
    EXPECT_EQ(r->body, "GET /b ");

    RawClient c11(port);
    ASSERT_TRUE(c11.send_all(get("/c", "Connection: close\r\n")));
    r = c11.read_response();
    ASSERT_TRUE(r);
    EXPECT_EQ(r->header("Connection"), "close");
    EXPECT_TRUE(c11.wait_closed());
}

TEST_F(HttpServerTest, HalfClosedClientGetsItsResponseThenTheConnectionEnds) {
    auto o = options();
    o.linger = 5s;  // ending the connection must not wait for it: both sides are done
    start_echo(o);
    RawClient c(port);
    ASSERT_TRUE(c.send_all(get("/last")));
    shutdown(c.fd(), SHUT_WR);
    auto r = c.read_response();
    ASSERT_TRUE(r);
    EXPECT_EQ(r->body, "GET /last ");
    EXPECT_TRUE(c.wait_closed());
    EXPECT_TRUE(eventually([&] { return server->connections() == 0; }, 1s));
}

TEST_F(HttpServerTest, HandlerAnswersLaterFromAnotherThread) {
    start_queued();
    RawClient c(port);
    ASSERT_TRUE(c.send_all(get("/later")));
    auto ex = queue.pop();
    ASSERT_TRUE(ex);
    EXPECT_TRUE(c.silent_for(50ms)) << "answered before the handler responded";
    std::promise<bool> on_loop;
    std::thread worker([&] {
        ex->loop().post([ex, &on_loop] {
            on_loop.set_value(ex->loop().in_loop_thread());
            ex->respond_simple(202, "text/plain", "done later");
        });
    });
    worker.join();
    auto r = c.read_response();
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 202);
    EXPECT_EQ(r->body, "done later");
    EXPECT_TRUE(on_loop.get_future().get());
}

TEST_F(HttpServerTest, ContentLengthBodyReachesTheHandler) {
    start_echo();
    RawClient c(port);
    std::string request = post("/body", "hello world");
    // In two writes, split inside the body.
    ASSERT_TRUE(c.send_all(request.substr(0, request.size() - 4)));
    ASSERT_TRUE(c.send_all(request.substr(request.size() - 4)));
    auto r = c.read_response();
    ASSERT_TRUE(r);
    EXPECT_EQ(r->body, "POST /body hello world");
}

TEST_F(HttpServerTest, LargeContentLengthBodyReachesTheHandler) {
    start(options(), [](std::shared_ptr<HttpExchange> ex) {
        bool same = ex->body() == pattern(300'000);
        ex->respond_simple(200, "text/plain",
                           std::to_string(ex->body().size()) + (same ? " same" : " differs"));
    });
    RawClient c(port);
    std::thread sender([&] { c.send_all(post("/big", pattern(300'000))); });
    auto r = c.read_response(5s);
    sender.join();
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 200);
    EXPECT_EQ(r->body, "300000 same");
}

TEST_F(HttpServerTest, ChunkedBodyReachesTheHandlerAndTheNextRequestFollows) {
    start_echo();
    RawClient c(port);
    std::string head = "POST /chunked HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n";
    ASSERT_TRUE(c.send_all(head + "5\r\nhel"));
    ASSERT_TRUE(c.send_all("lo\r\n6\r\n world\r\n0\r\n\r\n" + get("/next")));
    auto r = c.read_response();
    ASSERT_TRUE(r);
    EXPECT_EQ(r->body, "POST /chunked hello world");
    r = c.read_response();
    ASSERT_TRUE(r);
    EXPECT_EQ(r->body, "GET /next ");
}

TEST_F(HttpServerTest, LargeBodiesAlreadyBufferedAreReadWhole) {
    // The next request of a connection is read only after the response to the current one: a
    // whole request (head and a body larger than the read-ahead) can already wait in the socket
    // with no more data, and so no further epoll edge, to come. Length- and chunk-framed.
    start_queued();
    RawClient c(port);
    std::string body = pattern(80'000);
    std::string head = "POST /chunked HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n";
    ASSERT_TRUE(c.send_all(get("/first")));
    auto ex = queue.pop();
    ASSERT_TRUE(ex);
    ASSERT_TRUE(c.send_all(post("/length", body)));
    ASSERT_TRUE(c.wait_sent()) << "the request does not fit the server's receive buffer";
    respond_later(ex, 200, "first");
    auto r = c.read_response();
    ASSERT_TRUE(r);
    EXPECT_EQ(r->body, "first");
    ex = queue.pop();
    ASSERT_TRUE(ex) << "a body already buffered was not read";
    EXPECT_EQ(ex->body().size(), body.size());
    EXPECT_TRUE(ex->body() == body);
    ASSERT_TRUE(c.send_all(head + chunked(body, 4096)));
    ASSERT_TRUE(c.wait_sent()) << "the request does not fit the server's receive buffer";
    respond_later(ex, 200, "length");
    r = c.read_response();
    ASSERT_TRUE(r);
    EXPECT_EQ(r->body, "length");
    ex = queue.pop();
    ASSERT_TRUE(ex) << "a chunked body already buffered was not read";
    EXPECT_TRUE(ex->body() == body);
    respond_later(ex, 200, "chunked");
    r = c.read_response();
    ASSERT_TRUE(r);
    EXPECT_EQ(r->body, "chunked");
}

TEST_F(HttpServerTest, ExpectContinueGets100BeforeTheBodyIsSent) {
    start_echo();
    RawClient c(port);
    ASSERT_TRUE(c.send_all(
        "POST /c HTTP/1.1\r\nHost: test\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n"));
    auto interim = c.read_response();
    ASSERT_TRUE(interim) << "no 100 Continue for a client waiting for it";
    EXPECT_EQ(interim->head, "HTTP/1.1 100 Continue\r\n\r\n");
    EXPECT_TRUE(c.buffer().empty());
    ASSERT_TRUE(c.send_all("hello"));
    auto r = c.read_response();
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 200);
    EXPECT_EQ(r->body, "POST /c hello");
}

TEST_F(HttpServerTest, ExpectContinueWithABodyOverTheLimitGets413Instead) {
    auto o = options();
    o.max_body_bytes = 1000;
    start_echo(o);
    RawClient c(port);
    ASSERT_TRUE(c.send_all(
        "POST /c HTTP/1.1\r\nHost: test\r\nExpect: 100-continue\r\nContent-Length: 1001\r\n\r\n"));
    auto r = c.read_response();
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 413);
    EXPECT_TRUE(c.wait_closed());
}

// ---- HttpServer: errors it answers by itself ---------------------------------------------------

TEST_F(HttpServerTest, BodyOverTheLimitGets413AndALingeringClose) {
    auto o = options();
    o.max_body_bytes = 1024;
    start_echo(o);
    RawClient c(port);
    // The client sends the whole body anyway: closing with it unread would reset the connection
    // and could destroy the 413 before the client reads it.
    std::string request = post("/upload", pattern(1'000'000));
    std::promise<bool> sent;
    std::thread sender([&] { sent.set_value(c.send_all(request)); });
    auto r = c.read_response();
    bool closed = c.wait_closed();
    sender.join();
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 413);
    EXPECT_EQ(r->head.substr(0, r->head.find("\r\n")), "HTTP/1.1 413 Content Too Large");
    EXPECT_EQ(r->body, "error 413 for [/upload]: request body too large");
    EXPECT_EQ(r->header("Connection"), "close");
    EXPECT_TRUE(closed);
    EXPECT_FALSE(c.reset()) << "closed with a reset, not a FIN";
    EXPECT_TRUE(sent.get_future().get()) << "the server did not read the rest of the body";
    c.abort();
    EXPECT_TRUE(eventually([&] { return server->connections() == 0; }));
}

TEST_F(HttpServerTest, ChunkedBodyOverTheLimitGets413) {
    auto o = options();
    o.max_body_bytes = 1024;
    start_echo(o);
    RawClient c(port);
    ASSERT_TRUE(
        c.send_all("POST /chunks HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n" +
                   chunked(pattern(2000), 500)));
    auto r = c.read_response();
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 413);
    EXPECT_EQ(r->body, "error 413 for [/chunks]: request body too large");
    EXPECT_TRUE(c.wait_closed());
}

TEST_F(HttpServerTest, HeadOverTheLimitGets431) {
    auto o = options();
    o.max_head_bytes = 1024;
    start_echo(o);
    RawClient fits(port);
    ASSERT_TRUE(fits.send_all(get("/", "X-Big: " + std::string(900, 'a') + "\r\n")));
    auto r = fits.read_response();
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 200);

    RawClient c(port);
    ASSERT_TRUE(c.send_all(get("/", "X-Big: " + std::string(2000, 'a') + "\r\n")));
    r = c.read_response();
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 431);
    EXPECT_EQ(r->body, "error 431 for []: request head too large");
    EXPECT_EQ(r->header("Connection"), "close");
    EXPECT_TRUE(c.wait_closed());
}

TEST_F(HttpServerTest, MalformedRequestGets400) {
    start_echo();
    RawClient c(port);
    ASSERT_TRUE(c.send_all(get("/fine")));
    auto r = c.read_response();
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 200);
    ASSERT_TRUE(c.send_all("GET / HTTP/1.1\r\nHost: test\r\nno colon here\r\n\r\n"));
    r = c.read_response();
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 400);
    EXPECT_EQ(r->body.rfind("error 400 for []: ", 0), 0u) << r->body;
    EXPECT_EQ(r->header("Connection"), "close");
    EXPECT_TRUE(c.wait_closed());
}

TEST_F(HttpServerTest, HeadStalledPastIoTimeoutGets408) {
    auto o = options();
    o.io_timeout = 300ms;
    start_echo(o);
    RawClient c(port);
    auto start = Clock::now();
    ASSERT_TRUE(c.send_all("GET /slow HTTP/1.1\r\nHost: test\r\n"));
    auto r = c.read_response();
    ASSERT_TRUE(r);
    EXPECT_GE(since(start), 250ms);
    EXPECT_EQ(r->status, 408);
    EXPECT_EQ(r->body, "error 408 for []: request not received in time");
    EXPECT_EQ(r->header("Connection"), "close");
    EXPECT_TRUE(c.wait_closed());
}

TEST_F(HttpServerTest, BodyStalledPastIoTimeoutGets408NamingTheTarget) {
    // The error text gets the request-target of a complete head. The head arrived in a small
    // buffer that the announced body then made the server grow.
    auto o = options();
    o.io_timeout = 300ms;
    start_echo(o);
    RawClient c(port);
    ASSERT_TRUE(c.send_all(
        "POST /stalled/target-0123456789 HTTP/1.1\r\nHost: test\r\nContent-Length: 100000\r\n\r\n"
        "abc"));
    auto r = c.read_response();
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 408);
    EXPECT_EQ(r->body, "error 408 for [/stalled/target-0123456789]: request not received in time");
    EXPECT_TRUE(c.wait_closed());
}

// ---- HttpServer: connections ------------------------------------------------------------------

TEST_F(HttpServerTest, IdleKeepAliveConnectionIsClosedAfterIdleTimeout) {
    auto o = options();
    o.idle_timeout = 300ms;
    start_echo(o);
    RawClient used(port);
    ASSERT_TRUE(used.send_all(get("/")));
    ASSERT_TRUE(used.read_response());
    auto start = Clock::now();
    RawClient silent(port);
    EXPECT_TRUE(used.wait_closed());
    EXPECT_GE(since(start), 250ms);
    EXPECT_TRUE(used.buffer().empty());
    EXPECT_TRUE(silent.wait_closed()) << "a connection that never sent a byte stays open";
    EXPECT_GE(since(start), 250ms);
    EXPECT_TRUE(eventually([&] { return server->connections() == 0; }));
}

TEST_F(HttpServerTest, ConnectionBeyondTheLimitIsClosedAtOnceOthersGoOn) {
    auto o = options();
    o.max_connections = 2;
    start_echo(o);
    RawClient a(port), b(port);
    for (auto* c : {&a, &b}) {
        ASSERT_TRUE(c->send_all(get("/in")));
        ASSERT_TRUE(c->read_response());
    }
    EXPECT_EQ(server->connections(), 2u);
    RawClient over(port);
    ASSERT_TRUE(over.connected());
    EXPECT_TRUE(over.wait_closed(1s)) << "a third connection was kept";
    EXPECT_TRUE(over.buffer().empty());
    for (auto* c : {&a, &b}) {
        ASSERT_TRUE(c->send_all(get("/again")));
        auto r = c->read_response();
        ASSERT_TRUE(r);
        EXPECT_EQ(r->body, "GET /again ");
    }
    a.abort();
    ASSERT_TRUE(eventually([&] { return server->connections() == 1; }));
    RawClient next(port);
    ASSERT_TRUE(next.send_all(get("/next")));
    auto r = next.read_response();
    ASSERT_TRUE(r) << "a freed place was not given to a new connection";
    EXPECT_EQ(r->body, "GET /next ");
}

TEST_F(HttpServerTest, StopAcceptingServesOpenConnectionsButNoNewOnes) {
    start_echo();
    RawClient open(port);
    ASSERT_TRUE(open.send_all(get("/before")));
    ASSERT_TRUE(open.read_response());
    server->stop_accepting();
    server->stop_accepting();  // idempotent
    RawClient late(port);      // the socket still listens: the connection is queued
    ASSERT_TRUE(late.send_all(get("/late")));
    EXPECT_TRUE(late.silent_for(300ms)) << "a new connection was served";
    ASSERT_TRUE(open.send_all(get("/after")));
    auto r = open.read_response();
    ASSERT_TRUE(r);
    EXPECT_EQ(r->body, "GET /after ");
    server->join();
    EXPECT_TRUE(late.wait_closed());
    EXPECT_TRUE(late.buffer().empty());
}

TEST_F(HttpServerTest, JoinClosesOpenConnections) {
    start_queued();
    RawClient idle(port), busy(port);
    ASSERT_TRUE(idle.send_all(get("/idle")));
    auto ex = queue.pop();
    ASSERT_TRUE(ex);
    respond_later(ex, 200, "ok");
    ASSERT_TRUE(idle.read_response());
    ASSERT_TRUE(busy.send_all(get("/busy")));
    auto pending = queue.pop();
    ASSERT_TRUE(pending);

    auto released = std::make_shared<Signal>();
    server->join();
    EXPECT_TRUE(idle.wait_closed());
    EXPECT_TRUE(busy.wait_closed());
    EXPECT_TRUE(busy.buffer().empty());
    // The loops are gone: a late answer finds its connection closed and drops what it holds.
    pending->respond_simple(200, "text/plain", "too late", {},
                            std::shared_ptr<void>(new int(0), [released](int* p) {
                                delete p;
                                released->fire();
                            }));
    EXPECT_TRUE(released->wait(0ms));
    ex.reset();
    pending.reset();
    EXPECT_EQ(server->connections(), 0u);
}

TEST_F(HttpServerTest, ClientGoneWhileHandlerWorksIsHarmless) {
    start_queued();
    for (bool reset : {false, true}) {
        RawClient c(port);
        ASSERT_TRUE(c.send_all(get("/gone")));
        auto ex = queue.pop();
        ASSERT_TRUE(ex);
        if (reset) {
            c.abort();
        } else {
            shutdown(c.fd(), SHUT_RDWR);
        }
        auto released = std::make_shared<Signal>();
        respond_later(ex, 200, "nobody listens", std::shared_ptr<void>(new int(0), [=](int* p) {
                          delete p;
                          released->fire();
                      }));
        EXPECT_TRUE(released->wait(3s)) << "hold kept after answering a gone client";
    }
    EXPECT_TRUE(eventually([&] { return server->connections() == 0; }));
    RawClient next(port);
    ASSERT_TRUE(next.send_all(get("/still-here")));
    auto ex = queue.pop();
    ASSERT_TRUE(ex);
    respond_later(ex, 200, "yes");
    auto r = next.read_response();
    ASSERT_TRUE(r);
    EXPECT_EQ(r->body, "yes");
}

TEST_F(HttpServerTest, HoldIsReleasedOnceTheResponseIsWritten) {
    // A response far larger than the socket buffers: it cannot be written while the client does
    // not read, and the hold (e.g. an instance's slot) is kept until it is.
    const std::string payload = pattern(32 << 20);
    auto released = std::make_shared<Signal>();
    start(options(), [&](std::shared_ptr<HttpExchange> ex) {
        std::string head =
            "HTTP/1.1 200 OK\r\nContent-Length: " + std::to_string(payload.size()) + "\r\n\r\n";
        std::shared_ptr<void> hold(new int(0), [released](int* p) {
            delete p;
            released->fire();
        });
        ex->respond(std::move(head), "<<<<" + payload + ">>>>", 4, payload.size(), hold);
    });
    RawClient c(port);
    ASSERT_TRUE(c.send_all(get("/large")));
    EXPECT_FALSE(released->wait(100ms)) << "hold released before the response was written";
    auto r = c.read_response(5s);
    ASSERT_TRUE(r);
    EXPECT_EQ(r->body.size(), payload.size());
    EXPECT_TRUE(r->body == payload);
    EXPECT_TRUE(released->wait(3s));
    // And the connection goes on.
    ASSERT_TRUE(c.send_all(get("/again")));
    r = c.read_response(5s);
    ASSERT_TRUE(r);
    EXPECT_EQ(r->body.size(), payload.size());
}

// The server's end of the client's connection, found among this process's descriptors.
int server_side_of(const RawClient& c, std::uint16_t server_port) {
    DIR* dir = opendir("/proc/self/fd");
    if (!dir) {
        return -1;
    }
    int found = -1;
    while (dirent* e = readdir(dir)) {
        int fd = atoi(e->d_name);
        sockaddr_in local{}, peer{};
        socklen_t l1 = sizeof(local), l2 = sizeof(peer);
        if (getsockname(fd, reinterpret_cast<sockaddr*>(&local), &l1) == 0 &&
            getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &l2) == 0 &&
            local.sin_family == AF_INET && ntohs(local.sin_port) == server_port &&
            ntohs(peer.sin_port) == c.local_port()) {
            found = fd;
        }
    }
    closedir(dir);
    return found;
}

// Seconds of CPU this process has used (every thread).
double cpu_seconds() {
    rusage u{};
    getrusage(RUSAGE_SELF, &u);
    return static_cast<double>(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
           static_cast<double>(u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6;
}

TEST_F(HttpServerTest, OutOfDescriptorsPausesAcceptingInsteadOfSpinning) {
    // accept() failing with EMFILE leaves the connection in the backlog and the listener
    // readable: a level-triggered loop that only logs would spin on it.
    start_echo();
    rlimit saved{};
    ASSERT_EQ(getrlimit(RLIMIT_NOFILE, &saved), 0);
    struct Restore {
        rlimit limit;
        ~Restore() { setrlimit(RLIMIT_NOFILE, &limit); }
    } restore{saved};
    // Exactly one descriptor number left: the client's socket takes it, so the server's
    // accept() has none (the limit is lowered before connecting, or the server could accept
    // before it).
    int placeholder = open("/dev/null", O_RDONLY | O_CLOEXEC);  // the lowest free number
    ASSERT_GE(placeholder, 0);
    rlimit tight = saved;
    tight.rlim_cur = static_cast<rlim_t>(placeholder) + 1;
    ASSERT_EQ(setrlimit(RLIMIT_NOFILE, &tight), 0);
    close(placeholder);
    RawClient c(port);
    ASSERT_TRUE(c.connected());
    ASSERT_EQ(c.fd(), placeholder);

    ASSERT_TRUE(c.send_all(get("/starved")));
    double cpu_before = cpu_seconds();
    EXPECT_FALSE(c.read_response(400ms)) << "served without a descriptor?";
    EXPECT_LT(cpu_seconds() - cpu_before, 0.2) << "the accept loop spins on EMFILE";

    ASSERT_EQ(setrlimit(RLIMIT_NOFILE, &saved), 0);
    auto r = c.read_response();
    ASSERT_TRUE(r) << "accepting did not resume once descriptors were available";
    EXPECT_EQ(r->status, 200);
}

TEST_F(HttpServerTest, ConnectionsUseTcpNodelay) {
    // Like ListeningServer before it (see listening_server_test.cpp): without TCP_NODELAY a small
    // response written while an earlier one is unacknowledged (pipelining, 100 Continue) waits
    // for the client's delayed ACK.
    start_echo();
    RawClient c(port);
    ASSERT_TRUE(c.send_all(get("/")));
    ASSERT_TRUE(c.read_response());
    int fd = server_side_of(c, port);
    ASSERT_GE(fd, 0);
    int value = -1;
    socklen_t len = sizeof(value);
    ASSERT_EQ(getsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &value, &len), 0);
    EXPECT_NE(value, 0) << "accepted connections have no TCP_NODELAY";
}

}  // namespace
}  // namespace unifaas

// ---- Streamed responses (BodyProducer) ---------------------------------------------------------

namespace unifaas {
namespace {

// Writes `total` bytes of 'x' in blocks while the connection takes them; counts what it did.
class CountingProducer : public BodyProducer {
  public:
    CountingProducer(std::shared_ptr<HttpExchange> ex, std::size_t total)
        : ex_(std::move(ex)), total_(total) {}

    void resume() override {
        ++resumes;
        produce();
    }
    void cancel() override { cancelled.fire(); }

    void produce() {
        static const std::string block(16 * 1024, 'x');
        while (produced < total_) {
            std::string_view piece(block.data(), std::min(block.size(), total_ - produced));
            std::string_view pieces[] = {piece};
            bool room = ex_->write_body(pieces);
            produced += piece.size();
            if (!room) {
                return;  // resume() comes when the client has taken enough
            }
        }
        ex_->end_body();
        ex_.reset();
    }

    std::atomic<std::size_t> produced{0};
    std::atomic<int> resumes{0};
    Signal cancelled;

  private:
    std::shared_ptr<HttpExchange> ex_;
    std::size_t total_;
};

TEST_F(HttpServerTest, StreamedBodyStopsAboveTheWatermarkAndResumesAsTheClientReads) {
    auto o = options();
    o.stream_watermark = 64 * 1024;
    start_queued(o);
    RawClient c(port);
    ASSERT_TRUE(c.send_all(get("/big") + get("/after")));
    auto ex = queue.pop();
    ASSERT_TRUE(ex);
    constexpr std::size_t kTotal = 64 * 1024 * 1024;
    auto producer = std::make_shared<CountingProducer>(ex, kTotal);
    ex->loop().post([ex, producer] {
        std::string head =
            "HTTP/1.1 200 OK\r\nContent-Length: " + std::to_string(kTotal) + "\r\n\r\n";
        ASSERT_TRUE(ex->respond_streaming(std::move(head), producer, {}, false));
        producer->produce();
    });
    ex.reset();
    // The client reads nothing: production stops once the socket buffers and the watermark are
    // full, far below the body's size.
    ASSERT_TRUE(eventually([&] { return producer->produced > 0; }));
    std::size_t before;
    do {
        before = producer->produced;
        std::this_thread::sleep_for(50ms);
    } while (producer->produced != before);
    EXPECT_LT(producer->produced, 16u * 1024 * 1024) << "no back-pressure";
    auto r = c.read_response(20s);
    ASSERT_TRUE(r);
    EXPECT_EQ(r->body.size(), kTotal);
    EXPECT_EQ(r->body.find_first_not_of('x'), std::string::npos);
    EXPECT_GT(producer->resumes, 0);
    auto next = queue.pop();  // the pipelined request after the stream
    ASSERT_TRUE(next);
    EXPECT_EQ(next->request().target, "/after");
    respond_later(next, 200, "after");
    auto after = c.read_response();
    ASSERT_TRUE(after);
    EXPECT_EQ(after->body, "after");
}

TEST_F(HttpServerTest, AbortedStreamEndsTheConnectionWithATruncatedBody) {
    start_queued();
    RawClient c(port);
    ASSERT_TRUE(c.send_all(get("/cut")));
    auto ex = queue.pop();
    ASSERT_TRUE(ex);
    auto producer = std::make_shared<CountingProducer>(nullptr, 0);
    ex->loop().post([ex, producer] {
        ASSERT_TRUE(ex->respond_streaming("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n",
                                          producer, {}, false));
        std::string_view pieces[] = {"0123456789"};
        ex->write_body(pieces);
        ex->abort_body();
    });
    ASSERT_TRUE(c.wait_closed());
    EXPECT_TRUE(c.buffer().ends_with("\r\n\r\n0123456789")) << c.buffer();
    EXPECT_FALSE(producer->cancelled.wait(100ms)) << "the producer that aborted was cancelled";
    ex.reset();
    EXPECT_TRUE(eventually([&] { return server->connections() == 0; }));
}

// With stream_request_bodies a large body is handed over before it arrived: body() is empty and
// the handler reads it through a sink, whole and in order, stopping after every piece (back-
// pressure) - Content-Length and chunked - and the next request on the connection follows.
class CollectingSink : public BodySink {
  public:
    explicit CollectingSink(std::shared_ptr<HttpExchange> ex) : ex_(std::move(ex)) {}
    bool on_body(std::string_view data) override {
        got_.append(data);
        ex_->loop().post([ex = ex_] { ex->resume_body(); });
        return false;
    }
    void on_body_end() override {
        ex_->respond_simple(200, "text/plain",
                            std::to_string(got_.size()) + " " +
                                (got_ == pattern(got_.size()) ? "same" : "differs"));
    }
    void on_body_error(int status, std::string_view problem) override {
        ex_->respond_simple(status, "text/plain", problem);
    }

  private:
    std::shared_ptr<HttpExchange> ex_;
    std::string got_;
};

TEST_F(HttpServerTest, StreamedRequestBodyIsReadThroughASink) {
    auto o = options();
    o.stream_request_bodies = true;
    std::vector<std::unique_ptr<CollectingSink>> sinks;  // outlive their exchanges
    start(o, [&sinks](std::shared_ptr<HttpExchange> ex) {
        EXPECT_TRUE(ex->body_streaming());
        EXPECT_TRUE(ex->body().empty());
        sinks.push_back(std::make_unique<CollectingSink>(ex));
        ex->read_body(sinks.back().get());
    });
    RawClient c(port);
    std::string body = pattern(1'000'000);
    std::string head = "POST /chunked HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n";
    std::thread sender([&] { c.send_all(post("/length", body) + head + chunked(body, 70'000)); });
    auto r = c.read_response(5s);
    ASSERT_TRUE(r);
    EXPECT_EQ(r->body, "1000000 same");
    r = c.read_response(5s);
    sender.join();
    ASSERT_TRUE(r);
    EXPECT_EQ(r->body, "1000000 same");
    EXPECT_EQ(r->header("Connection"), std::nullopt);
}

// A sink that got rid of the bytes at once resumes from inside on_body() and still answers
// false (it had said "enough" before it sent them): the resume must not be lost, or the body stops
// for good (the gateway did that to uploads when the instance took each piece at once).
class ResumingInsideSink : public BodySink {
  public:
    explicit ResumingInsideSink(std::shared_ptr<HttpExchange> ex) : ex_(std::move(ex)) {}
    bool on_body(std::string_view data) override {
        got_ += data.size();
        ex_->resume_body();
        return false;
    }
    void on_body_end() override { ex_->respond_simple(200, "text/plain", std::to_string(got_)); }
    void on_body_error(int status, std::string_view problem) override {
        ex_->respond_simple(status, "text/plain", problem);
    }

  private:
    std::shared_ptr<HttpExchange> ex_;
    std::size_t got_ = 0;
};

TEST_F(HttpServerTest, ResumeFromInsideOnBodyIsNotLost) {
    auto o = options();
    o.stream_request_bodies = true;
    std::vector<std::unique_ptr<ResumingInsideSink>> sinks;
    start(o, [&sinks](std::shared_ptr<HttpExchange> ex) {
        sinks.push_back(std::make_unique<ResumingInsideSink>(ex));
        ex->read_body(sinks.back().get());
    });
    RawClient c(port);
    std::string body = pattern(3'000'000);
    std::thread sender([&] { c.send_all(post("/length", body)); });
    auto r = c.read_response(10s);
    sender.join();
    ASSERT_TRUE(r) << "the body stopped after a resume from inside on_body()";
    EXPECT_EQ(r->body, "3000000");
}

// The rule for a client that closes its sending side (FIN) after a request (nginx's, with
// proxy_ignore_client_abort off): an answer the handler gives at once is still written (see
// HalfClosedClientGetsItsResponseThenTheConnectionEnds); one it is still making is abandoned, the
// client counts as gone and the connection closes without a response - whether the FIN came with
// the request or while the handler worked.
TEST_F(HttpServerTest, ClientClosingBeforeItsAnswerIsGone) {
    start_queued();
    for (bool fin_with_request : {true, false}) {
        RawClient c(port);
        auto gone = std::make_shared<Signal>();
        if (fin_with_request) {
            ASSERT_TRUE(c.send_all(get("/fin-first")));
            shutdown(c.fd(), SHUT_WR);
        } else {
            ASSERT_TRUE(c.send_all(get("/fin-later")));
        }
        auto ex = queue.pop();
        ASSERT_TRUE(ex);
        ex->loop().post([ex, gone] { ex->on_client_gone([gone] { gone->fire(); }); });
        if (!fin_with_request) {
            shutdown(c.fd(), SHUT_WR);
        }
        EXPECT_TRUE(gone->wait(3s)) << "a client that closed before its answer went unnoticed";
        EXPECT_TRUE(c.wait_closed());
        EXPECT_EQ(c.buffer(), "") << "answered a client that had left";
        respond_later(ex, 200, "too late");
    }
    EXPECT_TRUE(eventually([&] { return server->connections() == 0; }));
}

// take_connection (a tunnel after a 101): the server lets go of the socket without closing or
// answering it, hands over what the client sent after the request's head, and counts it no more.
TEST_F(HttpServerTest, TakenConnectionLeavesTheServerWithTheBytesAfterTheHead) {
    start_queued();
    RawClient c(port);
    ASSERT_TRUE(c.send_all(get("/upgrade") + "pipelined frame"));
    auto ex = queue.pop();
    ASSERT_TRUE(ex);
    std::promise<std::optional<TakenConnection>> taken;
    auto gone = std::make_shared<Signal>();
    ex->loop().post([&, ex, gone] {
        ex->on_client_gone([gone] { gone->fire(); });
        taken.set_value(ex->take_connection());
    });
    auto t = taken.get_future().get();
    ASSERT_TRUE(t);
    ASSERT_TRUE(t->fd);
    // What the server had not read yet is still in the socket.
    std::string unread = t->unread;
    auto deadline = Clock::now() + 3s;
    while (unread.size() < 15 && Clock::now() < deadline) {
        pollfd p{t->fd.get(), POLLIN, 0};
        if (poll(&p, 1, 100) == 1) {
            char buf[64];
            ssize_t n = recv(t->fd.get(), buf, sizeof(buf), MSG_DONTWAIT);
            if (n > 0) {
                unread.append(buf, static_cast<std::size_t>(n));
            }
        }
    }
    EXPECT_EQ(unread, "pipelined frame");
    ASSERT_TRUE(::send(t->fd.get(), "mine now", 8, MSG_NOSIGNAL) == 8);
    EXPECT_EQ(c.read_more(Clock::now() + 3s), RawClient::Read::Data);
    EXPECT_EQ(c.buffer(), "mine now") << "the server answered a connection it gave away";
    EXPECT_FALSE(gone->wait(0ms)) << "on_client_gone ran for a connection taken over";
    respond_later(ex, 200, "too late");  // ignored: the exchange is no longer the server's
    ex.reset();  // (counted while a handler holds it, as every connection is)
    EXPECT_TRUE(eventually([&] { return server->connections() == 0; }));
    t->fd.reset();
    EXPECT_TRUE(c.wait_closed());
    EXPECT_EQ(c.buffer(), "mine now");
}

TEST_F(HttpServerTest, ClientResetReachesTheHandlerAndTheProducer) {
    start_queued();
    {  // while the answer is being made
        RawClient c(port);
        ASSERT_TRUE(c.send_all(get("/slow")));
        auto ex = queue.pop();
        ASSERT_TRUE(ex);
        auto gone = std::make_shared<Signal>();
        ex->loop().post([ex, gone] { ex->on_client_gone([gone] { gone->fire(); }); });
        c.abort();
        EXPECT_TRUE(gone->wait(3s)) << "a reset client went unnoticed";
    }
    {  // while a stream waits for its producer
        RawClient c(port);
        ASSERT_TRUE(c.send_all(get("/stream")));
        auto ex = queue.pop();
        ASSERT_TRUE(ex);
        auto producer = std::make_shared<CountingProducer>(nullptr, 0);
        Signal head_sent;
        ex->loop().post([ex, producer, &head_sent] {
            std::string head = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
            ASSERT_TRUE(ex->respond_streaming(std::move(head), producer, {}, false));
            std::string_view none[] = {""};
            ex->write_body(none);
            head_sent.fire();
        });
        ASSERT_TRUE(head_sent.wait(3s));
        ASSERT_EQ(c.read_more(Clock::now() + 3s), RawClient::Read::Data);
        c.abort();
        EXPECT_TRUE(producer->cancelled.wait(3s)) << "a reset client went unnoticed mid-stream";
    }
    EXPECT_TRUE(eventually([&] { return server->connections() == 0; }));
}

}  // namespace
}  // namespace unifaas

namespace unifaas {
namespace {

// ---- HttpServer: the loops' scheduling policy --------------------------------------------------

// The scheduling policy of the thread serving a request: "loop=P" (sched_getscheduler()).
void answer_policy(const std::shared_ptr<HttpExchange>& ex) {
    ex->respond_simple(200, "text/plain", "loop=" + std::to_string(sched_getscheduler(0)));
}

std::string policy_seen(std::uint16_t port) {
    RawClient c(port);
    if (!c.send_all(get("/policy"))) {
        return "no connection";
    }
    auto r = c.read_response();
    return r ? r->body : "no response";
}

TEST_F(HttpServerTest, BatchSchedulingMakesEveryLoopBatch) {
    ASSERT_EQ(sched_getscheduler(0), SCHED_OTHER);
    auto o = options();
    o.batch_scheduling = true;
    start(o, answer_policy);
    std::string expected = "loop=" + std::to_string(SCHED_BATCH | SCHED_RESET_ON_FORK);
    for (int i = 0; i < 4; ++i) {  // connections go to both loops
        EXPECT_EQ(policy_seen(port), expected);
    }
}

TEST_F(HttpServerTest, WithoutBatchSchedulingTheLoopsKeepTheStartersPolicy) {
    ASSERT_EQ(sched_getscheduler(0), SCHED_OTHER);
    start(options(), answer_policy);
    EXPECT_EQ(policy_seen(port), "loop=" + std::to_string(SCHED_OTHER));
}

// A policy chosen for the daemon (here SCHED_IDLE, as systemd's CPUSchedulingPolicy=idle would
// set it) is not replaced by SCHED_BATCH.
TEST_F(HttpServerTest, BatchSchedulingKeepsAPolicyChosenForTheDaemon) {
    auto o = options();
    o.batch_scheduling = true;
    std::thread starter([&] {
        sched_param param{};
        ASSERT_EQ(sched_setscheduler(0, SCHED_IDLE, &param), 0);
        start(o, answer_policy);  // the loops inherit the starter's policy
    });
    starter.join();
    EXPECT_EQ(policy_seen(port), "loop=" + std::to_string(SCHED_IDLE));
}

}  // namespace
}  // namespace unifaas
