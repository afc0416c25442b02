"""Shared helpers of the bench/ scripts: unifaas /status queries, statistics, JSON-lines output.

Everything here runs inside the benchmark's network namespace (run.sh starts the scripts with
nsenter), so 127.0.0.1 is the namespace's own loopback.
"""

import http.client
import json
import math
import os
import socket
import time

UNIFAAS = ("127.0.0.1", 8123)


def http_get(host, port, path, timeout=60.0, headers=None):
    """One GET on a fresh connection; returns (status, body bytes)."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path, headers=headers or {})
        res = conn.getresponse()
        return res.status, res.read()
    finally:
        conn.close()


def status():
    code, body = http_get(*UNIFAAS, "/status", timeout=10)
    if code != 200:
        raise RuntimeError(f"GET /status answered {code}")
    return json.loads(body)


def instances(function, state=None):
    for f in status()["functions"]:
        if f["name"] == function:
            return [i for i in f["instances"] if state is None or i["state"] == state]
    return []


def wait_instances(function, count, timeout, state=None, interval=0.02):
    """Waits until `function` has exactly `count` instances (in `state`); True if it did."""
    deadline = time.monotonic() + timeout
    while True:
        if len(instances(function, state)) == count:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def percentile(values, p):
    """Nearest-rank percentile (p in 0..100) of a non-empty list."""
    s = sorted(values)
    if not s:
        return None
    k = max(0, min(len(s) - 1, math.ceil(p / 100.0 * len(s)) - 1))
    return s[k]


def median(values):
    s = sorted(values)
    if not s:
        return None
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2.0


def summary_ms(values):
    """median, p90, mean, min, max of a list of milliseconds (rounded to µs)."""
    if not values:
        return {"n": 0}
    r = lambda v: round(v, 3)
    return {
        "n": len(values),
        "median": r(median(values)),
        "p90": r(percentile(values, 90)),
        "mean": r(sum(values) / len(values)),
        "min": r(min(values)),
        "max": r(max(values)),
    }


def parse_target(text):
    """NAME=HOST:PORT/PREFIX -> (name, host, port, "/PREFIX")."""
    name, rest = text.split("=", 1)
    hostport, _, prefix = rest.partition("/")
    host, port = hostport.rsplit(":", 1)
    return name, host, int(port), "/" + prefix


def connect_nodelay(host, port, timeout=30):
    """A TCP connection with TCP_NODELAY, as the measured clients use."""
    sock = socket.create_connection((host, port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_head(sock, buf):
    """Reads into `buf` until a response head is complete: (head, bytes after it)."""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise RuntimeError("connection closed before the response head")
        buf += chunk
    end = buf.index(b"\r\n\r\n") + 4
    return bytes(buf[:end]), bytearray(buf[end:])


def append_record(path, record):
    """Appends one JSON object as a line to the raw results file."""
    with open(path, "a") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")


class CallbackListener:
    """Readiness callbacks for the bare sandboxes: a raw TCP listener (no http.server, so the
    recorded arrival is as early as the request's bytes) that answers 200 and records the
    monotonic arrival time per path. Serves until close()."""

    def __init__(self, port, bind="0.0.0.0"):
        import threading

        self._threading = threading
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((bind, port))
        self.sock.listen(64)
        self.arrivals = {}
        self.cv = threading.Condition()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self._threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn):
        with conn:
            conn.settimeout(5)
            data = b""
            try:
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(4096)
                    if not chunk:
                        return
                    data += chunk
                arrived = time.monotonic()
                path = data.split(b" ", 2)[1].decode()
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            except (OSError, IndexError):
                return
        with self.cv:
            self.arrivals.setdefault(path, arrived)
            self.cv.notify_all()

    def wait(self, path, timeout):
        """Arrival time of a callback on `path`, or None after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        with self.cv:
            while path not in self.arrivals:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.cv.wait(left)
            return self.arrivals[path]

    def close(self):
        self.sock.close()


class UnixHTTPConnection(http.client.HTTPConnection):
    """http.client over a unix socket (the Docker Engine API)."""

    def __init__(self, path, timeout=60.0):
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self.unix_path)
        self.sock = s


class Engine:
    """A keep-alive Docker Engine API client (the way unifaas keeps one too)."""

    def __init__(self, socket_path):
        self.path = socket_path
        self.conn = UnixHTTPConnection(socket_path)

    def call(self, method, url, body=None):
        payload = None if body is None else json.dumps(body).encode()
        headers = {"Host": "localhost"}
        if payload is not None:
            headers["Content-Type"] = "application/json"
        for attempt in (1, 2):
            try:
                self.conn.request(method, url, body=payload, headers=headers)
                res = self.conn.getresponse()
                data = res.read()
                break
            except (http.client.HTTPException, OSError):
                self.conn.close()
                self.conn = UnixHTTPConnection(self.path)
                if attempt == 2:
                    raise
        if res.status >= 300 and res.status != 304:
            raise RuntimeError(f"{method} {url}: {res.status} {data[:300]!r}")
        return json.loads(data) if data and data[:1] in (b"{", b"[") else None

    def containers(self, label):
        flt = json.dumps({"label": [label]})
        from urllib.parse import quote

        return self.call("GET", "/containers/json?all=1&filters=" + quote(flt)) or []


def children(pid):
    """PIDs of the direct children of `pid` (from /proc)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        if int(fields[1]) == pid:
            out.append(int(entry))
    return out


def cmdline(pid):
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return [a.decode() for a in f.read().split(b"\0")[:-1]]


def environ(pid):
    with open(f"/proc/{pid}/environ", "rb") as f:
        return dict(
            e.decode().split("=", 1) for e in f.read().split(b"\0") if b"=" in e
        )
