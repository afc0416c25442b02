// ListeningServer: serving sockets it was given.
#include "gateway/listening_server.h"

#include <gtest/gtest.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

namespace unifaas {
namespace {

TEST(ListeningServer, ConnectionsGetTcpNodelayAlsoOnAGivenSocket) {
    // A socket made elsewhere (systemd, a test) has no TCP_NODELAY; accepted connections inherit
    // the listener's, and without it every two-part response waits ~40 ms for a delayed ACK.
    int fd = bind_listener("127.0.0.1", 0);
    int value = -1;
    socklen_t len = sizeof(value);
    ASSERT_EQ(getsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &value, &len), 0);
    ASSERT_EQ(value, 0);
    ListeningServer server(1);
    server.Get("/", [](const httplib::Request&, httplib::Response& res) {
        res.set_content("ok", "text/plain");
    });
    server.serve(fd);
    ASSERT_EQ(getsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &value, &len), 0);
    EXPECT_NE(value, 0);
    httplib::Client client("127.0.0.1", local_port(fd));
    auto res = client.Get("/");
    ASSERT_TRUE(res);
    EXPECT_EQ(res->body, "ok");
    EXPECT_EQ(local_address(fd), "127.0.0.1:" + std::to_string(local_port(fd)));
    server.stop_accepting();
    server.join();
}

}  // namespace
}  // namespace unifaas
