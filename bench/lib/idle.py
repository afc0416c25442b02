#!/usr/bin/env python3
"""Idle footprint of a process: RSS (VmRSS from /proc/PID/status, sampled every second) and CPU
time (utime+stime from /proc/PID/stat, all threads) over SECONDS.

    idle.py RAW PID SECONDS [--tag key=value ...]
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import append_record  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)


def status_kib(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("raw")
    ap.add_argument("pid", type=int)
    ap.add_argument("seconds", type=float)
    ap.add_argument("--tag", action="append", default=[])
    a = ap.parse_args()
    rss = [status_kib(a.pid, "VmRSS")]
    t0, c0 = time.monotonic(), cpu_ticks(a.pid)
    deadline = t0 + a.seconds
    while time.monotonic() < deadline:
        time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
        rss.append(status_kib(a.pid, "VmRSS"))
    elapsed, c1 = time.monotonic() - t0, cpu_ticks(a.pid)
    cpu_s = (c1 - c0) / TICK
    rec = {
        "kind": "idle",
        "seconds": round(elapsed, 2),
        "cpu_s": cpu_s,
        "cpu_percent": round(100.0 * cpu_s / elapsed, 3),
        "clock_ticks_per_s": TICK,
        "rss_kib_start": rss[0],
        "rss_kib_end": rss[-1],
        "rss_kib_max": max(rss),
        "threads": status_kib(a.pid, "Threads"),
    }
    for t in a.tag:
        k, v = t.split("=", 1)
        rec[k] = int(v) if v.isdigit() else v
    append_record(a.raw, rec)
    print(f"  idle {elapsed:.0f} s: CPU {cpu_s:.2f} s ({rec['cpu_percent']} %), RSS "
          f"{rss[-1] / 1024:.1f} MiB (max {max(rss) / 1024:.1f}), {rec['threads']} threads",
          flush=True)


if __name__ == "__main__":
    main()
