#!/usr/bin/env python3
"""Questions to the daemon's GET /status, for run.sh.

    status.py address FUNCTION          address of its (first) ready instance
    status.py count FUNCTION [STATE]    how many instances it has (in STATE)
    status.py wait FUNCTION N SECONDS [STATE]
                                        waits until it has exactly N instances; exit 1 if not
    status.py healthy SECONDS           waits until GET /healthz answers 200; exit 1 if not
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import UNIFAAS, http_get, instances, wait_instances  # noqa: E402


def main(argv):
    cmd = argv[1]
    if cmd == "address":
        ready = instances(argv[2], "ready")
        if not ready:
            sys.exit(f"function {argv[2]} has no ready instance")
        print(ready[0]["address"])
    elif cmd == "count":
        print(len(instances(argv[2], argv[3] if len(argv) > 3 else None)))
    elif cmd == "wait":
        state = argv[5] if len(argv) > 5 else None
        if not wait_instances(argv[2], int(argv[3]), float(argv[4]), state, interval=0.05):
            have = len(instances(argv[2], state))
            sys.exit(f"function {argv[2]}: {have} instances, not {argv[3]}, after {argv[4]} s")
    elif cmd == "healthy":
        deadline = time.monotonic() + float(argv[2])
        while True:
            try:
                if http_get(*UNIFAAS, "/healthz", timeout=2)[0] == 200:
                    return
            except OSError:
                pass
            if time.monotonic() >= deadline:
                sys.exit("unifaas did not answer /healthz")
            time.sleep(0.02)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
