#!/usr/bin/env python3
"""Streaming through unifaas, side by side with the same instance reached directly and through
nginx with proxy_buffering off (issue 14).

    stream.py RAW OUT_MD --target NAME=HOST:PORT/PREFIX ... [--bytes N] [--rounds R] [--sse N]

For each target (e.g. direct=10.0.0.2:8080/, unifaas=127.0.0.1:8123/invoke/hello/,
nginx=127.0.0.1:8181/):
  throughput   GET PREFIX + bytes?n=N (the example function writes N bytes in 64 KiB writes with
               Content-Length) on a fresh connection, read as fast as possible; MiB/s, best and
               median of R rounds (rotating the order of the targets).
  first event  GET PREFIX + sse?n=1, N times in all: the time from sending the request to
               receiving the first event's bytes; median and p90 in µs. The N are spread over the
               R rounds (after each round's downloads, on fresh keep-alive connections), and
               within a round the targets take turns in batches of 25 requests (the order
               rotating), so load drifting on a shared host hits them alike and a scheduling
               state that lasts a second or two (where the vCPUs put client, proxy and function)
               weighs one round, not the whole result. The difference of the medians to
               `direct` is what the proxy adds; each round's is listed too.
Appends one JSON line per measurement (kind "stream") to RAW and writes a Markdown section to
OUT_MD (also printed). Measures and reports; never fails on a number.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import (append_record, connect_nodelay, median, parse_target,  # noqa: E402
                      percentile, read_head)


def throughput(host, port, path, size):
    """MiB/s of one download of `size` bytes (Content-Length) on a fresh connection."""
    sock = connect_nodelay(host, port, timeout=60)
    start = time.monotonic()
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n".encode())
    head, rest = read_head(sock, bytearray())
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"{path}: {head[:60]!r}")
    got = len(rest)
    view = memoryview(bytearray(4 * 1024 * 1024))
    while got < size:
        n = sock.recv_into(view)
        if n == 0:
            break
        got += n
    elapsed = time.monotonic() - start
    sock.close()
    if got < size:
        raise RuntimeError(f"{path}: {got} of {size} bytes")
    return size / (1024 * 1024) / elapsed


def first_events(sock, path, count):
    """µs from sending a request to the first event's bytes, `count` times on one connection."""
    request = f"GET {path} HTTP/1.1\r\nHost: b\r\n\r\n".encode()
    times = []
    buf = bytearray()
    for _ in range(count):
        start = time.perf_counter_ns()
        sock.sendall(request)
        while b"data: 1" not in buf:
            chunk = sock.recv(65536)
            if not chunk:
                raise RuntimeError(f"{path}: closed")
            buf += chunk
        times.append((time.perf_counter_ns() - start) / 1000.0)
        # The rest of this response: the last chunk (chunked) or nothing more (Content-Length).
        head_end = buf.index(b"\r\n\r\n") + 4
        head = bytes(buf[:head_end]).lower()
        if b"transfer-encoding: chunked" in head:
            while not buf.endswith(b"0\r\n\r\n"):
                buf += sock.recv(65536)
        buf = bytearray()
    return times


def first_event_round(targets, count, r):
    """`count` first-event times per target, on fresh connections after a warm-up, the targets
    taking turns in batches of 25 (the order rotating, starting at round `r`'s place)."""
    socks = {name: connect_nodelay(host, port) for name, host, port, _ in targets}
    for name, _, _, prefix in targets:
        first_events(socks[name], f"{prefix}sse?n=1", min(20, count))  # warm-up
    times = {name: [] for name, _, _, _ in targets}
    batch = 25
    for b in range((count + batch - 1) // batch):
        for k in range(len(targets)):
            name, _, _, prefix = targets[(k + b + r) % len(targets)]
            times[name] += first_events(socks[name], f"{prefix}sse?n=1",
                                        min(batch, count - b * batch))
    for sock in socks.values():
        sock.close()
    return times


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("raw")
    ap.add_argument("out_md")
    ap.add_argument("--target", action="append", required=True)
    ap.add_argument("--bytes", type=int, default=1024 * 1024 * 1024)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--sse", type=int, default=500)
    a = ap.parse_args()
    targets = [parse_target(t) for t in a.target]
    names = [t[0] for t in targets]

    mibs = {n: [] for n in names}
    first = {n: [] for n in names}
    rounds_first = []  # each round's samples per target
    for r in range(a.rounds):
        for k in range(len(targets)):
            name, host, port, prefix = targets[(k + r) % len(targets)]
            v = throughput(host, port, f"{prefix}bytes?n={a.bytes}", a.bytes)
            mibs[name].append(v)
            append_record(a.raw, {"kind": "stream", "measure": "throughput", "target": name,
                                  "bytes": a.bytes, "round": r + 1, "mib_s": round(v, 1)})
            print(f"  stream throughput {name}: {v:.0f} MiB/s", flush=True)
        share = a.sse // a.rounds + (1 if r < a.sse % a.rounds else 0)
        rounds_first.append(first_event_round(targets, share, r))
        for name in names:
            first[name] += rounds_first[-1][name]
    for name in names:
        append_record(a.raw, {"kind": "stream", "measure": "first_event", "target": name,
                              "count": len(first[name]), "median_us": round(median(first[name]), 1),
                              "p90_us": round(percentile(first[name], 90), 1)})
        print(f"  first event {name}: median {median(first[name]):.0f} µs", flush=True)

    base = median(first["direct"]) if "direct" in first else None
    lines = [
        "## Streaming (issue 14)",
        "",
        f"Download of {a.bytes / 2**20:.0f} MiB (Content-Length, 64 KiB writes by the function), "
        f"{a.rounds} rounds; SSE time to first event over {a.sse} requests, spread over the "
        "rounds (after each round's downloads).",
        "",
        "| target | MiB/s best | MiB/s median | first event median µs | p90 µs | added µs "
        "| added µs per round |",
        "|---|---|---|---|---|---|---|",
    ]
    for n in names:
        added, per_round = "—", "—"
        if base is not None and n != "direct":
            added = f"{median(first[n]) - base:.0f}"
            per_round = " / ".join(f"{median(t[n]) - median(t['direct']):.0f}"
                                   for t in rounds_first if t[n] and t["direct"])
        lines.append(f"| {n} | {max(mibs[n]):.0f} | {median(mibs[n]):.0f} | "
                     f"{median(first[n]):.0f} | {percentile(first[n], 90):.0f} | {added} "
                     f"| {per_round} |")
    if "unifaas" in mibs and "nginx" in mibs:
        lines += ["", f"unifaas / nginx throughput (median): "
                      f"{median(mibs['unifaas']) / median(mibs['nginx']):.2f}×"]
    text = "\n".join(lines) + "\n"
    with open(a.out_md, "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
