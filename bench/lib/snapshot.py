#!/usr/bin/env python3
"""Snapshot cold starts: a single-use microVM function that boots against the same function with
[vm] snapshot = true (clones restored from a template), run after run, alternating which goes
first; then the memory (PSS) of N idle booted VMs against N idle clones.

    snapshot.py --daemon-pid PID --runs N --idle N --snapdir DIR --out FILE.json

Functions (made by bench/snapshot.sh): boot-once / snap-once (single-use) and boot-idle /
snap-idle (one slot each, long keepalive). Times are client-side (monotonic clock, ms): connect,
GET /invoke/F/hello, body received.
"""

import argparse
import json
import os
import re
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import UNIFAAS, children, cmdline, http_get, instances, percentile  # noqa: E402


def invoke(function, path="/hello"):
    t0 = time.monotonic()
    code, body = http_get(*UNIFAAS, f"/invoke/{function}{path}", timeout=120)
    ms = (time.monotonic() - t0) * 1000.0
    if code != 200:
        raise RuntimeError(f"{function}: unifaas answered {code}: {body[:300]!r}")
    return ms


def wait_until(pred, timeout, interval=0.02):
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
    return True


def qemu_children(daemon_pid):
    out = []
    for pid in children(daemon_pid):
        try:
            argv = cmdline(pid)
        except OSError:
            continue
        if argv and os.path.basename(argv[0]).startswith("qemu-system"):
            out.append((pid, argv))
    return out


def quiet(daemon_pid, function):
    return not instances(function) and not any(
        any(function + "-" in a for a in argv) for _, argv in qemu_children(daemon_pid))


def templates(snapdir):
    return [n for n in os.listdir(snapdir) if not n.startswith(".partial-")]


def pss_kib(pid):
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1])
    return 0


def metric(name):
    code, body = http_get(*UNIFAAS, "/metrics", timeout=10)
    for line in body.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return None


def idle_pss(function, count, kind):
    """Starts `count` instances of `function` at once (each request holds its one slot for a
    while), then sums the PSS of the qemu processes of its idle instances that started as
    `kind` (boot or restore), in MiB."""
    threads = [threading.Thread(target=invoke, args=(function, "/sleep?ms=3000"))
               for _ in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    pids = []
    for i in instances(function):
        m = re.search(r"qemu pid (\d+)", i.get("sandbox", ""))
        if i["state"] == "ready" and i.get("start") == kind and m:
            pids.append(int(m.group(1)))
    total = sum(pss_kib(p) for p in pids) / 1024.0
    return {"instances": len(pids), "pss_mib": total,
            "pss_mib_each": total / len(pids) if pids else None}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--daemon-pid", type=int, required=True)
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--idle", type=int, default=10)
    p.add_argument("--snapdir", required=True)
    p.add_argument("--out", required=True)
    a = p.parse_args()

    # Warm-up: the first snap-once cold start boots and builds the template beside it.
    warm = {"boot": invoke("boot-once"), "snap_first": invoke("snap-once")}
    if not wait_until(lambda: templates(a.snapdir), 180, 0.1):
        raise RuntimeError("no template was saved within 180 s")
    restore_ms_before = metric('unifaas_restore_duration_seconds_sum{function="snap-once"}') or 0

    boot, restore = [], []
    for run in range(a.runs):
        order = [("boot-once", boot), ("snap-once", restore)]
        if run % 2:
            order.reverse()
        for function, into in order:
            if not wait_until(lambda: quiet(a.daemon_pid, function), 60):
                raise RuntimeError(f"{function}: instance still there before run {run}")
            time.sleep(0.2)
            into.append(invoke(function))
    restored = metric('unifaas_cold_starts_total{function="snap-once",kind="restore"}')

    result = {
        "runs": a.runs,
        "warmup_ms": warm,
        "boot_ms": boot,
        "restore_ms": restore,
        "boot_p50_ms": percentile(boot, 50),
        "restore_p50_ms": percentile(restore, 50),
        "boot_p90_ms": percentile(boot, 90),
        "restore_p90_ms": percentile(restore, 90),
        "restore_starts": restored,
        "restore_callback_s_sum": (metric(
            'unifaas_restore_duration_seconds_sum{function="snap-once"}') or 0)
        - restore_ms_before,
    }
    result["ratio_p50"] = result["restore_p50_ms"] / result["boot_p50_ms"]
    if a.idle > 0:
        result["idle_boot"] = idle_pss("boot-idle", a.idle, "boot")
        # The first cold start of snap-idle boots (and builds its template); the clones follow.
        invoke("snap-idle")
        if not wait_until(lambda: len(templates(a.snapdir)) >= 2, 180, 0.1):
            raise RuntimeError("no template for snap-idle within 180 s")
        result["idle_snap"] = idle_pss("snap-idle", a.idle + 1, "restore")
        if result["idle_boot"]["pss_mib_each"] and result["idle_snap"]["pss_mib_each"]:
            result["pss_ratio_each"] = (result["idle_snap"]["pss_mib_each"]
                                        / result["idle_boot"]["pss_mib_each"])
    with open(a.out, "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps({k: v for k, v in result.items() if not k.endswith("_ms")}, indent=1))


if __name__ == "__main__":
    main()
