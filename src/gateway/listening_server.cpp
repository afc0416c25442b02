#include "gateway/listening_server.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstring>
#include <system_error>

namespace unifaas {

namespace {

// Makes accept() return by connecting to the socket's own address.
void wake_acceptor(int listen_fd) {
    sockaddr_storage addr{};
    socklen_t len = sizeof(addr);
    if (getsockname(listen_fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
        return;
    }
    if (addr.ss_family == AF_INET) {
        auto* in = reinterpret_cast<sockaddr_in*>(&addr);
        if (in->sin_addr.s_addr == htonl(INADDR_ANY)) {
            in->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        }
    } else if (addr.ss_family == AF_INET6) {
        auto* in6 = reinterpret_cast<sockaddr_in6*>(&addr);
        if (IN6_IS_ADDR_UNSPECIFIED(&in6->sin6_addr)) {
            in6->sin6_addr = in6addr_loopback;
        }
    }
    int s = socket(addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s < 0) {
        return;
    }
    (void)connect(s, reinterpret_cast<sockaddr*>(&addr), len);
    close(s);
}

constexpr int kWakeSignal = SIGUSR1;
constexpr auto kWakeRetry = std::chrono::milliseconds(20);

void on_wake_signal(int) {}

// A handler without SA_RESTART, so the signal interrupts accept(). Process-wide, installed once.
void install_wake_signal() {
    static std::once_flag once;
    std::call_once(once, [] {
        struct sigaction sa {};
        sa.sa_handler = on_wake_signal;
        sigemptyset(&sa.sa_mask);
        sa.sa_flags = 0;
        sigaction(kWakeSignal, &sa, nullptr);
    });
}

}  // namespace

// The connection threads. httplib shuts them down right after its accept loop ends, which is
// how the server learns that the loop is gone.
class ListeningServer::Workers : public httplib::ThreadPool {
  public:
    Workers(unsigned threads, ListeningServer& server)
        : httplib::ThreadPool(threads), server_(server) {}
    void shutdown() override {
        server_.accept_loop_ended();
        httplib::ThreadPool::shutdown();
    }

  private:
    ListeningServer& server_;
};

ListeningServer::ListeningServer(unsigned threads) {
    install_wake_signal();
    new_task_queue = [this, threads] { return new Workers(threads, *this); };
}

ListeningServer::~ListeningServer() {
    stop_accepting();
    join();
}

void ListeningServer::serve(int listen_fd) {
    // Accepted connections inherit TCP_NODELAY from the listener. httplib only sets it on sockets
    // it creates itself; without it a response written in two parts waits for the client's
    // delayed ACK (~40 ms a request, measured by bench/).
    int one = 1;
    setsockopt(listen_fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    fd_ = listen_fd;
    svr_sock_ = listen_fd;
    thread_ = std::thread([this] { listen_after_bind(); });
}

void ListeningServer::accept_loop_ended() {
    std::lock_guard lk(mu_);
    loop_ended_ = true;
    cv_.notify_all();
}

void ListeningServer::stop_accepting() {
    int fd = svr_sock_.exchange(INVALID_SOCKET);
    if (fd == INVALID_SOCKET || !thread_.joinable()) {
        return;
    }
    // accept() returns for a connection to the socket's own address, when the socket belongs to
    // this network namespace; otherwise (or if that connect raced with the loop) a signal without
    // SA_RESTART interrupts it. The loop re-checks svr_sock_ and ends either way.
    wake_acceptor(fd);
    std::unique_lock lk(mu_);
    while (!cv_.wait_for(lk, kWakeRetry, [this] { return loop_ended_; })) {
        pthread_kill(thread_.native_handle(), kWakeSignal);
    }
}

void ListeningServer::join() {
    if (thread_.joinable()) {
        thread_.join();
    }
    if (fd_ >= 0) {
        close(fd_);
        fd_ = -1;
    }
}

int bind_listener(const std::string& host, int port) {
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICHOST | AI_NUMERICSERV;
    addrinfo* res = nullptr;
    std::string service = std::to_string(port);
    int rc = getaddrinfo(host.c_str(), service.c_str(), &hints, &res);
    if (rc != 0) {
        throw std::runtime_error("cannot listen on " + host + ":" + service + ": " +
                                 gai_strerror(rc));
    }
    int fd = socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int err = errno;
    if (fd >= 0) {
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        if (bind(fd, res->ai_addr, res->ai_addrlen) != 0 || listen(fd, SOMAXCONN) != 0) {
            err = errno;
            close(fd);
            fd = -1;
        }
    }
    freeaddrinfo(res);
    if (fd < 0) {
        throw std::system_error(err, std::generic_category(),
                                "cannot listen on " + host + ":" + service);
    }
    return fd;
}

std::string local_address(int listen_fd) {
    sockaddr_storage addr{};
    socklen_t len = sizeof(addr);
    if (getsockname(listen_fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
        throw std::system_error(errno, std::generic_category(), "getsockname");
    }
    char host[INET6_ADDRSTRLEN] = {};
    if (addr.ss_family == AF_INET6) {
        auto* in6 = reinterpret_cast<sockaddr_in6*>(&addr);
        inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof(host));
        return std::string("[") + host + "]:" + std::to_string(ntohs(in6->sin6_port));
    }
    auto* in = reinterpret_cast<sockaddr_in*>(&addr);
    inet_ntop(AF_INET, &in->sin_addr, host, sizeof(host));
    return std::string(host) + ":" + std::to_string(ntohs(in->sin_port));
}

std::uint16_t local_port(int listen_fd) {
    sockaddr_storage addr{};
    socklen_t len = sizeof(addr);
    if (getsockname(listen_fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
        throw std::system_error(errno, std::generic_category(), "getsockname");
    }
    if (addr.ss_family == AF_INET6) {
        return ntohs(reinterpret_cast<sockaddr_in6*>(&addr)->sin6_port);
    }
    return ntohs(reinterpret_cast<sockaddr_in*>(&addr)->sin_port);
}

}  // namespace unifaas
