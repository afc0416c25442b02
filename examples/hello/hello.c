// hello: the example unifaas function, a tiny static HTTP/1.1 server.
//
// It runs as a container's ENTRYPOINT and (later) inside VM guests, so it depends on nothing but
// libc: no DNS, no config files. It listens on 0.0.0.0:$PORT (default 8080), serves every
// connection on its own thread with keep-alive, and once listening calls its readiness callback
// (argv[1] when it is an http:// URL, else $UNIFAAS_CALLBACK) with a GET.
//
// Routes: /hello, /echo[/...], /sleep?ms=N, /uuid (a fresh random UUID from the kernel), /time
// (CLOCK_REALTIME as SECONDS.NANOSECONDS), /; everything else is 404.
// Streaming routes (the answer leaves piece by piece as it is made):
//   /sse?n=N[&ms=M][&gate=1]  N server-sent events "data: <i>" in a chunked response; between
//                             events a pause of M ms, or with gate=1 a wait until /sse-ack is
//                             called (a test sees each event before the next one is made)
//   /sse-ack                  lets one gated /sse send its next event
//   /bytes?n=N[&mode=length|chunked|close][&stall=K]  N bytes of 'x' in 64 KiB writes, with
//                             Content-Length, chunked, or until close; stall=K: after K bytes
//                             stop writing and hold the connection until the peer closes it
//   /status?code=C            an answer with status C and no body (e.g. 204, 304)
//   /chunked-echo             the request body back as a chunked response of up to 3 chunks
//   /ws                       a WebSocket (RFC 6455) that echoes every message back, answers pings,
//                             and closes when the client does
//   /upload                   reads the request body (any size, Content-Length or chunked) as it
//                             arrives and drops it; answers "bytes N fnv1a64 H" (its FNV-1a hash)
// Test hooks: HELLO_EXIT_BEFORE_READY=1 exits with status 3 before listening;
//             HELLO_NO_CALLBACK=1 never calls back;
//             HELLO_ALLOCATE_MIB=N touches N MiB of memory before listening (memory limits).
//             HELLO_EXIT_AFTER_CALLBACK=1 exits with status 4 once the callback was answered;
//             HELLO_GARBAGE=1 answers every request with bytes that are not HTTP.
//             HELLO_CRASH_BEFORE_READY=1 dies of a real SIGSEGV before listening (a fault kills
//             even a PID 1, which ignores signals sent to it).
// Probe route, for the isolation tests only (what the function's network lets it reach):
//   /connect?host=A.B.C.D&port=P  tries one TCP connect (1 s at most) and answers 200 with
//                             "connected" or "failed: <reason>" (refused, unreachable, timeout).
//
// Each response leaves in one write() on a TCP_NODELAY socket: a header write followed by a body
// write costs 40 ms per request (Nagle + delayed ACK).
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

enum {
    MAX_HEADER_BYTES = 64 * 1024,
    MAX_BODY_BYTES = 64 * 1024 * 1024,
    IDLE_TIMEOUT_S = 300,
    MAX_SLEEP_MS = 10 * 60 * 1000,
    CALLBACK_ATTEMPTS = 6,
};

// ---------------------------------------------------------------------------------------------
// A growable byte buffer.

struct buf {
    char* data;
    size_t len;
    size_t cap;
};

static int buf_reserve(struct buf* b, size_t extra) {
    if (b->len + extra + 1 <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + extra + 1)
        cap *= 2;
    char* data = realloc(b->data, cap);
    if (!data)
        return -1;
    b->data = data;
    b->cap = cap;
    return 0;
}

static int buf_append(struct buf* b, const char* data, size_t len) {
    if (buf_reserve(b, len) != 0)
        return -1;
    memcpy(b->data + b->len, data, len);
    b->len += len;
    b->data[b->len] = '\0';
    return 0;
}

static int buf_printf(struct buf* b, const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0 || buf_reserve(b, (size_t)n) != 0)
        return -1;
    va_start(ap, fmt);
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
    return 0;
}

// Drops the first n bytes (the request just served), keeping pipelined bytes that follow.
static void buf_consume(struct buf* b, size_t n) {
    memmove(b->data, b->data + n, b->len - n);
    b->len -= n;
    if (b->data)
        b->data[b->len] = '\0';
}

// ---------------------------------------------------------------------------------------------
// Socket helpers.

static int env_is(const char* name, const char* value);

static int write_all(int fd, const char* data, size_t len) {
    while (len > 0) {
        ssize_t n = write(fd, data, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        data += n;
        len -= (size_t)n;
    }
    return 0;
}

// Reads more bytes into b; returns the count, 0 on EOF, -1 on error or idle timeout.
static ssize_t read_more(int fd, struct buf* b) {
    if (buf_reserve(b, 16384) != 0)
        return -1;
    for (;;) {
        ssize_t n = read(fd, b->data + b->len, b->cap - b->len - 1);
        if (n < 0 && errno == EINTR)
            continue;
        if (n > 0) {
            b->len += (size_t)n;
            b->data[b->len] = '\0';
        }
        return n;
    }
}

static void set_timeouts(int fd, int seconds) {
    struct timeval tv = {.tv_sec = seconds, .tv_usec = 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}

static void sleep_ms(long ms) {
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

// ---------------------------------------------------------------------------------------------
// Requests.

struct request {
    char method[16];
    char target[8192];  // path + "?" + query as received
    char* path;         // points into target
    char* query;        // points into target ("" when absent)
    int http_minor;     // 1.0 or 1.1
    int keep_alive;
    int expect_continue;
    int chunked;
    long long content_length;  // -1 when absent
    struct buf body;
    char ws_key[64];                  // Sec-WebSocket-Key ("" when absent)
    unsigned long long upload_bytes;  // /upload: the body is counted and hashed, not kept
    unsigned long long upload_hash;
};

static const char* find_header_end(const struct buf* b) {
    return b->len ? memmem(b->data, b->len, "\r\n\r\n", 4) : NULL;
}

// Case-insensitive search for a token inside a comma-separated header value.
static int value_has_token(const char* value, const char* token) {
    size_t tlen = strlen(token);
    for (const char* p = value; *p;) {
        while (*p == ' ' || *p == '\t' || *p == ',')
            p++;
        const char* end = p;
        while (*end && *end != ',')
            end++;
        const char* last = end;
        while (last > p && (last[-1] == ' ' || last[-1] == '\t'))
            last--;
        if ((size_t)(last - p) == tlen && strncasecmp(p, token, tlen) == 0)
            return 1;
        p = end;
    }
    return 0;
}

static int parse_request_line(struct request* r, char* line) {
    char version[16];
    if (sscanf(line, "%15s %8191s %15s", r->method, r->target, version) != 3)
        return -1;
    if (strcmp(version, "HTTP/1.1") == 0) {
        r->http_minor = 1;
    } else if (strcmp(version, "HTTP/1.0") == 0) {
        r->http_minor = 0;
    } else {
        return -1;
    }
    r->keep_alive = r->http_minor == 1;
    r->path = r->target;
    char* q = strchr(r->target, '?');
    if (q) {
        *q = '\0';
        r->query = q + 1;
    } else {
        r->query = r->target + strlen(r->target);
    }
    return 0;
}

static void parse_header(struct request* r, char* line) {
    char* colon = strchr(line, ':');
    if (!colon)
        return;
    *colon = '\0';
    char* value = colon + 1;
    while (*value == ' ' || *value == '\t')
        value++;
    if (strcasecmp(line, "Content-Length") == 0) {
        r->content_length = strtoll(value, NULL, 10);
    } else if (strcasecmp(line, "Connection") == 0) {
        if (value_has_token(value, "close"))
            r->keep_alive = 0;
        if (value_has_token(value, "keep-alive"))
            r->keep_alive = 1;
    } else if (strcasecmp(line, "Expect") == 0) {
        r->expect_continue = value_has_token(value, "100-continue");
    } else if (strcasecmp(line, "Sec-WebSocket-Key") == 0) {
        snprintf(r->ws_key, sizeof r->ws_key, "%s", value);
    } else if (strcasecmp(line, "Transfer-Encoding") == 0) {
        r->chunked = value_has_token(value, "chunked");
    }
}

// Parses the request line and headers in b->data[0, head_len). Returns 0 or -1 (bad request).
static int parse_head(struct request* r, struct buf* b, size_t head_len) {
    r->content_length = -1;
    char* head = strndup(b->data, head_len);
    if (!head)
        return -1;
    char* save = NULL;
    char* line = strtok_r(head, "\r\n", &save);
    int rc = line ? parse_request_line(r, line) : -1;
    while (rc == 0 && (line = strtok_r(NULL, "\r\n", &save)) != NULL)
        parse_header(r, line);
    free(head);
    if (rc == 0 && (r->content_length < -1 ||
                    (r->content_length > MAX_BODY_BYTES && strcmp(r->path, "/upload") != 0)))
        rc = -1;
    return rc;
}

// Makes sure b holds at least n bytes; returns -1 when the peer went away first.
static int fill_to(int fd, struct buf* b, size_t n) {
    while (b->len < n) {
        if (read_more(fd, b) <= 0)
            return -1;
    }
    return 0;
}

// The size line of a chunk at b->data[*pos] (extensions ignored); advances *pos past it.
static int read_chunk_size(int fd, struct buf* b, size_t* pos, unsigned long long* size) {
    char* eol;
    while ((eol = memmem(b->data + *pos, b->len - *pos, "\r\n", 2)) == NULL) {
        if (b->len - *pos > 1024 || read_more(fd, b) <= 0)
            return -1;
    }
    *size = strtoull(b->data + *pos, NULL, 16);
    *pos = (size_t)(eol - b->data) + 2;
    return 0;
}

// The trailer section after the last chunk: header lines up to an empty one; advances *pos past.
static int skip_trailer(int fd, struct buf* b, size_t* pos) {
    for (;;) {
        char* eol;
        while ((eol = memmem(b->data + *pos, b->len - *pos, "\r\n", 2)) == NULL) {
            if (b->len - *pos > MAX_HEADER_BYTES || read_more(fd, b) <= 0)
                return -1;
        }
        size_t line_len = (size_t)(eol - (b->data + *pos));
        *pos += line_len + 2;
        if (line_len == 0)
            return 0;
    }
}

// Decodes a chunked body that starts at b->data[*pos]; advances *pos past the trailer.
static int read_chunked_body(int fd, struct buf* b, size_t* pos, struct buf* body) {
    for (;;) {
        unsigned long long size;
        if (read_chunk_size(fd, b, pos, &size) != 0)
            return -1;
        if (size == 0)
            break;
        if (body->len + size > MAX_BODY_BYTES)
            return -1;
        if (fill_to(fd, b, *pos + size + 2) != 0)
            return -1;
        if (buf_append(body, b->data + *pos, size) != 0)
            return -1;
        *pos += size + 2;
    }
    return skip_trailer(fd, b, pos);
}

// /upload: takes n body bytes from b[*pos...] and the socket into the count and hash, keeping
// the buffer small (what was hashed is dropped).
static int hash_body_bytes(int fd, struct buf* b, size_t* pos, unsigned long long n,
                           struct request* r) {
    while (n > 0) {
        if (*pos == b->len) {
            buf_consume(b, *pos);
            *pos = 0;
            if (read_more(fd, b) <= 0)
                return -1;
        }
        size_t take = b->len - *pos < n ? b->len - *pos : (size_t)n;
        for (size_t i = 0; i < take; i++)
            r->upload_hash = (r->upload_hash ^ (unsigned char)b->data[*pos + i]) * 0x100000001b3ULL;
        *pos += take;
        n -= take;
        r->upload_bytes += take;
    }
    return 0;
}

// /upload: the body (Content-Length or chunked) from b[*pos...] on, counted and hashed.
static int read_upload_body(int fd, struct buf* b, size_t* pos, struct request* r) {
    r->upload_hash = 0xcbf29ce484222325ULL;
    if (!r->chunked)
        return hash_body_bytes(fd, b, pos, r->content_length > 0 ? r->content_length : 0, r);
    for (;;) {
        unsigned long long size;
        if (read_chunk_size(fd, b, pos, &size) != 0)
            return -1;
        if (size == 0)
            break;
        if (hash_body_bytes(fd, b, pos, size, r) != 0 || fill_to(fd, b, *pos + 2) != 0)
            return -1;
        *pos += 2;
    }
    return skip_trailer(fd, b, pos);
}

// Reads one whole request. Returns 1 on success, 0 on a clean EOF between requests, -1 on error
// (after answering 400 where that makes sense).
static int read_request(int fd, struct buf* b, struct request* r) {
    const char* end;
    while ((end = find_header_end(b)) == NULL) {
        if (b->len > MAX_HEADER_BYTES)
            return -1;
        ssize_t n = read_more(fd, b);
        if (n == 0 && b->len == 0)
            return 0;
        if (n <= 0)
            return -1;
    }
    size_t head_len = (size_t)(end - b->data) + 4;
    if (parse_head(r, b, head_len) != 0)
        return -1;
    if (r->expect_continue && r->http_minor == 1) {
        static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
        if (write_all(fd, cont, sizeof cont - 1) != 0)
            return -1;
    }
    size_t pos = head_len;
    if (strcmp(r->path, "/upload") == 0) {
        if (read_upload_body(fd, b, &pos, r) != 0)
            return -1;
    } else if (r->chunked) {
        if (read_chunked_body(fd, b, &pos, &r->body) != 0)
            return -1;
    } else if (r->content_length > 0) {
        size_t len = (size_t)r->content_length;
        if (fill_to(fd, b, head_len + len) != 0)
            return -1;
        if (buf_append(&r->body, b->data + head_len, len) != 0)
            return -1;
        pos += len;
    }
    buf_consume(b, pos);
    return 1;
}

// ---------------------------------------------------------------------------------------------
// Routes.

struct response {
    int status;
    struct buf body;
};

static const char* reason(int status) {
    switch (status) {
        case 200:
            return "OK";
        case 400:
            return "Bad Request";
        case 404:
            return "Not Found";
        case 204:
            return "No Content";
        case 304:
            return "Not Modified";
        default:
            return "Error";
    }
}

static int path_is(const char* path, const char* route) {
    size_t n = strlen(route);
    return strncmp(path, route, n) == 0 && (path[n] == '\0' || path[n] == '/');
}

// Value of key in a query string ("a=1&b=2"), copied into out; returns 0 when found.
static int query_param(const char* query, const char* key, char* out, size_t out_len) {
    size_t klen = strlen(key);
    for (const char* p = query; *p;) {
        const char* end = strchr(p, '&');
        if (!end)
            end = p + strlen(p);
        if ((size_t)(end - p) > klen && strncmp(p, key, klen) == 0 && p[klen] == '=') {
            size_t vlen = (size_t)(end - p) - klen - 1;
            if (vlen >= out_len)
                vlen = out_len - 1;
            memcpy(out, p + klen + 1, vlen);
            out[vlen] = '\0';
            return 0;
        }
        p = *end ? end + 1 : end;
    }
    return -1;
}

static void route_echo(const struct request* r, struct response* res) {
    res->status = 200;
    buf_printf(&res->body, "method: %s\npath: %s\nquery: %s\n", r->method, r->path, r->query);
    const char* instance = getenv("UNIFAAS_INSTANCE");
    if (instance)
        buf_printf(&res->body, "instance: %s\n", instance);
    buf_printf(&res->body, "body: ");
    buf_append(&res->body, r->body.data ? r->body.data : "", r->body.len);
    buf_printf(&res->body, "\n");
}

static void route_sleep(const struct request* r, struct response* res) {
    char value[32];
    char* end = NULL;
    long ms = query_param(r->query, "ms", value, sizeof value) == 0 ? strtol(value, &end, 10) : -1;
    if (ms < 0 || ms > MAX_SLEEP_MS || end == value || (end && *end)) {
        res->status = 400;
        buf_printf(&res->body, "sleep needs ?ms=N with 0 <= N <= %d\n", MAX_SLEEP_MS);
        return;
    }
    sleep_ms(ms);
    res->status = 200;
    buf_printf(&res->body, "slept %ld ms\n", ms);
}

// The kernel's random UUID: tells apart VMs restored from one snapshot (each must reseed).
static void route_uuid(struct response* res) {
    char uuid[64] = {0};
    FILE* f = fopen("/proc/sys/kernel/random/uuid", "r");
    if (!f || !fgets(uuid, sizeof uuid, f)) {
        res->status = 500;
        buf_printf(&res->body, "cannot read /proc/sys/kernel/random/uuid: %s\n", strerror(errno));
    } else {
        res->status = 200;
        buf_printf(&res->body, "%s", uuid);
    }
    if (f)
        fclose(f);
}

static void route_time(struct response* res) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    res->status = 200;
    buf_printf(&res->body, "%lld.%09ld\n", (long long)ts.tv_sec, ts.tv_nsec);
}

// One TCP connect with a 1 s bound; the answer names the outcome (isolation tests).
static void route_connect(const struct request* r, struct response* res) {
    char host[64], port_text[16];
    struct sockaddr_in to = {.sin_family = AF_INET};
    long port = -1;
    if (query_param(r->query, "host", host, sizeof host) == 0 &&
        query_param(r->query, "port", port_text, sizeof port_text) == 0)
        port = strtol(port_text, NULL, 10);
    if (port <= 0 || port > 65535 || inet_pton(AF_INET, host, &to.sin_addr) != 1) {
        res->status = 400;
        buf_printf(&res->body, "connect needs ?host=A.B.C.D&port=P\n");
        return;
    }
    to.sin_port = htons((uint16_t)port);
    res->status = 200;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int error = fd < 0 ? errno : 0;
    if (fd >= 0 && connect(fd, (struct sockaddr*)&to, sizeof to) != 0) {
        error = errno;
        if (error == EINPROGRESS) {
            struct pollfd p = {.fd = fd, .events = POLLOUT};
            socklen_t len = sizeof error;
            error = poll(&p, 1, 1000) == 1 ? 0 : ETIMEDOUT;
            if (!error && getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &len) != 0)
                error = errno;
        }
    }
    if (error)
        buf_printf(&res->body, "failed: %s\n", strerror(error));
    else
        buf_printf(&res->body, "connected\n");
    if (fd >= 0)
        close(fd);
}

static void route(const struct request* r, struct response* res) {
    if (strcmp(r->path, "/hello") == 0 || strcmp(r->path, "/sse-ack") == 0) {
        res->status = 200;
        buf_printf(&res->body, "hello from unifaas\n");
    } else if (path_is(r->path, "/echo")) {
        route_echo(r, res);
    } else if (strcmp(r->path, "/upload") == 0) {
        res->status = 200;
        buf_printf(&res->body, "bytes %llu fnv1a64 %016llx\n", r->upload_bytes, r->upload_hash);
    } else if (strcmp(r->path, "/sleep") == 0) {
        route_sleep(r, res);
    } else if (strcmp(r->path, "/uuid") == 0) {
        route_uuid(res);
    } else if (strcmp(r->path, "/time") == 0) {
        route_time(res);
    } else if (strcmp(r->path, "/connect") == 0) {
        route_connect(r, res);
    } else if (strcmp(r->path, "/") == 0) {
        res->status = 200;
        buf_printf(&res->body, "unifaas hello function\n");
    } else {
        res->status = 404;
        buf_printf(&res->body, "not found: %s\n", r->path);
    }
}

// Header and body go out together in one write.
static int send_response(int fd, const struct request* r, const struct response* res) {
    struct buf out = {0};
    int head_only = strcmp(r->method, "HEAD") == 0;
    int rc = buf_printf(&out,
                        "HTTP/1.%d %d %s\r\nContent-Type: text/plain\r\nContent-Length: %zu\r\n"
                        "Connection: %s\r\n\r\n",
                        r->http_minor, res->status, reason(res->status), res->body.len,
                        r->keep_alive ? "keep-alive" : "close");
    if (rc == 0 && !head_only && res->body.len)
        rc = buf_append(&out, res->body.data, res->body.len);
    if (rc == 0)
        rc = write_all(fd, out.data, out.len);
    free(out.data);
    return rc;
}

static void send_bad_request(int fd) {
    static const char msg[] =
        "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: 12\r\n"
        "Connection: close\r\n\r\nbad request\n";
    write_all(fd, msg, sizeof msg - 1);
}

// Streaming routes.

static pthread_mutex_t sse_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t sse_cv = PTHREAD_COND_INITIALIZER;
static long sse_tokens;  // /sse-ack calls not yet used by a gated /sse

enum { SSE_GATE_WAIT_S = 60, BYTES_WRITE = 64 * 1024 };

static int sse_wait_for_ack(void) {
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += SSE_GATE_WAIT_S;
    pthread_mutex_lock(&sse_mu);
    int rc = 0;
    while (sse_tokens == 0 && rc == 0)
        rc = pthread_cond_timedwait(&sse_cv, &sse_mu, &until);
    if (sse_tokens > 0)
        sse_tokens--;
    pthread_mutex_unlock(&sse_mu);
    return rc == 0 ? 0 : -1;
}

static long query_long(const struct request* r, const char* key, long fallback) {
    char value[32];
    if (query_param(r->query, key, value, sizeof value) != 0)
        return fallback;
    return strtol(value, NULL, 10);
}

static int write_head(int fd, const struct request* r, int status, const char* type,
                      const char* framing) {
    struct buf head = {0};
    int rc =
        buf_printf(&head, "HTTP/1.1 %d %s\r\nContent-Type: %s\r\n%s%s\r\n", status, reason(status),
                   type, framing, r->keep_alive ? "" : "Connection: close\r\n");
    if (rc == 0)
        rc = write_all(fd, head.data, head.len);
    free(head.data);
    return rc;
}

// One chunk (size line, data, CRLF) in one write; len 0 writes the last chunk.
static int write_chunk(int fd, const char* data, size_t len) {
    struct buf out = {0};
    int rc = buf_printf(&out, "%zx\r\n", len);
    if (rc == 0 && len)
        rc = buf_append(&out, data, len);
    if (rc == 0)
        rc = buf_append(&out, "\r\n", 2);
    if (rc == 0)
        rc = write_all(fd, out.data, out.len);
    free(out.data);
    return rc;
}

static int stream_sse(int fd, const struct request* r) {
    long n = query_long(r, "n", 3), ms = query_long(r, "ms", 0), gate = query_long(r, "gate", 0);
    if (n < 0 || ms < 0 || ms > MAX_SLEEP_MS)
        return -1;
    if (write_head(fd, r, 200, "text/event-stream", "Transfer-Encoding: chunked\r\n") != 0)
        return -1;
    for (long i = 1; i <= n; i++) {
        char event[64];
        int len = snprintf(event, sizeof event, "data: %ld\n\n", i);
        if (write_chunk(fd, event, (size_t)len) != 0)
            return -1;
        if (i == n)
            break;
        if (gate && sse_wait_for_ack() != 0)
            return -1;
        if (!gate)
            sleep_ms(ms);
    }
    return write_chunk(fd, NULL, 0);
}

static int stream_bytes(int fd, const struct request* r, int* keep_alive) {
    static char block[BYTES_WRITE];
    long long n = 0, stall = -1;
    char value[32];
    if (query_param(r->query, "n", value, sizeof value) == 0)
        n = strtoll(value, NULL, 10);
    if (query_param(r->query, "stall", value, sizeof value) == 0)
        stall = strtoll(value, NULL, 10);
    char mode[16] = "length";
    query_param(r->query, "mode", mode, sizeof mode);
    if (n < 0)
        return -1;
    memset(block, 'x', sizeof block);
    int chunked = strcmp(mode, "chunked") == 0, until_close = strcmp(mode, "close") == 0;
    char framing[64];
    if (chunked)
        snprintf(framing, sizeof framing, "Transfer-Encoding: chunked\r\n");
    else if (until_close)
        snprintf(framing, sizeof framing, "Connection: close\r\n");
    else
        snprintf(framing, sizeof framing, "Content-Length: %lld\r\n", n);
    if (until_close)
        *keep_alive = 0;
    if (write_head(fd, r, 200, "application/octet-stream", framing) != 0)
        return -1;
    if (strcmp(r->method, "HEAD") == 0)
        return 0;
    for (long long sent = 0; sent < n;) {
        size_t len = n - sent < BYTES_WRITE ? (size_t)(n - sent) : BYTES_WRITE;
        if (stall >= 0 && sent + (long long)len > stall)
            len = (size_t)(stall - sent);
        if (len == 0) {
            char c;
            while (recv(fd, &c, 1, 0) > 0) {  // hold until the peer gives up
            }
            return -1;
        }
        if ((chunked ? write_chunk(fd, block, len) : write_all(fd, block, len)) != 0)
            return -1;
        sent += (long long)len;
    }
    return chunked ? write_chunk(fd, NULL, 0) : 0;
}

static int stream_chunked_echo(int fd, const struct request* r) {
    if (write_head(fd, r, 200, "application/octet-stream", "Transfer-Encoding: chunked\r\n") != 0)
        return -1;
    size_t len = r->body.len, part = len / 3 + 1;
    for (size_t at = 0; at < len; at += part) {
        size_t n = len - at < part ? len - at : part;
        if (write_chunk(fd, r->body.data + at, n) != 0)
            return -1;
    }
    return write_chunk(fd, NULL, 0);
}

// ---------------------------------------------------------------------------------------------
// /ws: a WebSocket echo (RFC 6455), SHA-1 and base64 for the handshake included.

static uint32_t rol32(uint32_t x, int n) {
    return (x << n) | (x >> (32 - n));
}

static void sha1(const unsigned char* data, size_t len, unsigned char out[20]) {
    uint32_t h[5] = {0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0};
    size_t total = ((len + 8) / 64 + 1) * 64;
    unsigned char* msg = calloc(total, 1);
    if (!msg)
        abort();
    memcpy(msg, data, len);
    msg[len] = 0x80;
    for (int i = 0; i < 8; i++)
        msg[total - 1 - i] = (unsigned char)(((uint64_t)len * 8) >> (8 * i));
    for (size_t at = 0; at < total; at += 64) {
        uint32_t w[80];
        for (int i = 0; i < 16; i++)
            w[i] = (uint32_t)msg[at + 4 * i] << 24 | (uint32_t)msg[at + 4 * i + 1] << 16 |
                   (uint32_t)msg[at + 4 * i + 2] << 8 | msg[at + 4 * i + 3];
        for (int i = 16; i < 80; i++)
            w[i] = rol32(w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16], 1);
        uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4];
        for (int i = 0; i < 80; i++) {
            uint32_t f, k;
            if (i < 20) {
                f = (b & c) | (~b & d), k = 0x5A827999;
            } else if (i < 40) {
                f = b ^ c ^ d, k = 0x6ED9EBA1;
            } else if (i < 60) {
                f = (b & c) | (b & d) | (c & d), k = 0x8F1BBCDC;
            } else {
                f = b ^ c ^ d, k = 0xCA62C1D6;
            }
            uint32_t t = rol32(a, 5) + f + e + k + w[i];
            e = d, d = c, c = rol32(b, 30), b = a, a = t;
        }
        h[0] += a, h[1] += b, h[2] += c, h[3] += d, h[4] += e;
    }
    free(msg);
    for (int i = 0; i < 20; i++)
        out[i] = (unsigned char)(h[i / 4] >> (24 - 8 * (i % 4)));
}

static void base64(const unsigned char* in, size_t len, char* out) {
    static const char abc[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for (size_t i = 0; i < len; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (i + 1 < len ? (uint32_t)in[i + 1] << 8 : 0) |
                     (i + 2 < len ? in[i + 2] : 0);
        *out++ = abc[v >> 18 & 63];
        *out++ = abc[v >> 12 & 63];
        *out++ = i + 1 < len ? abc[v >> 6 & 63] : '=';
        *out++ = i + 2 < len ? abc[v & 63] : '=';
    }
    *out = '\0';
}

// Writes one unmasked frame (FIN set) with the given opcode.
static int ws_send(int fd, int opcode, const char* data, size_t len) {
    unsigned char head[10];
    size_t n = 0;
    head[n++] = (unsigned char)(0x80 | opcode);
    if (len < 126) {
        head[n++] = (unsigned char)len;
    } else if (len < 65536) {
        head[n++] = 126, head[n++] = (unsigned char)(len >> 8), head[n++] = (unsigned char)len;
    } else {
        head[n++] = 127;
        for (int i = 7; i >= 0; i--)
            head[n++] = (unsigned char)((uint64_t)len >> (8 * i));
    }
    return write_all(fd, (const char*)head, n) == 0 && write_all(fd, data, len) == 0 ? 0 : -1;
}

// The handshake, then frames until a close frame or the end of the connection.
static void serve_websocket(int fd, const struct request* r, struct buf* in) {
    static const char guid[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    char keyed[sizeof r->ws_key + sizeof guid], accept[32], head[256];
    unsigned char digest[20];
    if (!r->ws_key[0]) {
        send_bad_request(fd);
        return;
    }
    int klen = snprintf(keyed, sizeof keyed, "%s%s", r->ws_key, guid);
    sha1((const unsigned char*)keyed, (size_t)klen, digest);
    base64(digest, sizeof digest, accept);
    int hlen = snprintf(head, sizeof head,
                        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                        "Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n",
                        accept);
    if (write_all(fd, head, (size_t)hlen) != 0)
        return;
    set_timeouts(fd, 300);
    for (;;) {
        if (fill_to(fd, in, 2) != 0)
            return;
        unsigned char* p = (unsigned char*)in->data;
        int opcode = p[0] & 0x0f, masked = p[1] & 0x80;
        uint64_t len = p[1] & 0x7f;
        size_t at = 2;
        if (len >= 126) {
            size_t extra = len == 126 ? 2 : 8;
            if (fill_to(fd, in, at + extra) != 0)
                return;
            p = (unsigned char*)in->data;
            len = 0;
            for (size_t i = 0; i < extra; i++)
                len = len << 8 | p[at + i];
            at += extra;
        }
        if (len > MAX_BODY_BYTES)
            return;
        if (fill_to(fd, in, at + (masked ? 4 : 0) + len) != 0)
            return;
        p = (unsigned char*)in->data;
        unsigned char mask[4] = {0};
        if (masked) {
            memcpy(mask, p + at, 4);
            at += 4;
        }
        for (uint64_t i = 0; i < len; i++)
            p[at + i] ^= mask[i % 4];
        int rc = 0;
        if (opcode == 0x8) {  // close: echoed, then the end
            ws_send(fd, 0x8, (const char*)p + at, (size_t)len);
            return;
        }
        if (opcode == 0x9) {
            rc = ws_send(fd, 0xA, (const char*)p + at, (size_t)len);
        } else if (opcode != 0xA) {  // text, binary, continuation: echoed as they came
            rc = ws_send(fd, opcode, (const char*)p + at, (size_t)len);
        }
        buf_consume(in, at + (size_t)len);
        if (rc != 0)
            return;
    }
}

// Serves the streaming routes; 0 when `r` is not one of them, 1 when answered, -1 on an error
// (the connection ends). *keep_alive is cleared when the answer ends with the connection.
static int serve_streaming(int fd, const struct request* r, int* keep_alive) {
    if (strcmp(r->path, "/sse") == 0)
        return stream_sse(fd, r) == 0 ? 1 : -1;
    if (strcmp(r->path, "/sse-ack") == 0) {
        pthread_mutex_lock(&sse_mu);
        sse_tokens++;
        pthread_cond_signal(&sse_cv);
        pthread_mutex_unlock(&sse_mu);
        return 0;  // answered like /hello by the ordinary routes
    }
    if (strcmp(r->path, "/bytes") == 0)
        return stream_bytes(fd, r, keep_alive) == 0 ? 1 : -1;
    if (strcmp(r->path, "/chunked-echo") == 0)
        return stream_chunked_echo(fd, r) == 0 ? 1 : -1;
    if (strcmp(r->path, "/status") == 0) {
        long code = query_long(r, "code", 204);
        if (code < 200 || code > 599)
            return -1;
        char head[128];
        int len = snprintf(head, sizeof head, "HTTP/1.1 %ld %s\r\n%s\r\n", code, reason((int)code),
                           r->keep_alive ? "" : "Connection: close\r\n");
        return write_all(fd, head, (size_t)len) == 0 ? 1 : -1;
    }
    return 0;
}

static void* serve_connection(void* arg) {
    int fd = (int)(long)arg;
    struct buf in = {0};
    for (;;) {
        struct request req = {0};
        int rc = read_request(fd, &in, &req);
        if (rc <= 0) {
            if (rc < 0 && in.len > 0)
                send_bad_request(fd);
            free(req.body.data);
            break;
        }
        if (env_is("HELLO_GARBAGE", "1")) {
            static const char garbage[] = "this is not HTTP\r\n\r\n";
            write_all(fd, garbage, sizeof garbage - 1);
            free(req.body.data);
            break;
        }
        if (strcmp(req.path, "/ws") == 0) {
            serve_websocket(fd, &req, &in);
            free(req.body.data);
            break;
        }
        int keep_alive = req.keep_alive;
        int streamed = serve_streaming(fd, &req, &keep_alive);
        if (streamed != 0) {
            free(req.body.data);
            if (streamed < 0 || !keep_alive)
                break;
            continue;
        }
        struct response res = {0};
        route(&req, &res);
        int ok = send_response(fd, &req, &res) == 0 && req.keep_alive;
        free(res.body.data);
        free(req.body.data);
        if (!ok)
            break;
    }
    free(in.data);
    close(fd);
    return NULL;
}

// ---------------------------------------------------------------------------------------------
// Readiness callback: GET http://host[:port]/path, IPv4 literals only (the host is the gateway or
// the daemon's address, never a name: a static binary has no resolver).

struct url {
    char host[64];
    int port;
    char path[2048];
};

static int parse_url(const char* text, struct url* u) {
    if (strncmp(text, "http://", 7) != 0)
        return -1;
    const char* host = text + 7;
    const char* slash = strchr(host, '/');
    size_t authority_len = slash ? (size_t)(slash - host) : strlen(host);
    const char* colon = memchr(host, ':', authority_len);
    size_t host_len = colon ? (size_t)(colon - host) : authority_len;
    if (host_len == 0 || host_len >= sizeof u->host)
        return -1;
    memcpy(u->host, host, host_len);
    u->host[host_len] = '\0';
    u->port = colon ? atoi(colon + 1) : 80;
    if (u->port <= 0 || u->port > 65535)
        return -1;
    snprintf(u->path, sizeof u->path, "%s", slash ? slash : "/");
    return 0;
}

static int connect_ipv4(const struct url* u) {
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)u->port)};
    const char* host = strcmp(u->host, "localhost") == 0 ? "127.0.0.1" : u->host;
    if (inet_pton(AF_INET, host, &addr.sin_addr) != 1)
        return -2;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    set_timeouts(fd, 5);
    if (connect(fd, (struct sockaddr*)&addr, sizeof addr) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

// Sends the GET and returns the response's status code, or -1.
static int http_get(int fd, const struct url* u) {
    struct buf req = {0};
    buf_printf(&req,
               "GET %s HTTP/1.1\r\nHost: %s:%d\r\nUser-Agent: unifaas-hello\r\n"
               "Connection: close\r\n\r\n",
               u->path, u->host, u->port);
    int status = -1;
    if (req.data && write_all(fd, req.data, req.len) == 0) {
        struct buf resp = {0};
        while (!memchr(resp.data ? resp.data : "", '\n', resp.len) && read_more(fd, &resp) > 0) {
        }
        if (resp.data && sscanf(resp.data, "HTTP/1.%*d %d", &status) != 1)
            status = -1;
        free(resp.data);
    }
    free(req.data);
    return status;
}

static void* call_back(void* arg) {
    const char* text = arg;
    struct url u;
    if (parse_url(text, &u) != 0) {
        fprintf(stderr, "hello: bad callback URL %s\n", text);
        return NULL;
    }
    long backoff_ms = 50;
    for (int attempt = 1; attempt <= CALLBACK_ATTEMPTS; attempt++) {
        int fd = connect_ipv4(&u);
        if (fd == -2) {
            fprintf(stderr, "hello: callback host %s is not an IPv4 address\n", u.host);
            return NULL;
        }
        if (fd >= 0) {
            int status = http_get(fd, &u);
            close(fd);
            if (status < 200 || status > 299) {
                fprintf(stderr, "hello: callback %s answered %d\n", text, status);
            }
            return NULL;
        }
        fprintf(stderr, "hello: callback %s: connect failed (%s), attempt %d\n", text,
                strerror(errno), attempt);
        sleep_ms(backoff_ms);
        backoff_ms *= 2;
    }
    return NULL;
}

// ---------------------------------------------------------------------------------------------

static int env_is(const char* name, const char* value) {
    const char* v = getenv(name);
    return v && strcmp(v, value) == 0;
}

static int listen_on(int port) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
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

static int spawn_detached(void* (*fn)(void*), void* arg) {
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&attr, 256 * 1024);
    pthread_t thread;
    int rc = pthread_create(&thread, &attr, fn, arg);
    pthread_attr_destroy(&attr);
    return rc;
}

static void on_signal(int sig) {
    (void)sig;
    _exit(0);  // as PID 1 in a container, SIGTERM would otherwise be ignored
}

static const char* callback_url(int argc, char** argv) {
    if (argc > 1 && strncmp(argv[1], "http://", 7) == 0)
        return argv[1];
    const char* env = getenv("UNIFAAS_CALLBACK");
    return env && *env ? env : NULL;
}

int main(int argc, char** argv) {
    if (env_is("HELLO_EXIT_BEFORE_READY", "1")) {
        fprintf(stderr, "hello: HELLO_EXIT_BEFORE_READY=1, exiting with status 3\n");
        return 3;
    }
    if (env_is("HELLO_CRASH_BEFORE_READY", "1")) {
        fprintf(stderr, "hello: HELLO_CRASH_BEFORE_READY=1, writing through a null pointer\n");
        *(volatile int*)0 = 1;
    }
    const char* allocate = getenv("HELLO_ALLOCATE_MIB");
    if (allocate && *allocate) {
        size_t bytes = (size_t)atoi(allocate) << 20;
        char* block = malloc(bytes);
        for (size_t i = 0; block && i < bytes; i += 4096)
            block[i] = 1;
        fprintf(stderr, "hello: touched %s MiB\n", allocate);
    }
    signal(SIGPIPE, SIG_IGN);
    signal(SIGTERM, on_signal);
    signal(SIGINT, on_signal);

    const char* port_env = getenv("PORT");
    int port = port_env && *port_env ? atoi(port_env) : 8080;
    const char* callback = env_is("HELLO_NO_CALLBACK", "1") ? NULL : callback_url(argc, argv);
    int listener = listen_on(port);
    if (listener < 0) {
        fprintf(stderr, "hello: cannot listen on 0.0.0.0:%d: %s\n", port, strerror(errno));
        return 1;
    }
    fprintf(stderr, "hello: listening on 0.0.0.0:%d, callback %s\n", port,
            callback ? callback : "(none)");
    if (callback && env_is("HELLO_EXIT_AFTER_CALLBACK", "1")) {
        call_back((void*)callback);  // ready, and gone before serving anything
        fprintf(stderr, "hello: HELLO_EXIT_AFTER_CALLBACK=1, exiting with status 4\n");
        _exit(4);
    }
    if (callback)
        spawn_detached(call_back, (void*)callback);

    for (;;) {
        int fd = accept4(listener, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno != EINTR)
                sleep_ms(10);  // EMFILE and friends: do not spin
            continue;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        set_timeouts(fd, IDLE_TIMEOUT_S);
        if (spawn_detached(serve_connection, (void*)(long)fd) != 0)
            close(fd);
    }
}
