#!/usr/bin/env python3
"""WebSocket echo round trips through unifaas, side by side with the same instance reached
directly (issue 14).

    ws_rtt.py RAW OUT_MD --target NAME=HOST:PORT/PREFIX ... [--count N] [--size BYTES]

For each target (e.g. direct=10.0.0.2:8080/, unifaas=127.0.0.1:8123/invoke/hello/) one
WebSocket (PREFIX + ws, the example function's RFC 6455 echo) is opened with a raw client (no
library: its own overhead would hide the proxy's), then N round trips of one masked text frame of
BYTES bytes: the time from sending the frame to having its echo whole, in µs. The targets take
turns in batches of 50 round trips (the order rotating), so load drifting on a shared host hits
them alike. The difference of the medians (and p99s) to `direct` is what the proxy adds.
Appends one JSON line per target (kind "websocket") to RAW and writes a Markdown section to
OUT_MD (also printed). Measures and reports; never fails on a number.
"""

import argparse
import base64
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import (append_record, connect_nodelay, median, parse_target,  # noqa: E402
                      percentile, read_head)


def open_ws(host, port, path):
    sock = connect_nodelay(host, port)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: b\r\nConnection: Upgrade\r\n"
                 f"Upgrade: websocket\r\nSec-WebSocket-Key: {key}\r\n"
                 f"Sec-WebSocket-Version: 13\r\n\r\n".encode())
    head, _ = read_head(sock, bytearray())
    if not head.startswith(b"HTTP/1.1 101"):
        raise RuntimeError(f"{path}: {head[:60]!r}")
    return sock


def frame(payload):
    mask = os.urandom(4)
    n = len(payload)
    head = bytes([0x81, 0x80 | n]) if n < 126 else bytes([0x81, 0x80 | 126, n >> 8, n & 0xFF])
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def round_trips(sock, count, size):
    """µs per echo of a `size`-byte text frame, `count` times."""
    msg = frame(b"x" * size)
    expect = (2 if size < 126 else 4) + size
    times = []
    for _ in range(count):
        start = time.perf_counter_ns()
        sock.sendall(msg)
        got = 0
        while got < expect:
            chunk = sock.recv(65536)
            if not chunk:
                raise RuntimeError("closed")
            got += len(chunk)
        times.append((time.perf_counter_ns() - start) / 1000.0)
    return times


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("raw")
    ap.add_argument("out_md")
    ap.add_argument("--target", action="append", required=True)
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("--size", type=int, default=32)
    a = ap.parse_args()
    targets = [parse_target(t) for t in a.target]
    names = [t[0] for t in targets]
    socks = {name: open_ws(host, port, f"{prefix}ws") for name, host, port, prefix in targets}
    for name in names:
        round_trips(socks[name], min(50, a.count), a.size)  # warm-up
    rtt = {n: [] for n in names}
    batch = 50
    for b in range((a.count + batch - 1) // batch):
        for k in range(len(targets)):
            name = targets[(k + b) % len(targets)][0]
            rtt[name] += round_trips(socks[name], min(batch, a.count - b * batch), a.size)
    for name in names:
        socks[name].close()
        append_record(a.raw, {"kind": "websocket", "measure": "echo_rtt", "target": name,
                              "count": a.count, "size": a.size,
                              "median_us": round(median(rtt[name]), 1),
                              "p99_us": round(percentile(rtt[name], 99), 1)})
        print(f"  websocket echo {name}: median {median(rtt[name]):.0f} µs", flush=True)
    base = rtt.get("direct")
    lines = [
        "## WebSocket echo (issue 14)",
        "",
        f"{a.count} round trips of a {a.size}-byte text frame on one WebSocket per target "
        "(examples/hello `/ws`), targets alternating in batches of 50.",
        "",
        "| target | p50 µs | p99 µs | added p50 µs | added p99 µs |",
        "|---|---|---|---|---|",
    ]
    for n in names:
        p50, p99 = median(rtt[n]), percentile(rtt[n], 99)
        if base is not None and n != "direct":
            added = f"{p50 - median(base):.0f} | {p99 - percentile(base, 99):.0f}"
        else:
            added = "— | —"
        lines.append(f"| {n} | {p50:.0f} | {p99:.0f} | {added} |")
    text = "\n".join(lines) + "\n"
    with open(a.out_md, "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
