#!/usr/bin/env python3
"""Prints the machine description of a bench run as JSON: this host (CPU, cores, kernel, memory)
and the versions run.sh passes in BENCH_* environment variables."""

import json
import os
import platform

cpu = "?"
with open("/proc/cpuinfo") as f:
    for line in f:
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
with open("/proc/meminfo") as f:
    mem_kib = int(next(l.split()[1] for l in f if l.startswith("MemTotal")))
env = lambda k: os.environ.get("BENCH_" + k, "").strip()
print(json.dumps({
    "date": env("DATE"),
    "nproc": os.cpu_count(),
    "cpu_model": cpu,
    "kernel": platform.release(),
    "mem_total_mib": mem_kib // 1024,
    "unifaas": env("UNIFAAS"),
    "git": env("GIT"),
    "build_type": env("BUILD_TYPE"),
    "dockerd": env("DOCKERD"),
    "runc": env("RUNC"),
    "qemu": env("QEMU"),
    "nginx": env("NGINX"),
    "wrk": env("WRK"),
    "python": platform.python_version(),
    "loadavg_start": env("LOAD_START"),
    "loadavg_end": " ".join(open("/proc/loadavg").read().split()[:3]),
    "config": json.loads(env("CONFIG") or "{}"),
}, indent=2))
