#!/usr/bin/env python3
"""Median of each OciBackend::start phase and of the pool's "ready in" over a daemon log at
debug level (bench/oci.sh).

    oci_phases.py DAEMON_LOG
"""

import re
import statistics
import sys


def main():
    phases, ready = {}, []
    for line in open(sys.argv[1], errors="replace"):
        m = re.search(r"crun run, (.*) ms$|runc run, (.*) ms$", line)
        if m:
            words = (m.group(1) or m.group(2)).split()
            for name, value in zip(words[0::2], words[1::2]):
                phases.setdefault(name, []).append(float(value))
        m = re.search(r"instance \w+: ready in (\d+) ms \(container", line)
        if m:
            ready.append(float(m.group(1)))
    for name, values in phases.items():
        print(f"  {name:8s} {statistics.median(values):6.1f} ms  (n={len(values)})")
    if ready:
        print(f"  ready-in {statistics.median(ready):6.1f} ms  (pool: created -> callback, "
              f"n={len(ready)})")


if __name__ == "__main__":
    main()
