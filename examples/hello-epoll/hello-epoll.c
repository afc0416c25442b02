// hello-epoll: a second, differently built example function for the warm-path benchmark.
//
// examples/hello serves each connection on its own thread and builds every answer with
// malloc/printf. This one is a single-threaded epoll server that answers every request with the
// same pre-built response (`hello from unifaas\n`, the body of hello's /hello), so it answers
// at least as fast as hello and a proxy's overhead in front of it is not hidden by the
// function's own cost. Two variants let the benchmark compare response shapes: GET /split
// sends the same response as a head write followed by a body write (two segments, as many
// hand-written servers do), GET /4k a 4 KiB body in one write. Libc only, static, no configuration:
// it listens on 0.0.0.0:$PORT (default 8080), keeps connections alive (HTTP/1.1, or HTTP/1.0 with
// keep-alive), answers pipelined requests, skips request bodies with a Content-Length, and once
// listening calls its readiness callback (argv[1] when it is an http:// URL, else
// $UNIFAAS_CALLBACK) with a GET. Every response leaves in one write() on a TCP_NODELAY socket.
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

enum { BUF_BYTES = 16384, MAX_EVENTS = 64 };

static const char kBody[] = "hello from unifaas\n";
static char response_11[256];
static size_t response_11_len;
static char response_10[256];  // HTTP/1.0 without keep-alive: answered, then closed
static size_t response_10_len;
static char response_4k[4096 + 256];
static size_t response_4k_len;
static size_t head_11_len;  // where the body starts in response_11 (for /split)

struct conn {
    int fd;
    size_t len;        // bytes in buf
    size_t body_left;  // request body bytes still to skip
    char buf[BUF_BYTES];
};

static void on_signal(int sig) {
    (void)sig;
    _exit(0);  // as PID 1 in a container, SIGTERM would otherwise be ignored
}

static int write_all(int fd, const char* data, size_t len) {
    while (len > 0) {
        ssize_t n = write(fd, data, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN) {
            // The peer does not read its answers: wait (bounded by SO_SNDTIMEO) rather than
            // buffer. A benchmark client always reads, so this never happens on the hot path.
            fd_set w;
            FD_ZERO(&w);
            FD_SET(fd, &w);
            struct timeval tv = {.tv_sec = 5};
            if (select(fd + 1, NULL, &w, NULL, &tv) <= 0)
                return -1;
            continue;
        }
        if (n <= 0)
            return -1;
        data += n;
        len -= (size_t)n;
    }
    return 0;
}

// The value of header `name` in the head [head, end), or NULL.
static const char* header_value(const char* head, const char* end, const char* name) {
    size_t nlen = strlen(name);
    for (const char* p = memchr(head, '\n', (size_t)(end - head)); p && p + 1 < end;
         p = memchr(p + 1, '\n', (size_t)(end - p - 1))) {
        const char* line = p + 1;
        if ((size_t)(end - line) > nlen + 1 && strncasecmp(line, name, nlen) == 0 &&
            line[nlen] == ':') {
            const char* v = line + nlen + 1;
            while (v < end && (*v == ' ' || *v == '\t'))
                v++;
            return v;
        }
    }
    return NULL;
}

// Answers every complete request in c->buf; returns 0 to keep the connection, -1 to close it.
static int serve(struct conn* c) {
    size_t pos = 0;
    for (;;) {
        if (c->body_left > 0) {
            size_t skip = c->len - pos < c->body_left ? c->len - pos : c->body_left;
            pos += skip;
            c->body_left -= skip;
            if (c->body_left > 0)
                break;
        }
        char* head = c->buf + pos;
        char* end = memmem(head, c->len - pos, "\r\n\r\n", 4);
        if (!end)
            break;
        end += 4;
        int http10 =
            (size_t)(end - head) > 10 && memmem(head, (size_t)(end - head), " HTTP/1.0\r", 10);
        const char* conn_hdr = header_value(head, end, "Connection");
        int close_after = 0;
        if (conn_hdr && strncasecmp(conn_hdr, "close", 5) == 0)
            close_after = 1;
        if (http10 && !(conn_hdr && strncasecmp(conn_hdr, "keep-alive", 10) == 0))
            close_after = 1;
        const char* cl = header_value(head, end, "Content-Length");
        if (cl)
            c->body_left = strtoull(cl, NULL, 10);
        if (header_value(head, end, "Transfer-Encoding"))
            close_after = 1;  // chunked request bodies are not skipped here: answer, then close
        int split = strncmp(head, "GET /split ", 11) == 0;
        int big = strncmp(head, "GET /4k ", 8) == 0;
        pos = (size_t)(end - c->buf);
        if (close_after) {
            write_all(c->fd, response_10, response_10_len);
            return -1;
        }
        int rc;
        if (split)
            rc = write_all(c->fd, response_11, head_11_len) != 0 ||
                 write_all(c->fd, response_11 + head_11_len, response_11_len - head_11_len) != 0;
        else if (big)
            rc = write_all(c->fd, response_4k, response_4k_len);
        else
            rc = write_all(c->fd, response_11, response_11_len);
        if (rc != 0)
            return -1;
    }
    memmove(c->buf, c->buf + pos, c->len - pos);
    c->len -= pos;
    return c->len == sizeof c->buf ? -1 : 0;  // a head larger than the buffer: give up
}

// ---------------------------------------------------------------------------------------------
// Readiness callback: GET http://a.b.c.d[:port]/path (IPv4 literals only: no resolver).

static int call_back(const char* text) {
    if (strncmp(text, "http://", 7) != 0)
        return -1;
    char host[64];
    const char* h = text + 7;
    const char* slash = strchr(h, '/');
    size_t alen = slash ? (size_t)(slash - h) : strlen(h);
    const char* colon = memchr(h, ':', alen);
    size_t hlen = colon ? (size_t)(colon - h) : alen;
    if (hlen == 0 || hlen >= sizeof host)
        return -1;
    memcpy(host, h, hlen);
    host[hlen] = '\0';
    int port = colon ? atoi(colon + 1) : 80;
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (inet_pton(AF_INET, strcmp(host, "localhost") == 0 ? "127.0.0.1" : host, &addr.sin_addr) !=
        1)
        return -1;
    char req[2300];
    int n = snprintf(req, sizeof req,
                     "GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: unifaas-hello-epoll\r\n"
                     "Connection: close\r\n\r\n",
                     slash ? slash : "/", host);
    if (n < 0 || (size_t)n >= sizeof req)
        return -1;
    for (int attempt = 0, backoff_ms = 50; attempt < 6; attempt++, backoff_ms *= 2) {
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        struct timeval tv = {.tv_sec = 5};
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
        if (connect(fd, (struct sockaddr*)&addr, sizeof addr) == 0) {
            char resp[64] = {0};
            int status = -1;
            if (write_all(fd, req, (size_t)n) == 0 && read(fd, resp, sizeof resp - 1) > 0)
                sscanf(resp, "HTTP/1.%*d %d", &status);
            close(fd);
            if (status < 200 || status > 299)
                fprintf(stderr, "hello-epoll: callback %s answered %d\n", text, status);
            return 0;
        }
        close(fd);
        usleep((useconds_t)backoff_ms * 1000);
    }
    fprintf(stderr, "hello-epoll: callback %s: connect failed\n", text);
    return -1;
}

// ---------------------------------------------------------------------------------------------

static void build_responses(void) {
    response_11_len = (size_t)snprintf(response_11, sizeof response_11,
                                       "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                                       "Content-Length: %zu\r\nConnection: keep-alive\r\n\r\n%s",
                                       sizeof kBody - 1, kBody);
    head_11_len = response_11_len - (sizeof kBody - 1);
    response_4k_len = (size_t)snprintf(response_4k, sizeof response_4k,
                                       "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                                       "Content-Length: 4096\r\nConnection: keep-alive\r\n\r\n");
    memset(response_4k + response_4k_len, 'x', 4096);
    response_4k_len += 4096;
    response_10_len = (size_t)snprintf(response_10, sizeof response_10,
                                       "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                                       "Content-Length: %zu\r\nConnection: close\r\n\r\n%s",
                                       sizeof kBody - 1, kBody);
}

static int listen_on(int port) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return -1;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr = {.sin_family = AF_INET,
                               .sin_port = htons((uint16_t)port),
                               .sin_addr.s_addr = htonl(INADDR_ANY)};
    if (bind(fd, (struct sockaddr*)&addr, sizeof addr) != 0 || listen(fd, 1024) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static void accept_all(int ep, int lfd) {
    for (;;) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0)
            return;  // EAGAIN: no more; anything else: try again on the next event
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        struct conn* c = malloc(sizeof *c);
        if (!c) {
            close(fd);
            continue;
        }
        c->fd = fd;
        c->len = 0;
        c->body_left = 0;
        struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP, .data.ptr = c};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) != 0) {
            close(fd);
            free(c);
        }
    }
}

static void drop(struct conn* c) {
    close(c->fd);  // also removes it from the epoll set
    free(c);
}

static void on_readable(struct conn* c) {
    for (;;) {
        ssize_t n = read(c->fd, c->buf + c->len, sizeof c->buf - c->len);
        if (n > 0) {
            c->len += (size_t)n;
            if (serve(c) != 0) {
                drop(c);
                return;
            }
            if (c->len < sizeof c->buf && (size_t)n < sizeof c->buf / 2)
                return;  // a short read: the socket is drained (level-triggered anyway)
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN)
            return;
        drop(c);  // EOF or error
        return;
    }
}

int main(int argc, char** argv) {
    signal(SIGPIPE, SIG_IGN);
    signal(SIGTERM, on_signal);
    signal(SIGINT, on_signal);
    setvbuf(stderr, NULL, _IONBF, 0);
    build_responses();
    const char* port_env = getenv("PORT");
    int port = port_env ? atoi(port_env) : 8080;
    int lfd = listen_on(port);
    if (lfd < 0) {
        perror("hello-epoll: listen");
        return 1;
    }
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event lev = {.events = EPOLLIN, .data.ptr = NULL};
    if (ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &lev) != 0) {
        perror("hello-epoll: epoll");
        return 1;
    }
    const char* callback =
        argc > 1 && strncmp(argv[1], "http://", 7) == 0 ? argv[1] : getenv("UNIFAAS_CALLBACK");
    fprintf(stderr, "hello-epoll: listening on :%d\n", port);
    if (callback && *callback)
        call_back(callback);  // the listening socket queues connections meanwhile
    struct epoll_event events[MAX_EVENTS];
    for (;;) {
        int n = epoll_wait(ep, events, MAX_EVENTS, -1);
        for (int i = 0; i < n; i++) {
            if (events[i].data.ptr == NULL)
                accept_all(ep, lfd);
            else
                on_readable(events[i].data.ptr);
        }
    }
}
