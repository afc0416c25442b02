#!/usr/bin/env python3
"""The HAProxy hop of a fleet (docs/FLEET.md): warm latency and throughput of one function
straight to unifaas and through HAProxy running the shipped examples/fleet/haproxy.cfg (one
server: the daemon under test), side by side, with wrk (bench/lib/wrkrun.py).

    haproxy_hop.py --ns NETNS --raw RAW --work DIR --example CFG [--seconds S] [--rounds N]
                   [--conns 1,16] [--daemon 127.0.0.1:8123] [--function hello]

Runs HAProxy and wrk inside NETNS (bench/run.sh's namespace) with the daemon already serving
FUNCTION there; appends the wrk records (phase=haproxy, target=unifaas|haproxy) and a summary
record (kind=haproxy_hop: p50 per target and connection count, median over rounds, and the added
µs: the median of each round's difference) to RAW; prints the summary. Reports, never judges.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import append_record  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
FRONT = "127.0.0.1:8190"


def haproxy_config(example, work, daemon):
    text = open(example).read()
    edits = [
        ("    stats socket /run/haproxy/admin.sock mode 600 level admin",
         f"    stats socket {work}/haproxy-bench.sock mode 600 level admin"),
        ("    log /dev/log local0\n", ""),
        ("    bind :80\n", f"    bind {FRONT}\n"),
        ("    server node1 192.0.2.11:8123\n    server node2 192.0.2.12:8123\n"
         "    server node3 192.0.2.13:8123\n", f"    server node1 {daemon}\n"),
        ("    bind 127.0.0.1:8404\n", "    bind 127.0.0.1:8405\n"),
    ]
    for old, new in edits:
        if old not in text:
            raise SystemExit(f"haproxy_hop: {example} changed: cannot find {old!r}")
        text = text.replace(old, new)
    path = os.path.join(work, "haproxy-bench.cfg")
    with open(path, "w") as f:
        f.write(text)
    return path


def innet(ns, argv):
    return ["nsenter", f"--net=/run/netns/{ns}", *argv]


def wait_serving(ns, url, seconds=15):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        r = subprocess.run(innet(ns, ["curl", "-fsS", "-o", "/dev/null", url]),
                           capture_output=True)
        if r.returncode == 0:
            return
        time.sleep(0.1)  # HAProxy has no readiness notification without systemd
    raise SystemExit(f"haproxy_hop: {url} does not answer through HAProxy")


def last_record(raw):
    with open(raw) as f:
        return json.loads(f.readlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ns", required=True)
    ap.add_argument("--raw", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--example", required=True)
    ap.add_argument("--seconds", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--conns", default="1,16")
    ap.add_argument("--daemon", default="127.0.0.1:8123")
    ap.add_argument("--function", default="hello")
    a = ap.parse_args()

    cfg = haproxy_config(a.example, a.work, a.daemon)
    log = open(os.path.join(a.work, "haproxy-bench.log"), "w")
    proc = subprocess.Popen(innet(a.ns, ["haproxy", "-db", "-f", cfg]), stdout=log,
                            stderr=subprocess.STDOUT)
    path = f"/invoke/{a.function}/hello"
    urls = {"unifaas": f"http://{a.daemon}{path}", "haproxy": f"http://{FRONT}{path}"}
    conns = [int(c) for c in a.conns.split(",")]
    p50 = {(t, c): [] for t in urls for c in conns}
    rps = {(t, c): [] for t in urls for c in conns}
    try:
        wait_serving(a.ns, urls["haproxy"])
        for t in urls:  # warm-up: connections on both hops
            subprocess.run(innet(a.ns, ["wrk", "-t1", "-c16", "-d1s", urls[t]]),
                           capture_output=True, check=True)
        for r in range(1, a.rounds + 1):
            for c in conns:
                order = list(urls) if (r + c) % 2 else list(reversed(urls))
                for t in order:
                    subprocess.run(
                        innet(a.ns, [sys.executable, os.path.join(HERE, "wrkrun.py"), a.raw,
                                     urls[t], "-c", str(c), "-d", str(a.seconds),
                                     "--tag", "phase=haproxy", "--tag", f"target={t}",
                                     "--tag", f"round={r}"]),
                        check=True)
                    rec = last_record(a.raw)
                    p50[(t, c)].append(rec["latency_us"]["50"])
                    rps[(t, c)].append(rec["rps"])
    finally:
        proc.terminate()
        proc.wait(timeout=10)

    summary = {"kind": "haproxy_hop", "rounds": a.rounds, "seconds": a.seconds, "by_conns": {}}
    print("HAProxy hop (median over rounds):")
    for c in conns:
        direct = statistics.median(p50[("unifaas", c)])
        hop = statistics.median(p50[("haproxy", c)])
        # Paired by round (the two runs of a round are back to back): robust to a machine whose
        # load drifts between rounds.
        added = statistics.median(h - d for d, h in zip(p50[("unifaas", c)], p50[("haproxy", c)]))
        entry = {
            "p50_us_unifaas": direct,
            "p50_us_haproxy": hop,
            "added_p50_us": added,
            "rps_unifaas": statistics.median(rps[("unifaas", c)]),
            "rps_haproxy": statistics.median(rps[("haproxy", c)]),
        }
        summary["by_conns"][str(c)] = entry
        print(f"  c={c}: p50 {direct:.0f} µs direct, {hop:.0f} µs through HAProxy "
              f"(added, paired by round: {added:+.0f} µs); {entry['rps_unifaas']:.0f} vs "
              f"{entry['rps_haproxy']:.0f} req/s")
    append_record(a.raw, summary)


if __name__ == "__main__":
    main()
