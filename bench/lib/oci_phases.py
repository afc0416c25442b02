#!/usr/bin/env python3
"""Median of each OciBackend::start phase and of the pool's "ready in" over a daemon log at
debug level (bench/oci.sh).

    oci_phases.py DAEMON_LOG
"""

import re
import statistics
import sys


def main():
    phases, ready, ready_spare = {}, [], []
    for line in open(sys.argv[1], errors="replace"):
        m = re.search(r"crun run, (.*) ms$|runc run, (.*) ms$", line)
        if m:
            words = (m.group(1) or m.group(2)).split()
            for name, value in zip(words[0::2], words[1::2]):
                phases.setdefault(name, []).append(float(value))
        m = re.search(r"spare started, (.*) ms$", line)
        if m:
            words = m.group(1).split()
            for name, value in zip(words[0::2], words[1::2]):
                phases.setdefault("spare-" + name, []).append(float(value))
        m = re.search(r"instance \w+: ready in (\d+) ms \(container", line)
        if m:
            (ready_spare if "spare, init pid" in line else ready).append(float(m.group(1)))
    for name, values in phases.items():
        print(f"  {name:8s} {statistics.median(values):6.1f} ms  (n={len(values)})")
    if ready:
        print(f"  ready-in {statistics.median(ready):6.1f} ms  (pool: created -> callback, "
              f"n={len(ready)})")
    if ready_spare:
        print(f"  ready-in {statistics.median(ready_spare):6.1f} ms  (started from a spare, "
              f"n={len(ready_spare)})")


if __name__ == "__main__":
    main()
