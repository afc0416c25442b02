#!/usr/bin/env python3
"""N simultaneous requests: one thread and one fresh connection per request, all released
together by a barrier; each request's latency is measured from that release to the end of its
response body.

    burst.py URL N [--timeout S] [--raw FILE --tag key=value ...]

Prints a one-line summary; with --raw appends {kind: burst, n, ok, codes, latency_ms:{...}}.
Also used to make N instances at once (URL = a /sleep request to a concurrent-requests=1
function).
"""

import argparse
import http.client
import os
import sys
import threading
import time
from urllib.parse import urlsplit

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import append_record, summary_ms  # noqa: E402


def burst(url, n, timeout):
    u = urlsplit(url)
    path = u.path + ("?" + u.query if u.query else "")
    barrier = threading.Barrier(n + 1)
    results = [None] * n

    def one(i):
        conn = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=timeout)
        barrier.wait()
        t0 = time.monotonic()
        try:
            conn.request("GET", path)
            res = conn.getresponse()
            res.read()
            results[i] = (res.status, (time.monotonic() - t0) * 1000.0)
        except Exception as e:  # noqa: BLE001 - a failure is a result here
            results[i] = (type(e).__name__, (time.monotonic() - t0) * 1000.0)
        finally:
            conn.close()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    barrier.wait()
    for t in threads:
        t.join()
    codes = {}
    for code, _ in results:
        codes[str(code)] = codes.get(str(code), 0) + 1
    ok = [ms for code, ms in results if code == 200]
    return {
        "n": n,
        "ok": len(ok),
        "codes": codes,
        "latency_ms": summary_ms([ms for _, ms in results]),
        "ok_latency_ms": summary_ms(ok),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("n", type=int)
    ap.add_argument("--timeout", type=float, default=120.0)
    ap.add_argument("--raw")
    ap.add_argument("--tag", action="append", default=[])
    a = ap.parse_args()
    rec = {"kind": "burst", "url": a.url}
    for t in a.tag:
        k, v = t.split("=", 1)
        rec[k] = int(v) if v.isdigit() else v
    rec.update(burst(a.url, a.n, a.timeout))
    if a.raw:
        append_record(a.raw, rec)
    lat = rec["latency_ms"]
    print(f"  burst of {a.n}: {rec['ok']} ok {rec['codes']}, mean {lat['mean']:.1f} ms, "
          f"max {lat['max']:.1f} ms", flush=True)


if __name__ == "__main__":
    main()
