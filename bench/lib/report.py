#!/usr/bin/env python3
"""Turns the raw records of one bench run into results.json and results.md.

    report.py RAW_JSONL MACHINE_JSON OUT_DIR [--metrics FILE] [--snapshot SNAPSHOT_JSON]

Aggregation: wrk runs repeated in rounds are summarised by the median over the rounds of each
number (p50, p99, req/s). Cold starts: median and p90 over the runs. Ratios are unifaas / other.
"""

import argparse
import json
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import median, summary_ms  # noqa: E402

TARGETS = {
    "warm_added_p50_us": 50,
    "coldstart_overhead_median_ms": 2.0,
    "idle_cpu_percent": 0.0,
    "idle_rss_mib": 20.0,
}


def load(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def wrk_summary(records):
    """Median over rounds of the numbers of a set of wrk records."""
    if not records:
        return None
    return {
        "rounds": len(records),
        "p50_us": median([r["latency_us"]["50"] for r in records]),
        "p50_best_us": min(r["latency_us"]["50"] for r in records),
        "p90_us": median([r["latency_us"]["90"] for r in records]),
        "p99_us": median([r["latency_us"]["99"] for r in records]),
        "max_us": max(r["latency_us"]["max"] for r in records),
        "rps": round(median([r["rps"] for r in records]), 1),
        "requests": sum(r["requests"] for r in records),
        "errors": sum(r["failed"] for r in records),
    }


def ratio(a, b, digits=2):
    if a is None or b in (None, 0):
        return None
    return round(a / b, digits)


def diff(a, b, digits=1):
    if a is None or b is None:
        return None
    return round(a - b, digits)


def fmt(v, digits=0, unit=""):
    if v is None:
        return "–"
    if isinstance(v, float) and digits == 0:
        v = round(v)
    if isinstance(v, (int, float)):
        s = f"{v:,.{digits}f}" if digits else f"{int(v):,}"
        return s.replace(",", " ") + unit
    return str(v)


def table(headers, rows):
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def cold_metrics(text):
    """Mean start-to-ready per function from the daemon's own histogram."""
    sums, counts = {}, {}
    for line in text.splitlines():
        m = re.match(r'unifaas_cold_start_duration_seconds_(sum|count)\{function="([^"]+)"\} (\S+)',
                     line)
        if m:
            (sums if m.group(1) == "sum" else counts)[m.group(2)] = float(m.group(3))
    return {f: sums[f] / counts[f] * 1000.0 for f in sums if counts.get(f)}


def build(records, machine, metrics_text):
    res = {"machine": machine, "config": machine.get("config", {})}
    for r in records:  # the accelerator the daemon chose, from the QEMU command line it used
        argv = r.get("unifaas_qemu_argv") or []
        if "-accel" in argv:
            machine["accel"] = argv[argv.index("-accel") + 1]
    wrk = [r for r in records if r["kind"] == "wrk"]

    # 1 + 2: warm latency and throughput (same runs), per function (records of runs before the
    # second function existed have no "fn": they are hello's).
    warm = {}
    for r in (r for r in wrk if r.get("phase") == "warm"):
        warm.setdefault((r.get("fn", "hello"), r["target"], r["conns"]), []).append(r)
    cells = sorted({(f, c) for f, _, c in warm})
    res["warm"] = []
    for fn, c in cells:
        d, u, n = (wrk_summary(warm.get((fn, t, c), [])) for t in ("direct", "unifaas", "nginx"))
        row = {"fn": fn, "conns": c, "direct": d, "unifaas": u, "nginx": n}
        if d and u:
            row["added_p50_us"] = diff(u["p50_us"], d["p50_us"])
            # Best round of each: at low concurrency a round's p50 depends on whether the
            # scheduler keeps client and server on one core; noise only ever adds.
            row["added_p50_best_us"] = diff(u["p50_best_us"], d["p50_best_us"])
            row["added_p99_us"] = diff(u["p99_us"], d["p99_us"])
            row["p50_ratio_vs_direct"] = ratio(u["p50_us"], d["p50_us"])
            row["rps_ratio_vs_direct"] = ratio(u["rps"], d["rps"])
        if n and d:
            row["nginx_added_p50_us"] = diff(n["p50_us"], d["p50_us"])
            row["nginx_added_p50_best_us"] = diff(n["p50_best_us"], d["p50_best_us"])
        if n and u:
            row["rps_ratio_vs_nginx"] = ratio(u["rps"], n["rps"])
        res["warm"].append(row)

    # 3: cold starts.
    daemon_cold = cold_metrics(metrics_text) if metrics_text else {}
    res["coldstart"] = []
    for r in (r for r in records if r["kind"] == "coldstart"):
        u = summary_ms(r["unifaas_ms"])
        br = summary_ms(r["bare_ready_ms"])
        bp = summary_ms(r["bare_response_ms"])
        row = {"backend": r["backend"], "function": r["function"], "unifaas_ms": u,
               "bare_ready_ms": br, "bare_response_ms": bp,
               "bare_phases_ms": {k: summary_ms(v) for k, v in r["bare_phases_ms"].items()},
               "failures": r["failures"], "raw": {k: r[k] for k in
                                                  ("unifaas_ms", "bare_ready_ms",
                                                   "bare_response_ms")}}
        if u["n"] and bp["n"]:
            row["overhead_median_ms"] = round(u["median"] - bp["median"], 3)
            row["overhead_p90_ms"] = round(u["p90"] - bp["p90"], 3)
            row["overhead_vs_ready_median_ms"] = round(u["median"] - br["median"], 3)
            row["ratio_median"] = ratio(u["median"], bp["median"], 3)
            # Robust to the host's load drifting during the series: run i of each side ran
            # back to back.
            pairs = [a - b for a, b in zip(r["unifaas_ms"], r["bare_response_ms"])]
            row["overhead_paired_median_ms"] = round(median(pairs), 3) if pairs else None
            row["overhead_min_ms"] = round(u["min"] - bp["min"], 3)
        if r["function"] in daemon_cold:
            row["daemon_start_to_ready_mean_ms"] = round(daemon_cold[r["function"]], 2)
        for k in ("unifaas_qemu_argv", "bare_qemu_argv"):
            if k in r:
                row[k] = " ".join(r[k])
        res["coldstart"].append(row)

    # 4: bursts.
    res["burst"] = [{k: r[k] for k in ("n", "ok", "codes", "latency_ms", "ok_latency_ms")}
                    for r in records if r["kind"] == "burst" and r.get("phase") == "burst"]

    # 5: idle.
    res["idle"] = [{k: r[k] for k in r if k != "kind"} for r in records if r["kind"] == "idle"]

    # 6: fleet.
    fleet = {}
    for r in (r for r in wrk if r.get("phase") == "fleet"):
        fleet.setdefault((r["functions"], r["instances"]), []).append(r)
    res["fleet"] = []
    base = None
    for key in sorted(fleet):
        s = wrk_summary(fleet[key])
        s["instances_after"] = max(r.get("instances_after", 0) for r in fleet[key])
        if base is None:
            base = s
        res["fleet"].append({"functions": key[0], "instances": key[1], **s,
                             "p50_added_vs_smallest_us": diff(s["p50_us"], base["p50_us"])})

    # Streaming (stream.py), OCI cold start, HAProxy hop: their own records.
    stream = {}
    for r in (r for r in records if r["kind"] == "stream"):
        stream.setdefault(r["measure"], {}).setdefault(r["target"], []).append(r)
    res["stream"] = {
        "throughput_mib_s": {t: median([x["mib_s"] for x in v])
                             for t, v in stream.get("throughput", {}).items()},
        "first_event_median_us": {t: v[-1]["median_us"]
                                  for t, v in stream.get("first_event", {}).items()},
    }
    res["websocket"] = {r["target"]: {"p50_us": r["median_us"], "p99_us": r["p99_us"]}
                        for r in records if r["kind"] == "websocket"}
    res["oci_coldstart"] = {r["side"]: summary_ms(r["ms"]) for r in records
                            if r["kind"] == "oci_coldstart"}
    oci = {r["side"]: r["ms"] for r in records if r["kind"] == "oci_coldstart"}
    if oci.get("unifaas-oci") and oci.get("crun response"):
        res["oci_coldstart"]["overhead_paired_median_ms"] = round(median(
            [a - b for a, b in zip(oci["unifaas-oci"], oci["crun response"])]), 3)
    res["haproxy_hop"] = next((r["by_conns"] for r in records if r["kind"] == "haproxy_hop"), {})

    # Targets.
    t = []
    for fn in sorted({w["fn"] for w in res["warm"]}):
        c1 = next((w for w in res["warm"] if w["conns"] == 1 and w["fn"] == fn), None)
        if c1 and "added_p50_us" in c1:
            v = c1["added_p50_us"]
            t.append((f"Warm added latency p50, c=1, {fn}", "≤ 50 µs",
                      f"{fmt(v, 1)} µs (best rounds: {fmt(c1.get('added_p50_best_us'), 1)} µs)",
                      v <= TARGETS["warm_added_p50_us"]))
        c16 = next((w for w in res["warm"] if w["conns"] == 16 and w["fn"] == fn), None)
        if c16 and "rps_ratio_vs_nginx" in c16:
            v = c16["rps_ratio_vs_nginx"]
            t.append((f"Warm throughput c=16 vs nginx, {fn}", "≥ 1.00 × nginx",
                      f"{v:.2f} × ({fmt(c16['unifaas']['rps'])} vs "
                      f"{fmt(c16['nginx']['rps'])} req/s)", v >= 1.0))
    st = res["stream"]
    mib = st["throughput_mib_s"]
    if mib.get("unifaas") and mib.get("nginx"):
        v = mib["unifaas"] / mib["nginx"]
        t.append(("Streaming download vs nginx (proxy_buffering off)", "≥ 0.90 × nginx",
                  f"{v:.2f} × ({fmt(mib['unifaas'])} vs {fmt(mib['nginx'])} MiB/s)", v >= 0.9))
    fe = st["first_event_median_us"]
    if fe.get("unifaas") is not None and fe.get("direct") is not None:
        v = fe["unifaas"] - fe["direct"]
        t.append(("SSE time to first event, added over direct", "≤ 50 µs", f"{fmt(v, 1)} µs",
                  v <= 50))
    for row in res["coldstart"]:
        if "overhead_median_ms" in row:
            v = row["overhead_median_ms"]
            t.append((f"Cold-start overhead median, {row['backend']}", "≤ 2 ms",
                      f"{fmt(v, 1)} ms", v <= TARGETS["coldstart_overhead_median_ms"]))
    for row in res["idle"]:
        if row.get("instances") == 0:
            v = row["cpu_percent"]
            t.append((f"Idle CPU over {row['seconds']:.0f} s, no instances", "0.0 %",
                      f"{v:.2f} % ({row['cpu_s']:.2f} s)", row["cpu_s"] == 0))
            rss = row["rss_kib_end"] / 1024
            t.append(("Idle RSS, no instances", "< 20 MiB", f"{rss:.1f} MiB",
                      rss < TARGETS["idle_rss_mib"]))
        elif row.get("instances"):
            v = row["cpu_percent"]
            t.append((f"Idle CPU over {row['seconds']:.0f} s, {row['instances']} idle instances",
                      "0.0 %", f"{v:.2f} % ({row['cpu_s']:.2f} s)", row["cpu_s"] == 0))
    res["targets"] = [{"target": a, "goal": b, "measured": c, "met": d} for a, b, c, d in t]
    return res


def signed(v, unit):
    return "–" if v is None else ("+" if v >= 0 else "−") + fmt(abs(v)) + unit


def summary_rows(res):
    """One row per capability: unifaas, the alternative a user would use, and the ratio."""
    rows = []
    for fn in sorted({w["fn"] for w in res["warm"]}):
        for w in (w for w in res["warm"] if w["fn"] == fn and w["conns"] in (1, 16)):
            u, n = w.get("unifaas"), w.get("nginx")
            if not u or not n:
                continue
            if w["conns"] == 1 and "added_p50_us" in w:
                rows.append((f"warm request, added p50 at c=1 over direct (`{fn}`)",
                             signed(w["added_p50_us"], " µs"),
                             "nginx reverse proxy: " + signed(w.get("nginx_added_p50_us"), " µs"),
                             "–"))
            if w["conns"] == 16:
                rows.append((f"warm throughput at c=16 (`{fn}`)", f"{fmt(u['rps'])} req/s",
                             f"nginx reverse proxy (upstream keepalive 64): {fmt(n['rps'])} req/s",
                             f"**{w['rps_ratio_vs_nginx']:.2f} ×**"))
    mib = res["stream"]["throughput_mib_s"]
    if mib.get("unifaas") and mib.get("nginx"):
        rows.append(("streaming download (Content-Length, read as fast as possible)",
                     f"{fmt(mib['unifaas'])} MiB/s",
                     f"nginx, proxy_buffering off: {fmt(mib['nginx'])} MiB/s "
                     f"(direct {fmt(mib.get('direct'))})",
                     f"**{mib['unifaas'] / mib['nginx']:.2f} ×**"))
    fe = res["stream"]["first_event_median_us"]
    if fe.get("unifaas") is not None and fe.get("direct") is not None:
        nginx = ("nginx, proxy_buffering off: " + signed(fe["nginx"] - fe["direct"], " µs")
                 if fe.get("nginx") is not None else "–")
        rows.append(("SSE time to first event, added over direct",
                     signed(fe["unifaas"] - fe["direct"], " µs"), nginx, "–"))
    ws = res["websocket"]
    if ws.get("unifaas") and ws.get("direct"):
        u, d = ws["unifaas"], ws["direct"]
        rows.append(("WebSocket echo round trip, added over direct (p50 / p99)",
                     f"{signed(u['p50_us'] - d['p50_us'], ' µs')} / "
                     f"{signed(u['p99_us'] - d['p99_us'], ' µs')}",
                     f"direct: {fmt(d['p50_us'])} / {fmt(d['p99_us'])} µs", "–"))
    names = {"docker": "bare Docker Engine API create + start", "vm": "bare QEMU, same argv"}
    for c in res["coldstart"]:
        u, bp = c["unifaas_ms"], c["bare_response_ms"]
        if u.get("n") and bp.get("n"):
            rows.append((f"cold start to first response, {c['backend']} (median)",
                         f"{fmt(u['median'], 1)} ms",
                         f"{names.get(c['backend'], 'bare')}: {fmt(bp['median'], 1)} ms",
                         f"{c['ratio_median']:.2f} ×"))
    oci = res["oci_coldstart"]
    if oci.get("unifaas-oci", {}).get("n") and oci.get("crun response", {}).get("n"):
        a, b = oci["unifaas-oci"]["median"], oci["crun response"]["median"]
        rows.append(("cold start to first response, OCI/crun (median)", f"{fmt(a, 1)} ms",
                     f"bare `crun run`, same config.json: {fmt(b, 1)} ms", f"{a / b:.2f} ×"))
    snap = res.get("snapshot")
    if snap and snap.get("restore_p50_ms") and snap.get("boot_p50_ms"):
        rows.append(("microVM cold start from a snapshot (p50)",
                     f"{fmt(snap['restore_p50_ms'], 1)} ms",
                     f"the same microVM booted: {fmt(snap['boot_p50_ms'], 1)} ms",
                     f"{snap['restore_p50_ms'] / snap['boot_p50_ms']:.2f} ×"))
    hop = res["haproxy_hop"].get("1")
    if hop:
        rows.append(("fleet: the HAProxy hop in front of a node, added p50 at c=1",
                     signed(hop["added_p50_us"], " µs"), "(a fleet needs a balancer)", "–"))
    for i in res["idle"]:
        rows.append((f"idle daemon, {i.get('instances', '?')} idle instances",
                     f"{i['cpu_percent']:.2f} % CPU, {i['rss_kib_end'] / 1024:.1f} MiB RSS",
                     "–", "–"))
    return rows


def markdown(res):
    m = res["machine"]
    cfg = res["config"]
    out = [f"# unifaas benchmark — {m.get('date', '')}", ""]
    out.append(f"Mode: **{cfg.get('mode', '?')}** (wrk {cfg.get('wrk_seconds')} s × "
               f"{cfg.get('rounds')} rounds per cell; {cfg.get('cold_runs')} cold starts per "
               f"side; idle {cfg.get('idle_seconds')} s). Machine: {m.get('cpu_model')}, "
               f"{m.get('nproc')} CPUs, kernel {m.get('kernel')}; {m.get('unifaas')}, commit "
               f"{m.get('git')}, {m.get('build_type')}; VM accel {m.get('accel', '?')}; "
               f"{m.get('dockerd')}; {m.get('qemu')}; {m.get('nginx')}; {m.get('wrk')}. "
               f"Load average (1/5/15 min) at the start {m.get('loadavg_start', '?')}, at the end "
               f"{m.get('loadavg_end', '?')}.")
    out.append("")

    out += ["## Targets", ""]
    out.append(table(["target", "goal", "measured", "met"],
                     [(t["target"], t["goal"], t["measured"], "met" if t["met"] else "**not met**")
                      for t in res["targets"]]))
    out.append("")

    out += ["## Summary: what unifaas costs against what a user would use instead", ""]
    out.append(table(["capability", "unifaas", "what a user would use instead", "ratio"],
                     summary_rows(res)))
    out.append("")
    out.append("Ratios are unifaas / the alternative (for latencies and times lower is better, for "
               "throughput higher is better). Conditions: see the line above and each section.")
    out.append("")

    out += ["## 1. Warm latency (wrk, keep-alive, container functions `hello` (a thread per "
            "connection) and `hello-epoll` (one epoll thread, a pre-built response), GET /hello)",
            ""]
    rows = []
    for w in res["warm"]:
        if w["conns"] not in (1, 16) or not w.get("direct") or not w.get("unifaas"):
            continue
        d, u, n = w["direct"], w["unifaas"], w.get("nginx")
        rows.append((w["fn"], w["conns"], fmt(d["p50_us"]), fmt(u["p50_us"]), f"**{fmt(w['added_p50_us'])}**",
                     fmt(w.get("added_p50_best_us")),
                     f"{w['p50_ratio_vs_direct']:.2f}", fmt(d["p99_us"]), fmt(u["p99_us"]),
                     fmt(w["added_p99_us"]),
                     fmt(n["p50_us"]) if n else "–",
                     fmt(w.get("nginx_added_p50_us")), fmt(w.get("nginx_added_p50_best_us"))))
    out.append(table(["function", "c", "direct p50 µs", "unifaas p50 µs", "added p50 µs",
                      "added p50, best rounds µs", "unifaas/direct", "direct p99 µs",
                      "unifaas p99 µs", "added p99 µs", "nginx p50 µs", "nginx added p50 µs",
                      "nginx added p50, best rounds µs"], rows))
    out.append("")
    out.append("Median over the rounds of each target's p50; *best rounds*: the lowest p50 of each "
               "target (at low concurrency a round's p50 depends on whether the scheduler keeps "
               "client and server on one core).")
    out.append("")

    out += ["## 2. Warm throughput (wrk -t2 -c N; requests/s)", ""]
    rows = []
    for w in res["warm"]:
        d, u, n = w.get("direct"), w.get("unifaas"), w.get("nginx")
        errs = sum(x["errors"] for x in (d, u, n) if x)
        rows.append((w["fn"], w["conns"], fmt(d and d["rps"]), fmt(n and n["rps"]),
                     fmt(u and u["rps"]),
                     f"**{w['rps_ratio_vs_nginx']:.2f}**" if "rps_ratio_vs_nginx" in w else "–",
                     f"{w['rps_ratio_vs_direct']:.2f}" if "rps_ratio_vs_direct" in w else "–",
                     fmt(n and n["p50_us"]), fmt(u and u["p50_us"]), errs))
    out.append(table(["function", "c", "direct", "nginx", "unifaas", "unifaas/nginx",
                      "unifaas/direct",
                      "nginx p50 µs", "unifaas p50 µs", "errors"], rows))
    out.append("")

    if not (res["coldstart"] or res["burst"] or res["idle"] or res["fleet"]):
        return "\n".join(out)  # --warm-only: sections 3-6 did not run
    out += ["## 3. Cold start (single-use function, no instance; ms)", ""]
    rows = []
    for c in res["coldstart"]:
        u, br, bp = c["unifaas_ms"], c["bare_ready_ms"], c["bare_response_ms"]
        if not u.get("n") or not bp.get("n"):
            rows.append((c["backend"], u.get("n", 0)) + ("–",) * 11)
            continue
        rows.append((c["backend"], f"{u['n']}/{bp['n']}", fmt(u["median"], 1), fmt(u["p90"], 1),
                     fmt(br["median"], 1), fmt(bp["median"], 1), fmt(bp["p90"], 1),
                     f"**{fmt(c['overhead_median_ms'], 1)}**", fmt(c["overhead_p90_ms"], 1),
                     fmt(c.get("overhead_paired_median_ms"), 1), fmt(c.get("overhead_min_ms"), 1),
                     f"{c['ratio_median']:.3f}", fmt(c.get("daemon_start_to_ready_mean_ms"), 1)))
    out.append(table(["backend", "runs (unifaas/bare)", "unifaas median", "unifaas p90",
                      "bare ready median", "bare response median", "bare response p90",
                      "overhead median", "overhead p90", "overhead paired median",
                      "overhead of the minima", "unifaas/bare", "daemon's start→ready mean"],
                     rows))
    out.append("")
    out.append("*bare ready*: sandbox start requested → its readiness callback; *bare response*: "
               "→ response of its first GET /hello (what unifaas must also do). Overhead = "
               "unifaas − bare response: of the medians, of the p90s, the median of the run-by-run "
               "differences (each pair ran back to back), and of the fastest runs.")
    phases = [c for c in res["coldstart"] if c["bare_phases_ms"]]
    if phases:
        out.append("")
        for c in phases:
            out.append(f"Bare {c['backend']} phases (median ms): " + ", ".join(
                f"{k} {fmt(v.get('median'), 1)}" for k, v in c["bare_phases_ms"].items()) + ".")
    fails = [f"{c['backend']}: {f}" for c in res["coldstart"] for f in c["failures"]]
    if fails:
        out.append("")
        out.append("Failures: " + "; ".join(fails[:10]))
    out.append("")

    out += ["## 4. Burst (simultaneous requests to a single-use container function with no "
            "instance: concurrent-requests 1, defaults max-instances 10 and queue-timeout 10 s)",
            ""]
    rows = [(b["n"], f"{b['ok']}/{b['n']}", ", ".join(f"{k}×{v}" for k, v in sorted(b["codes"].items())),
             fmt(b["latency_ms"].get("mean"), 1), fmt(b["latency_ms"].get("median"), 1),
             fmt(b["latency_ms"].get("max"), 1)) for b in res["burst"]]
    out.append(table(["requests", "succeeded", "status codes", "mean ms", "median ms", "max ms"],
                     rows))
    out.append("")

    out += ["## 5. Idle footprint (daemon process)", ""]
    rows = [(i.get("instances", "?"), fmt(i["seconds"]), f"{i['cpu_s']:.2f}",
             f"{i['cpu_percent']:.3f}", f"{i['rss_kib_end'] / 1024:.1f}",
             f"{i['rss_kib_max'] / 1024:.1f}", i["threads"]) for i in res["idle"]]
    out.append(table(["idle instances", "seconds", "CPU s", "CPU %", "RSS MiB (end)",
                      "RSS MiB (max)", "threads"], rows))
    out.append("")

    out += ["## 6. Dispatch cost as the fleet grows (wrk -t1 -c1)", ""]
    rows = [(f["functions"], f["instances"], f["instances_after"], fmt(f["p50_us"]),
             fmt(f["p99_us"]), fmt(f["rps"]), fmt(f["p50_added_vs_smallest_us"]), f["errors"])
            for f in res["fleet"]]
    out.append(table(["registered functions", "live instances", "instances after", "p50 µs",
                      "p99 µs", "req/s", "p50 vs first row µs", "errors"], rows))
    out.append("")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("raw")
    ap.add_argument("machine")
    ap.add_argument("out")
    ap.add_argument("--metrics")
    ap.add_argument("--snapshot", help="bench/snapshot.sh's snapshot.json, if it ran")
    a = ap.parse_args()
    records = load(a.raw) if os.path.exists(a.raw) else []
    with open(a.machine) as f:
        machine = json.load(f)
    metrics = None
    if a.metrics and os.path.exists(a.metrics):
        with open(a.metrics) as f:
            metrics = f.read()
    res = build(records, machine, metrics)
    if a.snapshot and os.path.exists(a.snapshot):
        with open(a.snapshot) as f:
            snap = json.load(f)
        res["snapshot"] = {k: snap.get(k) for k in ("boot_p50_ms", "restore_p50_ms", "ratio_p50",
                                                   "pss_ratio_each")}
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "results.json"), "w") as f:
        json.dump(res, f, indent=2, ensure_ascii=False)
        f.write("\n")
    md = markdown(res)
    with open(os.path.join(a.out, "results.md"), "w") as f:
        f.write(md)
    print(md)


if __name__ == "__main__":
    main()
