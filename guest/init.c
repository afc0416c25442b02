// unifaas-init: PID 1 of a unifaas microVM guest.
//
// The guest image is an initramfs holding only this program (/init), the function (/function)
// and the virtio kernel modules (/lib/modules/*.ko, loaded in the order /lib/modules/order
// lists). There is no shell and no distribution userland, so everything a boot needs happens
// here, in order, without sleeping:
//
//   1. mount /proc, /sys and /dev (devtmpfs); make sure fds 0-2 are the console;
//   2. load the modules with finit_module(2);
//   3. read the unifaas.* parameters from /proc/cmdline;
//   4. bring lo up and configure eth0 (address, netmask, up, default route) with ioctls;
//   5. optionally mount a root filesystem (unifaas.root=) and chroot into it for the function;
//   6. fork+exec the function with argv[1] = callback URL, UNIFAAS_CALLBACK and PORT set;
//   7. reap zombies; when the function exits, log its status and power the VM off, so the
//      hypervisor process exits and the host notices.
//
// Before the function starts, init forks a restore listener (unless unifaas.restore=off): it
// waits on UDP port 8125 for the host's restore message, which arrives only when this VM is a
// clone restored from a snapshot. It then sets the clock, feeds and reseeds the kernel RNG, moves
// eth0 to the clone's own address, acknowledges, and calls the clone's readiness URL (protocol
// in guest/README.md, "Restore protocol").
//
// Progress and errors go to /dev/console (the serial console log the host keeps), one line each,
// prefixed "unifaas-init: ". See guest/README.md for the parameters.
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/random.h>
#include <net/if.h>
#include <net/if_arp.h>
#include <net/route.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/reboot.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

enum {
    MAX_ENV = 64,
    CMDLINE_MAX = 8192,
    ORDER_MAX = 16384,
    IFACE_WAIT_MS = 1000,
    RESTORE_PORT = 8125,
    RESTORE_VERSION = 1,
    RESTORE_MSG_MAX = 4096,
    RESTORE_ENTROPY_MAX = 256,
    CALLBACK_ATTEMPTS = 6,
};

#define MODULE_DIR "/lib/modules"
#define NEW_ROOT "/newroot"
#define DEFAULT_FUNCTION "/function"
#define DEFAULT_IFACE "eth0"

// ---------------------------------------------------------------------------------------------
// Logging: one line per write(2) so lines never interleave with the function's output.

static double uptime_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_BOOTTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

__attribute__((format(printf, 1, 2))) static void say(const char* fmt, ...) {
    char line[1024];
    int n = snprintf(line, sizeof line, "unifaas-init: ");
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);
    va_end(ap);
    if (m < 0)
        return;
    size_t len = (size_t)n + (size_t)m;
    if (len > sizeof line - 2)
        len = sizeof line - 2;
    line[len++] = '\n';
    ssize_t rc = write(STDERR_FILENO, line, len);
    (void)rc;
}

// Never returns: PID 1 exiting would panic the kernel. Powers off (the hypervisor exits); if
// that fails, reboots (QEMU -no-reboot and Firecracker exit on reboot too).
__attribute__((noreturn)) static void power_off(void) {
    sync();
    reboot(RB_POWER_OFF);
    say("reboot(RB_POWER_OFF) failed: %s; rebooting", strerror(errno));
    reboot(RB_AUTOBOOT);
    for (;;)
        pause();
}

__attribute__((noreturn)) static void fatal(const char* what) {
    say("FATAL: %s; powering off", what);
    power_off();
}

// ---------------------------------------------------------------------------------------------
// Filesystems and console.

static void mount_fs(const char* source, const char* target, const char* type,
                     unsigned long flags) {
    mkdir(target, 0755);
    if (mount(source, target, type, flags, NULL) != 0 && errno != EBUSY) {
        say("mount %s on %s: %s", type, target, strerror(errno));
    }
}

// The kernel opens /dev/console as fds 0-2 before running init when the rootfs has that node
// (its built-in initramfs does); if it did not, open it now that devtmpfs is mounted.
static void ensure_console(void) {
    if (fcntl(STDERR_FILENO, F_GETFD) != -1)
        return;
    int fd = open("/dev/console", O_RDWR | O_NOCTTY);
    if (fd < 0)
        return;  // nowhere to report it
    for (int i = 0; i <= 2; i++) {
        if (fd != i)
            dup2(fd, i);
    }
    if (fd > 2)
        close(fd);
}

// ---------------------------------------------------------------------------------------------
// Kernel modules.

// Loads one module; "name.ko [params]" as a line of the order file.
static int load_module(char* line) {
    char* params = strchr(line, ' ');
    if (params) {
        *params++ = '\0';
        while (*params == ' ')
            params++;
    } else {
        params = "";
    }
    char path[512];
    if (line[0] == '/') {
        snprintf(path, sizeof path, "%s", line);
    } else {
        snprintf(path, sizeof path, MODULE_DIR "/%s", line);
    }
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        say("module %s: open: %s", path, strerror(errno));
        return -1;
    }
    int rc = (int)syscall(SYS_finit_module, fd, params, 0);
    int err = errno;
    close(fd);
    if (rc != 0 && err != EEXIST) {
        say("module %s: finit_module: %s", path, strerror(err));
        return -1;
    }
    return 0;
}

static void load_modules(void) {
    int fd = open(MODULE_DIR "/order", O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        if (errno != ENOENT)
            say("open " MODULE_DIR "/order: %s", strerror(errno));
        return;
    }
    static char order[ORDER_MAX];
    ssize_t n = read(fd, order, sizeof order - 1);
    close(fd);
    if (n < 0) {
        say("read " MODULE_DIR "/order: %s", strerror(errno));
        return;
    }
    order[n] = '\0';
    double start = uptime_s();
    int loaded = 0, failed = 0;
    char* save = NULL;
    for (char* line = strtok_r(order, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        while (*line == ' ' || *line == '\t')
            line++;
        size_t len = strlen(line);
        while (len > 0 && (line[len - 1] == ' ' || line[len - 1] == '\r'))
            line[--len] = '\0';
        if (len == 0 || line[0] == '#')
            continue;
        if (load_module(line) == 0) {
            loaded++;
        } else {
            failed++;
        }
    }
    say("modules: %d loaded, %d failed in %.0f ms", loaded, failed, (uptime_s() - start) * 1e3);
}

// ---------------------------------------------------------------------------------------------
// Kernel command line.

struct config {
    const char* ip;
    const char* gw;
    const char* mask;
    const char* callback;
    const char* port;
    const char* iface;
    const char* root;
    const char* rootfstype;
    const char* rootflags;
    const char* exec;
    const char* restore;
    const char* env[MAX_ENV];
    int nenv;
};

// Splits the classic ip=CLIENT:SERVER:GW:MASK:HOST:DEV:AUTOCONF form (used by the original
// UniFaaS images' command lines); unifaas.* parameters take precedence.
static void parse_ip_param(char* value, struct config* fallback) {
    char* fields[7] = {0};
    int i = 0;
    for (char* p = value; i < 7; i++) {
        fields[i] = p;
        char* colon = strchr(p, ':');
        if (!colon)
            break;
        *colon = '\0';
        p = colon + 1;
    }
    if (fields[0] && *fields[0])
        fallback->ip = fields[0];
    if (fields[2] && *fields[2])
        fallback->gw = fields[2];
    if (fields[3] && *fields[3])
        fallback->mask = fields[3];
    if (fields[5] && *fields[5])
        fallback->iface = fields[5];
}

// Tokenizes the command line as the kernel does: whitespace separates parameters, double quotes
// group (and are removed), so unifaas.env="GREETING=hi there" works.
static char* next_token(char** cursor) {
    char* p = *cursor;
    while (*p == ' ' || *p == '\t' || *p == '\n')
        p++;
    if (*p == '\0')
        return NULL;
    char* out = p;
    char* start = p;
    int quoted = 0;
    for (; *p; p++) {
        if (*p == '"') {
            quoted = !quoted;
            continue;
        }
        if (!quoted && (*p == ' ' || *p == '\t' || *p == '\n')) {
            p++;
            break;
        }
        *out++ = *p;
    }
    *out = '\0';
    *cursor = p;
    return start;
}

static void parse_cmdline(struct config* c) {
    static char cmdline[CMDLINE_MAX];
    int fd = open("/proc/cmdline", O_RDONLY | O_CLOEXEC);
    ssize_t n = fd >= 0 ? read(fd, cmdline, sizeof cmdline - 1) : -1;
    if (fd >= 0)
        close(fd);
    if (n < 0) {
        say("read /proc/cmdline: %s", strerror(errno));
        return;
    }
    cmdline[n] = '\0';
    struct config fallback = {0};
    char* cursor = cmdline;
    for (char* tok; (tok = next_token(&cursor)) != NULL;) {
        char* eq = strchr(tok, '=');
        if (!eq)
            continue;
        *eq = '\0';
        char* value = eq + 1;
        if (strcmp(tok, "unifaas.ip") == 0) {
            c->ip = value;
        } else if (strcmp(tok, "unifaas.gw") == 0 || strcmp(tok, "unifaas.gateway") == 0) {
            c->gw = value;
        } else if (strcmp(tok, "unifaas.mask") == 0 || strcmp(tok, "unifaas.netmask") == 0) {
            c->mask = value;
        } else if (strcmp(tok, "unifaas.callback") == 0) {
            c->callback = value;
        } else if (strcmp(tok, "unifaas.port") == 0) {
            c->port = value;
        } else if (strcmp(tok, "unifaas.iface") == 0) {
            c->iface = value;
        } else if (strcmp(tok, "unifaas.root") == 0) {
            c->root = value;
        } else if (strcmp(tok, "unifaas.rootfstype") == 0) {
            c->rootfstype = value;
        } else if (strcmp(tok, "unifaas.rootflags") == 0) {
            c->rootflags = value;
        } else if (strcmp(tok, "unifaas.restore") == 0) {
            c->restore = value;
        } else if (strcmp(tok, "unifaas.exec") == 0) {
            c->exec = value;
        } else if (strcmp(tok, "unifaas.env") == 0) {
            if (!strchr(value, '=') || value[0] == '=') {
                say("ignoring unifaas.env=%s: not KEY=VALUE", value);
            } else if (c->nenv < MAX_ENV) {
                c->env[c->nenv++] = value;
            } else {
                say("ignoring unifaas.env=%s: more than %d", value, MAX_ENV);
            }
        } else if (strcmp(tok, "ip") == 0) {
            parse_ip_param(value, &fallback);
        }
    }
    if (!c->ip)
        c->ip = fallback.ip;
    if (!c->gw)
        c->gw = fallback.gw;
    if (!c->mask)
        c->mask = fallback.mask;
    if (!c->iface)
        c->iface = fallback.iface;
    if (!c->iface)
        c->iface = DEFAULT_IFACE;
    if (!c->mask)
        c->mask = "255.255.255.0";
    if (!c->port)
        c->port = "8080";
    if (!c->exec)
        c->exec = DEFAULT_FUNCTION;
    if (!c->rootfstype)
        c->rootfstype = "ext4";
}

// ---------------------------------------------------------------------------------------------
// Network, with the classic ioctls (no netlink needed for one address and one route).

static int parse_ipv4(const char* what, const char* text, struct sockaddr_in* out) {
    memset(out, 0, sizeof *out);
    out->sin_family = AF_INET;
    if (inet_pton(AF_INET, text, &out->sin_addr) != 1) {
        say("bad %s address '%s'", what, text);
        return -1;
    }
    return 0;
}

static int set_up(int sock, const char* name) {
    struct ifreq ifr = {0};
    snprintf(ifr.ifr_name, IFNAMSIZ, "%s", name);
    if (ioctl(sock, SIOCGIFFLAGS, &ifr) != 0) {
        say("%s: SIOCGIFFLAGS: %s", name, strerror(errno));
        return -1;
    }
    ifr.ifr_flags |= IFF_UP;
    if (ioctl(sock, SIOCSIFFLAGS, &ifr) != 0) {
        say("%s: SIOCSIFFLAGS (up): %s", name, strerror(errno));
        return -1;
    }
    return 0;
}

// virtio_net registers its netdev while its module loads (the probe is synchronous for both
// virtio-mmio and virtio-pci), so the interface is normally there already; wait briefly if not.
static int wait_for_iface(int sock, const char* name) {
    struct ifreq ifr = {0};
    snprintf(ifr.ifr_name, IFNAMSIZ, "%s", name);
    double start = uptime_s();
    for (int tries = 0;; tries++) {
        if (ioctl(sock, SIOCGIFINDEX, &ifr) == 0) {
            if (tries > 0)
                say("%s appeared after %.0f ms", name, (uptime_s() - start) * 1e3);
            return 0;
        }
        if (uptime_s() - start >= IFACE_WAIT_MS / 1e3) {
            say("%s: no such interface after %d ms (is virtio_net loaded and a NIC attached?)",
                name, IFACE_WAIT_MS);
            return -1;
        }
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
}

// Gives `iface` address/mask, brings it up and sets the default route via gw (NULL: none). A
// default route already there (a restored clone's old one) is replaced.
static int apply_address(int sock, const char* iface, const char* ip, const char* netmask,
                         const char* gateway) {
    struct sockaddr_in addr, mask, gw;
    if (parse_ipv4("address", ip, &addr) != 0 || parse_ipv4("netmask", netmask, &mask) != 0 ||
        (gateway && parse_ipv4("gateway", gateway, &gw) != 0) || wait_for_iface(sock, iface)) {
        return -1;
    }
    int rc = 0;
    struct ifreq ifr = {0};
    snprintf(ifr.ifr_name, IFNAMSIZ, "%s", iface);
    memcpy(&ifr.ifr_addr, &addr, sizeof addr);
    if (ioctl(sock, SIOCSIFADDR, &ifr) != 0) {
        say("%s: SIOCSIFADDR %s: %s", iface, ip, strerror(errno));
        rc = -1;
    }
    memcpy(&ifr.ifr_netmask, &mask, sizeof mask);
    if (ioctl(sock, SIOCSIFNETMASK, &ifr) != 0) {
        say("%s: SIOCSIFNETMASK %s: %s", iface, netmask, strerror(errno));
        rc = -1;
    }
    if (set_up(sock, iface) != 0)
        rc = -1;
    if (gateway) {
        struct rtentry rt = {0};
        struct sockaddr_in any = {.sin_family = AF_INET};
        memcpy(&rt.rt_dst, &any, sizeof any);
        memcpy(&rt.rt_genmask, &any, sizeof any);
        rt.rt_dev = (char*)iface;
        while (ioctl(sock, SIOCDELRT, &rt) == 0) {
        }
        memcpy(&rt.rt_gateway, &gw, sizeof gw);
        rt.rt_flags = RTF_UP | RTF_GATEWAY;
        if (ioctl(sock, SIOCADDRT, &rt) != 0 && errno != EEXIST) {
            say("%s: SIOCADDRT default via %s: %s", iface, gateway, strerror(errno));
            rc = -1;
        }
    }
    int prefix = __builtin_popcount(mask.sin_addr.s_addr);
    say("%s %s/%d gw %s%s", iface, ip, prefix, gateway ? gateway : "(none)",
        rc == 0 ? "" : " (with errors)");
    return rc;
}

static int configure_network(const struct config* c) {
    int sock = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (sock < 0) {
        say("socket(AF_INET): %s", strerror(errno));
        return -1;
    }
    int rc = set_up(sock, "lo");  // the kernel adds 127.0.0.1/8 when lo goes up
    if (!c->ip) {
        say("no unifaas.ip on the kernel command line: %s left unconfigured", c->iface);
        close(sock);
        return -1;
    }
    if (apply_address(sock, c->iface, c->ip, c->mask, c->gw) != 0)
        rc = -1;
    close(sock);
    return rc;
}

// ---------------------------------------------------------------------------------------------
// Optional root filesystem (unifaas.root=/dev/vda): the function runs chrooted inside it.

static int mount_root(const struct config* c) {
    mkdir(NEW_ROOT, 0755);
    if (mount(c->root, NEW_ROOT, c->rootfstype, 0, c->rootflags) != 0) {
        say("mount %s (%s) on " NEW_ROOT ": %s", c->root, c->rootfstype, strerror(errno));
        return -1;
    }
    static const struct {
        const char* dir;
        const char* type;
    } api[] = {
        {NEW_ROOT "/proc", "proc"}, {NEW_ROOT "/sys", "sysfs"}, {NEW_ROOT "/dev", "devtmpfs"}};
    for (size_t i = 0; i < sizeof api / sizeof api[0]; i++) {
        struct stat st;
        if (stat(api[i].dir, &st) == 0 && S_ISDIR(st.st_mode)) {
            if (mount(api[i].type, api[i].dir, api[i].type, 0, NULL) != 0) {
                say("mount %s on %s: %s", api[i].type, api[i].dir, strerror(errno));
            }
        }
    }
    say("root %s (%s) mounted", c->root, c->rootfstype);
    return 0;
}

// ---------------------------------------------------------------------------------------------
// Restore listener (see guest/README.md, "Restore protocol"). A forked child of init, blocked in
// recvfrom() while the template VM is saved; in each clone it wakes up on the host's message.

struct restore_msg {
    char* ip;
    char* gw;
    char* mask;
    char* callback;
    char* nonce;
    char* time;
    char* entropy;
    int version;
};

// Parses "key=value" lines in place; unknown keys are ignored (later versions may add some).
static int parse_restore(char* text, struct restore_msg* m) {
    memset(m, 0, sizeof *m);
    char* save = NULL;
    for (char* line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        char* eq = strchr(line, '=');
        if (!eq)
            continue;
        *eq = '\0';
        char* v = eq + 1;
        if (strcmp(line, "unifaas-restore") == 0) {
            m->version = atoi(v);
        } else if (strcmp(line, "ip") == 0) {
            m->ip = v;
        } else if (strcmp(line, "gw") == 0) {
            m->gw = v;
        } else if (strcmp(line, "mask") == 0) {
            m->mask = v;
        } else if (strcmp(line, "callback") == 0) {
            m->callback = v;
        } else if (strcmp(line, "nonce") == 0) {
            m->nonce = v;
        } else if (strcmp(line, "time") == 0) {
            m->time = v;
        } else if (strcmp(line, "entropy") == 0) {
            m->entropy = v;
        }
    }
    if (m->version != RESTORE_VERSION || !m->ip || !m->mask || !m->nonce) {
        say("restore: ignoring a message (version %d, want %d, or ip/mask/nonce missing)",
            m->version, RESTORE_VERSION);
        return -1;
    }
    return 0;
}

// "SECONDS.NANOSECONDS" (Unix time) becomes CLOCK_REALTIME.
static void restore_clock(const char* text) {
    char* end = NULL;
    long long sec = strtoll(text, &end, 10);
    long nsec = 0;
    if (*end == '.') {
        char digits[10] = "000000000";
        size_t n = strspn(end + 1, "0123456789");
        memcpy(digits, end + 1, n > 9 ? 9 : n);
        nsec = atol(digits);
    }
    struct timespec ts = {.tv_sec = (time_t)sec, .tv_nsec = nsec};
    if (clock_settime(CLOCK_REALTIME, &ts) != 0)
        say("restore: clock_settime: %s", strerror(errno));
}

static int hex_digit(char c) {
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

// Adds the host's random bytes (hex) to the kernel pool, credited, then forces a reseed of the
// kernel's generator: every clone draws different numbers from then on (a snapshot duplicates the
// generator's state).
static void restore_entropy(const char* hex) {
    struct {
        struct rand_pool_info info;
        unsigned char bytes[RESTORE_ENTROPY_MAX];
    } pool = {0};
    size_t n = 0;
    for (; hex[2 * n] && hex[2 * n + 1] && n < RESTORE_ENTROPY_MAX; n++) {
        int hi = hex_digit(hex[2 * n]), lo = hex_digit(hex[2 * n + 1]);
        if (hi < 0 || lo < 0)
            break;
        pool.bytes[n] = (unsigned char)(hi * 16 + lo);
    }
    int fd = open("/dev/urandom", O_RDWR | O_CLOEXEC);
    if (fd < 0) {
        say("restore: open /dev/urandom: %s", strerror(errno));
        return;
    }
    pool.info.entropy_count = (int)(n * 8);
    pool.info.buf_size = (int)n;
    if (n > 0 && ioctl(fd, RNDADDENTROPY, &pool) != 0)
        say("restore: RNDADDENTROPY: %s", strerror(errno));
    if (ioctl(fd, RNDRESEEDCRNG) != 0)
        say("restore: RNDRESEEDCRNG: %s", strerror(errno));
    close(fd);
}

// GET of an http://A.B.C.D:PORT/path URL; returns the status code or -1.
static int http_get_once(const char* url) {
    if (strncmp(url, "http://", 7) != 0)
        return -1;
    char host[64];
    const char* h = url + 7;
    const char* slash = strchr(h, '/');
    const char* colon = strchr(h, ':');
    if (!colon || (slash && colon > slash) || (size_t)(colon - h) >= sizeof host)
        return -1;
    memcpy(host, h, (size_t)(colon - h));
    host[colon - h] = '\0';
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(colon + 1))};
    if (inet_pton(AF_INET, host, &addr.sin_addr) != 1)
        return -1;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    struct timeval tv = {.tv_sec = 5};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    int status = -1;
    if (connect(fd, (struct sockaddr*)&addr, sizeof addr) == 0) {
        char req[2300];
        int len = snprintf(req, sizeof req,
                           "GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n",
                           slash ? slash : "/", host);
        char resp[256];
        ssize_t got;
        if (len > 0 && len < (int)sizeof req && write(fd, req, (size_t)len) == len &&
            (got = read(fd, resp, sizeof resp - 1)) > 0) {
            resp[got] = '\0';
            if (sscanf(resp, "HTTP/1.%*d %d", &status) != 1)
                status = -1;
        }
    }
    close(fd);
    return status;
}

static void restore_callback(const char* url) {
    struct timespec backoff = {0, 50 * 1000 * 1000};
    for (int attempt = 1; attempt <= CALLBACK_ATTEMPTS; attempt++) {
        int status = http_get_once(url);
        if (status >= 200 && status <= 299)
            return;
        say("restore: callback %s answered %d (attempt %d)", url, status, attempt);
        nanosleep(&backoff, NULL);
        if (backoff.tv_nsec < 400 * 1000 * 1000)
            backoff.tv_nsec *= 2;
    }
}

static void apply_restore(const struct config* c, struct restore_msg* m) {
    if (m->time)
        restore_clock(m->time);
    if (m->entropy)
        restore_entropy(m->entropy);
    int sock = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (sock >= 0) {
        apply_address(sock, c->iface, m->ip, m->mask, m->gw);
        // The template's ARP entry for a gateway of the same address may name another tap's
        // MAC (a clone can get a tap the template once used, recreated since): ask again.
        struct arpreq arp = {0};
        struct sockaddr_in gw = {.sin_family = AF_INET};
        if (m->gw && inet_pton(AF_INET, m->gw, &gw.sin_addr) == 1) {
            memcpy(&arp.arp_pa, &gw, sizeof gw);
            snprintf(arp.arp_dev, sizeof arp.arp_dev, "%s", c->iface);
            if (ioctl(sock, SIOCDARP, &arp) != 0 && errno != ENXIO)
                say("restore: SIOCDARP %s: %s", m->gw, strerror(errno));
        }
        close(sock);
    }
}

__attribute__((noreturn)) static void restore_listener(const struct config* c) {
    prctl(PR_SET_NAME, "unifaas-restore");
    int sock = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    int on = 1;
    struct sockaddr_in any = {.sin_family = AF_INET, .sin_port = htons(RESTORE_PORT)};
    if (sock < 0 || setsockopt(sock, SOL_SOCKET, SO_BROADCAST, &on, sizeof on) != 0 ||
        bind(sock, (struct sockaddr*)&any, sizeof any) != 0) {
        say("restore: cannot listen on udp/%d: %s", RESTORE_PORT, strerror(errno));
        _exit(1);
    }
    static char applied[128];  // nonce of the last restore applied: repeats are only acked
    for (;;) {
        static char buf[RESTORE_MSG_MAX + 1];
        struct sockaddr_in from;
        socklen_t from_len = sizeof from;
        ssize_t n = recvfrom(sock, buf, RESTORE_MSG_MAX, 0, (struct sockaddr*)&from, &from_len);
        if (n <= 0)
            continue;
        buf[n] = '\0';
        struct restore_msg m;
        if (parse_restore(buf, &m) != 0)
            continue;
        int fresh = strcmp(applied, m.nonce) != 0;
        if (fresh) {
            double start = uptime_s();
            apply_restore(c, &m);
            snprintf(applied, sizeof applied, "%s", m.nonce);
            say("restored as %s in %.1f ms", m.ip, (uptime_s() - start) * 1e3);
        }
        char ack[256];
        int len = snprintf(ack, sizeof ack, "unifaas-restored=%d\nnonce=%s\n", RESTORE_VERSION,
                           m.nonce);
        if (len > 0 && len < (int)sizeof ack)
            sendto(sock, ack, (size_t)len, 0, (struct sockaddr*)&from, from_len);
        if (fresh && m.callback)
            restore_callback(m.callback);
    }
}

static void start_restore_listener(const struct config* c) {
    if (c->restore && strcmp(c->restore, "off") == 0)
        return;
    pid_t pid = fork();
    if (pid < 0) {
        say("restore listener: fork: %s", strerror(errno));
    } else if (pid == 0) {
        restore_listener(c);
    }
}

// ---------------------------------------------------------------------------------------------
// The function.

static void build_env(const struct config* c) {
    clearenv();
    setenv("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin", 1);
    setenv("HOME", "/", 1);
    setenv("PORT", c->port, 1);
    if (c->callback)
        setenv("UNIFAAS_CALLBACK", c->callback, 1);
    for (int i = 0; i < c->nenv; i++) {
        char* eq = strchr(c->env[i], '=');
        *eq = '\0';
        setenv(c->env[i], eq + 1, 1);
        *eq = '=';
    }
}

static pid_t start_function(const struct config* c) {
    pid_t pid = fork();
    if (pid < 0) {
        say("fork: %s", strerror(errno));
        return -1;
    }
    if (pid > 0)
        return pid;
    setsid();
    int null = open("/dev/null", O_RDONLY);
    if (null >= 0) {
        dup2(null, STDIN_FILENO);
        if (null != STDIN_FILENO)
            close(null);
    }
    if (c->root && (chroot(NEW_ROOT) != 0 || chdir("/") != 0)) {
        say("chroot " NEW_ROOT ": %s", strerror(errno));
        _exit(127);
    }
    char* argv[] = {(char*)c->exec, (char*)c->callback, NULL};
    execv(c->exec, argv);
    say("exec %s: %s", c->exec, strerror(errno));
    _exit(127);
}

static void report_exit(const char* exec, int status) {
    if (WIFEXITED(status)) {
        say("%s exited with status %d; powering off", exec, WEXITSTATUS(status));
    } else if (WIFSIGNALED(status)) {
        say("%s killed by signal %d (%s); powering off", exec, WTERMSIG(status),
            strsignal(WTERMSIG(status)));
    } else {
        say("%s ended (wait status 0x%x); powering off", exec, status);
    }
}

int main(void) {
    if (getpid() != 1) {
        fprintf(stderr, "unifaas-init: must run as PID 1 (the guest's init)\n");
        return 2;
    }
    mount_fs("devtmpfs", "/dev", "devtmpfs", MS_NOSUID);
    ensure_console();
    mount_fs("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC);
    mount_fs("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC);
    say("started at %.3f s", uptime_s());

    load_modules();
    struct config cfg = {0};
    parse_cmdline(&cfg);
    configure_network(&cfg);  // errors are logged; the function still runs (it may not need it)
    if (cfg.root && mount_root(&cfg) != 0)
        fatal("cannot mount the root filesystem");
    if (!cfg.callback)
        say("no unifaas.callback on the kernel command line");

    start_restore_listener(&cfg);
    build_env(&cfg);
    pid_t child = start_function(&cfg);
    if (child < 0)
        fatal("cannot start the function");
    say("started %s (pid %d) at %.3f s", cfg.exec, (int)child, uptime_s());

    // Reap everything; orphans reparent to us. Only the function's exit ends the VM.
    for (;;) {
        int status;
        pid_t pid = waitpid(-1, &status, 0);
        if (pid == child) {
            report_exit(cfg.exec, status);
            power_off();
        }
        if (pid < 0 && errno == ECHILD)
            fatal("no children left");
    }
}
