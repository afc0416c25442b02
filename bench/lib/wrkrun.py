#!/usr/bin/env python3
"""Runs wrk once (keep-alive, --latency, bench/lib/wrk_json.lua) and appends its results as one
JSON line to the raw results file.

    wrkrun.py RAW URL -c N -d SECONDS [--tag key=value ...] [--quiet]

Threads: 1 at concurrency 1, else 2 (wrk -t2 -c N). The record holds requests/s, latency
percentiles in µs and the error counts; any key=value tags are copied into it (kind, target,
round, ...).
"""

import argparse
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import append_record, instances  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def run_wrk(url, conns, seconds, timeout_s=10):
    threads = 1 if conns == 1 else 2
    cmd = [
        "wrk", "--latency", f"-t{threads}", f"-c{conns}", f"-d{seconds}s",
        f"--timeout={timeout_s}s", "-s", os.path.join(HERE, "wrk_json.lua"), url,
    ]
    # wrk stops by itself after -d; the outer timeout only guards against a hung run.
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + timeout_s + 30)
    for line in out.stdout.splitlines():
        if line.startswith("WRKJSON "):
            result = json.loads(line[len("WRKJSON "):])
            break
    else:
        raise RuntimeError(f"wrk gave no result (exit {out.returncode}):\n{out.stdout}{out.stderr}")
    result["threads"] = threads
    result["rps"] = round(result["requests"] / (result["duration_us"] / 1e6), 1)
    e = result["errors"]
    result["failed"] = e["connect"] + e["read"] + e["write"] + e["status"] + e["timeout"]
    return result


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("raw")
    ap.add_argument("url")
    ap.add_argument("-c", type=int, required=True)
    ap.add_argument("-d", type=int, required=True)
    ap.add_argument("--tag", action="append", default=[])
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--count-after", metavar="FUNCTION",
                    help="record how many instances FUNCTION has after the run")
    a = ap.parse_args()
    rec = {"kind": "wrk", "url": a.url, "conns": a.c, "seconds": a.d}
    for t in a.tag:
        k, v = t.split("=", 1)
        rec[k] = int(v) if v.isdigit() else v
    rec.update(run_wrk(a.url, a.c, a.d))
    if a.count_after:
        rec["instances_after"] = len(instances(a.count_after))
    append_record(a.raw, rec)
    if not a.quiet:
        lat = rec["latency_us"]
        tags = " ".join(f"{k}={rec[k]}" for k in sorted(dict(t.split("=", 1) for t in a.tag)))
        after = f", {rec['instances_after']} instances after" if a.count_after else ""
        print(f"  wrk {tags} c={a.c}: {rec['rps']:.0f} req/s, p50 {lat['50']} µs, "
              f"p99 {lat['99']} µs, errors {rec['failed']}{after}", flush=True)


if __name__ == "__main__":
    main()
