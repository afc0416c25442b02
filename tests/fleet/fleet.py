#!/usr/bin/env python3
"""Three unifaas nodes behind a real HAProxy: the scenarios of tests/fleet/run.sh.

Runs inside the front network namespace made by run.sh (HAProxy and the client live there); the
nodes' daemons are started in their own namespaces with nsenter. Python 3 standard library only.
Every loop is bounded; every wait is for an event or a bounded poll of a state nothing announces
(HAProxy's server state, a node's /status). Exit status 0 when every check passed.
"""

import argparse
import concurrent.futures
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

FRONT_PORT = 8000
NODE_PORT = 8123
AGENT_PORT = 8125
CHECK_INTER_S = 0.5  # HAProxy inter and agent-inter in the test
CHECK_FALL = 2
DRAIN_DELAY_S = 2  # >= agent-inter, >= inter x fall
FUNCTIONS = [f"f{i:02d}" for i in range(20)]

failures = []


def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what, flush=True)
    if not ok:
        failures.append(what)
    return ok


def log(text):
    print("     " + text, flush=True)


# --- HTTP ---------------------------------------------------------------------------------------


def http_get(host, port, path, timeout=30):
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path)
        res = conn.getresponse()
        return res.status, res.read().decode(errors="replace")
    finally:
        conn.close()


def via_front(path, timeout=30):
    return http_get("127.0.0.1", FRONT_PORT, path, timeout)


# --- nodes --------------------------------------------------------------------------------------


class Node:
    def __init__(self, args, n, registry):
        self.n = n
        self.name = f"node{n}"
        self.address = f"10.77.{n}.2"
        self.netns = f"{args.netns_prefix}{n}"
        self.daemon = args.daemon
        self.dir = os.path.join(args.work, self.name)
        os.makedirs(os.path.join(self.dir, "run"), exist_ok=True)
        daemon_lines = open(args.backend_config % n).read().split("---\n")[0]
        self.config = os.path.join(self.dir, "unifaas.toml")
        with open(self.config, "w") as f:
            f.write(
                f'registry = "{registry}"\n'
                f'runtime-dir = "{self.dir}/run"\n'
                f'node-name = "{self.name}"\n'
                f'agent-listen = ":{AGENT_PORT}"\n'
                f"drain-delay = {DRAIN_DELAY_S}\n"
                "shutdown-grace = 10\n"
                "tap-prealloc = 0\n" + daemon_lines
            )
        self.proc = None
        self.starts = 0

    def start(self):
        """Starts the daemon and waits for its READY=1 (sd_notify)."""
        notify_path = os.path.join(self.dir, "notify")
        if os.path.exists(notify_path):
            os.unlink(notify_path)
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(notify_path)
        notify.settimeout(60)
        env = dict(os.environ, NOTIFY_SOCKET=notify_path)
        self.starts += 1
        logf = open(os.path.join(self.dir, f"daemon-{self.starts}.log"), "w")
        self.proc = subprocess.Popen(
            ["nsenter", f"--net=/run/netns/{self.netns}", self.daemon, "--config", self.config],
            env=env,
            stdout=logf,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                msg = notify.recv(4096).decode()
                if "READY=1" in msg.split("\n"):
                    return
            raise RuntimeError(f"{self.name}: no READY=1 within 60 s")
        except socket.timeout:
            raise RuntimeError(f"{self.name}: no READY=1 within 60 s; log:\n{self.log()}")
        finally:
            notify.close()

    def signal(self, sig):
        self.proc.send_signal(sig)

    def wait_exit(self, timeout=60):
        code = self.proc.wait(timeout=timeout)
        self.proc = None
        return code

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def log(self):
        try:
            return open(os.path.join(self.dir, f"daemon-{self.starts}.log")).read()[-4000:]
        except OSError:
            return ""

    def status(self):
        code, body = http_get(self.address, NODE_PORT, "/status", timeout=10)
        return json.loads(body)

    def metrics(self):
        return http_get(self.address, NODE_PORT, "/metrics", timeout=10)[1]

    def served(self):
        """function -> requests served by this node's live instances."""
        out = {}
        for f in self.status()["functions"]:
            n = sum(i["requests"] for i in f["instances"])
            if f["instances"]:
                out[f["name"]] = n
        return out


def metric(text, name, labels):
    """The sum of the samples of `name` whose labels start with `labels`, 0 when absent."""
    pattern = re.escape(name + "{" + labels) + r"(?:,[^}]*)?\} (\S+)"
    return sum(float(v) for v in re.findall(pattern, text))


# --- HAProxy ------------------------------------------------------------------------------------


class HAProxy:
    def __init__(self, example, work, nodes):
        self.work = work
        self.sock = os.path.join(work, "haproxy.sock")
        self.cfg = os.path.join(work, "haproxy.cfg")
        text = open(example).read()
        servers = "".join(
            f"    server {n.name} {n.address}:{NODE_PORT}\n" for n in nodes
        )
        inter = f"{int(CHECK_INTER_S * 1000)}ms"
        # The shipped file with this test's addresses and faster checks; each edit must apply.
        edits = [
            ("    stats socket /run/haproxy/admin.sock mode 600 level admin",
             f"    stats socket {self.sock} mode 600 level admin"),
            # Request logs (option httplog) to HAProxy's stdout, the test's haproxy.log.
            ("    log /dev/log local0\n", "    log stdout format raw local0\n"),
            ("    bind :80\n", f"    bind 127.0.0.1:{FRONT_PORT}\n"),
            ("check inter 1s fall 2 rise 2 agent-check agent-port 8125 agent-inter 1s",
             f"check inter {inter} fall {CHECK_FALL} rise 2 agent-check agent-port {AGENT_PORT}"
             f" agent-inter {inter}"),
            ("    server node1 192.0.2.11:8123\n    server node2 192.0.2.12:8123\n"
             "    server node3 192.0.2.13:8123\n", servers),
            ("    bind 127.0.0.1:8404\n", "    bind 127.0.0.1:8404\n"),
        ]
        for old, new in edits:
            if old not in text:
                raise RuntimeError(f"{example} changed: cannot find {old!r}")
            text = text.replace(old, new)
        with open(self.cfg, "w") as f:
            f.write(text)
        self.log = open(os.path.join(work, "haproxy.log"), "w")
        self.proc = subprocess.Popen(
            ["haproxy", "-db", "-f", self.cfg], stdout=self.log, stderr=subprocess.STDOUT
        )

    def command(self, line):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(5)
        s.connect(self.sock)
        s.sendall(line.encode() + b"\n")
        out = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
        s.close()
        return out.decode()

    def servers(self):
        """server name -> {status, weight, ...} from `show stat`."""
        try:
            text = self.command("show stat")
        except OSError:
            return {}
        lines = [l for l in text.splitlines() if l]
        if not lines or not lines[0].startswith("# "):
            return {}
        header = lines[0][2:].split(",")
        out = {}
        for line in lines[1:]:
            row = dict(zip(header, line.split(",")))
            if row.get("pxname") == "unifaas_nodes" and row.get("svname") != "FRONTEND":
                out[row["svname"]] = row
        return out

    def wait_for(self, predicate, what, timeout=20):
        """Polls `show stat` (HAProxy announces no state change) until predicate(servers)."""
        deadline = time.monotonic() + timeout
        servers = {}
        while time.monotonic() < deadline:
            servers = self.servers()
            if servers and predicate(servers):
                return servers
            time.sleep(0.1)
        check(False, f"HAProxy: {what} within {timeout} s (last: "
              + ", ".join(f"{k} {v.get('status')} w{v.get('weight')}" for k, v in servers.items())
              + ")")
        return servers

    def log_mark(self):
        return os.path.getsize(self.log.name)

    def retried_since(self, mark):
        """Of the requests logged since `mark`, how many have a retries field (httplog) other
        than 0 (retried on the same server, or "+N": redispatched to another one): "n of m"."""
        with open(self.log.name) as f:
            f.seek(mark)
            fields = re.findall(r" \d+/\d+/\d+/\d+/(\+?\d+) \d+/\d+ ", f.read())
        return f"{sum(1 for r in fields if r != '0')} of {len(fields)}"

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


def retries(servers, name):
    """HAProxy's counts for one server and the backend: connections retried, requests
    redispatched to another server."""
    s, b = servers.get(name, {}), servers.get("BACKEND", {})
    return (f"{name} {s.get('wretr', '?')} retried, {s.get('wredis', '?')} redispatched; "
            f"backend {b.get('wretr', '?')} retried, {b.get('wredis', '?')} redispatched")


def all_up(servers):
    return all(
        s["status"] == "UP" and s["weight"] == "100"
        for name, s in servers.items()
        if name != "BACKEND"
    )


# --- load ---------------------------------------------------------------------------------------


class Load:
    """A steady, bounded load: `rate` requests a second for `seconds`, round-robin over `paths`,
    through HAProxy on keep-alive connections (`workers` of them). Records (time, ok, detail)."""

    def __init__(self, rate, seconds, paths, workers=24):
        self.rate, self.seconds, self.paths, self.workers = rate, seconds, paths, workers
        self.results = []
        self.lock = threading.Lock()
        self.next = 0
        self.total = int(rate * seconds)

    def _take(self):
        with self.lock:
            if self.next >= self.total:
                return None
            i = self.next
            self.next += 1
            return i

    def _worker(self):
        conn = None
        while True:
            i = self._take()
            if i is None:
                break
            due = self.t0 + i / self.rate
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)  # pacing: the schedule of a steady client
            path = self.paths[i % len(self.paths)]
            sent = time.monotonic()
            ok, detail = False, ""
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", FRONT_PORT, timeout=30)
                conn.request("GET", path)
                res = conn.getresponse()
                body = res.read()
                ok = res.status == 200
                detail = f"{res.status} {body[:80]!r}"
                if res.getheader("connection", "").lower() == "close":
                    conn.close()
                    conn = None
            except Exception as e:  # a broken connection counts as a failed request
                detail = f"{type(e).__name__}: {e}"
                if conn:
                    conn.close()
                conn = None
            with self.lock:
                self.results.append((sent - self.t0, ok, detail, path))
        if conn:
            conn.close()

    def run(self, at=None):
        """Runs the load; `at` = (seconds, action) runs action once at that offset."""
        self.t0 = time.monotonic()
        threads = [threading.Thread(target=self._worker) for _ in range(self.workers)]
        for t in threads:
            t.start()
        fired = None
        if at:
            offset, action = at
            time.sleep(max(0, self.t0 + offset - time.monotonic()))
            fired = time.monotonic() - self.t0
            action()
        for t in threads:
            t.join(timeout=self.seconds + 120)
        self.elapsed = time.monotonic() - self.t0
        return fired

    def failed(self):
        return [r for r in self.results if not r[1]]


# --- scenarios ----------------------------------------------------------------------------------


def node_of(nodes, function):
    """The nodes that hold an instance of `function` now."""
    return [n for n in nodes if function in n.served()]


def scenario_affinity(nodes):
    print("== 1. affinity: 100 requests to one function", flush=True)
    statuses = [via_front("/invoke/affinity/hello")[0] for _ in range(100)]
    check(statuses.count(200) == 100, f"100 requests answered 200 ({statuses.count(200)})")
    cold = {n.name: metric(n.metrics(), "unifaas_cold_starts_total", 'function="affinity"')
            for n in nodes}
    served = {n.name: metric(n.metrics(), "unifaas_invocations_total",
                             'function="affinity",code="200"') for n in nodes}
    log(f"cold starts by node {cold}, requests by node {served}")
    check(sum(cold.values()) == 1, "one cold start in the whole fleet")
    check(sorted(served.values()) == [0, 0, 100], "one node served all 100")


def scenario_spread(nodes):
    print("== 2. spread: 20 functions over the fleet", flush=True)
    codes = {f: via_front(f"/invoke/{f}/hello")[0] for f in FUNCTIONS}
    bad = {f: c for f, c in codes.items() if c != 200}
    check(not bad, f"each of the 20 functions answered 200 {bad or ''}")
    placement = {f: [n.name for n in node_of(nodes, f)] for f in FUNCTIONS}
    per_node = {n.name: sorted(f for f, ns in placement.items() if n.name in ns) for n in nodes}
    log("functions by node: " + json.dumps({k: len(v) for k, v in per_node.items()}))
    check(all(len(ns) == 1 for ns in placement.values()), "each function on exactly one node")
    check(all(per_node.values()), "every node holds some of the 20 functions")
    return placement


def scenario_rolling_restart(nodes, haproxy, placement):
    print("== 3. rolling restart: SIGTERM of one node under 200 req/s for 10 s", flush=True)
    victim = max(nodes, key=lambda n: sum(1 for ns in placement.values() if n.name in ns))
    moved = sorted(f for f, ns in placement.items() if victim.name in ns)
    log(f"victim {victim.name} holds {len(moved)} functions: {' '.join(moved)}")
    load = Load(200, 10, [f"/invoke/{f}/hello" for f in FUNCTIONS])
    mark = haproxy.log_mark()
    fired = load.run(at=(2.0, lambda: victim.signal(signal.SIGTERM)))
    code = victim.wait_exit(timeout=60)
    failed = load.failed()
    log(f"{len(load.results)} requests in {load.elapsed:.1f} s, SIGTERM at {fired:.1f} s, "
        f"{len(failed)} failed; HAProxy: {retries(haproxy.servers(), victim.name)}; "
        f"requests logged as retried: {haproxy.retried_since(mark)}")
    for r in failed[:5]:
        log(f"  failed at {r[0]:.2f} s {r[3]}: {r[2]}")
    check(len(load.results) == load.total, f"the client sent all {load.total} requests")
    check(not failed, "0 failed requests across the rolling restart")
    check(code == 0, f"{victim.name} exited 0 after its drain ({code})")
    others = [n for n in nodes if n is not victim]
    now = {f: [n.name for n in others if f in n.served()] for f in moved}
    check(all(now[f] for f in moved), f"{victim.name}'s functions now run on the other nodes")
    victim.start()
    haproxy.wait_for(all_up, f"{victim.name} back UP")


def scenario_kill9(nodes, haproxy):
    print("== 4. kill -9 of one node under 200 req/s for 10 s", flush=True)
    victim = nodes[1]
    # The functions that moved back to the node restarted in scenario 3 get their instances
    # first: cold starts there would hold the client's connections and thin out the load.
    warm = [via_front(f"/invoke/{f}/hello")[0] for f in FUNCTIONS]
    check(warm.count(200) == len(FUNCTIONS), "every function warm before the kill")
    # Each request takes 50 ms in its instance, so some are in flight on the node when it dies:
    # HAProxy gets no answer for them (empty-response) and sends them to another node.
    load = Load(200, 10, [f"/invoke/{f}/sleep?ms=50" for f in FUNCTIONS], workers=32)
    mark = haproxy.log_mark()
    fired = load.run(at=(2.0, lambda: victim.signal(signal.SIGKILL)))
    victim.wait_exit(timeout=10)
    failed = load.failed()
    window = CHECK_INTER_S * CHECK_FALL + 1.0  # HAProxy's check interval x fall, plus a margin
    late = [r for r in failed if r[0] > fired + window]
    log(f"{len(load.results)} requests in {load.elapsed:.1f} s, kill at {fired:.1f} s, "
        f"{len(failed)} failed (in flight on the killed node or before HAProxy noticed), "
        f"{len(late)} after {window:.1f} s; HAProxy: {retries(haproxy.servers(), victim.name)}; "
        f"requests logged as retried: {haproxy.retried_since(mark)}")
    for r in failed[:5]:
        log(f"  failed at {r[0]:.2f} s {r[3]}: {r[2]}")
    check(len(load.results) == load.total, f"the client sent all {load.total} requests")
    check(not late, f"no failure later than {window:.1f} s after the kill")
    haproxy.wait_for(lambda s: s[victim.name]["status"].startswith("DOWN"),
                     f"{victim.name} DOWN", timeout=10)
    victim.start()  # removes the containers the killed daemon left behind
    haproxy.wait_for(all_up, f"{victim.name} back UP")
    return len(failed)


def scenario_agent_weight(nodes, haproxy):
    print("== 5. agent-check: a node at max-instances reports a lower weight", flush=True)
    code, _ = via_front("/invoke/full/hello")
    check(code == 200, f"full answered {code}")
    holder = node_of(nodes, "full")
    if not check(len(holder) == 1, "one node holds full"):
        return
    node = holder[0]
    # A fresh start: the node's only pool is then full's (max-instances 1).
    node.signal(signal.SIGTERM)
    node.wait_exit()
    node.start()
    haproxy.wait_for(all_up, f"{node.name} back UP")
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        busy = pool.submit(via_front, "/invoke/full/sleep?ms=4000")
        servers = haproxy.wait_for(lambda s: s[node.name]["weight"] == "1",
                                   f"{node.name} weight 1 while full's one slot is taken", 10)
        log("weights: " + ", ".join(f"{k} {v['weight']}" for k, v in servers.items()
                                    if k != "BACKEND"))
        others_full = all(
            v["weight"] == "100" for k, v in servers.items() if k not in (node.name, "BACKEND")
        )
        check(servers.get(node.name, {}).get("weight") == "1" and others_full,
              f"HAProxy's stats: {node.name} at weight 1, the others at 100")
        code, _ = busy.result(timeout=30)
    check(code == 200, f"the long request answered {code}")
    haproxy.wait_for(all_up, f"{node.name} back to weight 100")


def write_registry(registry, function_table):
    for name in ["affinity", *FUNCTIONS]:
        os.makedirs(os.path.join(registry, name), exist_ok=True)
        with open(os.path.join(registry, name, "function.toml"), "w") as f:
            f.write("concurrent-requests = 8\nkeepalive = 120\n" + function_table)
    os.makedirs(os.path.join(registry, "full"), exist_ok=True)
    with open(os.path.join(registry, "full", "function.toml"), "w") as f:
        f.write("max-instances = 1\nconcurrent-requests = 1\n" + function_table)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--daemon", required=True)
    p.add_argument("--haproxy-example", required=True)
    p.add_argument("--work", required=True)
    p.add_argument("--netns-prefix", required=True)
    p.add_argument("--backend-config", required=True, help="file per node, %%d = node number")
    args = p.parse_args()

    # One registry for every node: the test's stand-in for a file sync between hosts.
    registry = os.path.join(args.work, "registry")
    write_registry(registry, open(args.backend_config % 1).read().split("---\n")[1])
    nodes = [Node(args, n, registry) for n in (1, 2, 3)]
    haproxy = None
    started = time.monotonic()
    try:
        for n in nodes:
            n.start()
        haproxy = HAProxy(args.haproxy_example, args.work, nodes)
        haproxy.wait_for(all_up, "all three nodes UP at weight 100", timeout=30)
        st = nodes[0].status()
        check(st.get("node") == "node1", f"/status names the node ({st.get('node')})")
        check('unifaas_node_info{node="node1"' in nodes[0].metrics(), "/metrics names the node")

        scenario_affinity(nodes)
        placement = scenario_spread(nodes)
        scenario_rolling_restart(nodes, haproxy, placement)
        scenario_kill9(nodes, haproxy)
        scenario_agent_weight(nodes, haproxy)
    except Exception as e:
        check(False, f"{type(e).__name__}: {e}")
    finally:
        for n in nodes:
            if n.running():
                n.signal(signal.SIGINT)  # no drain delay at the end
                try:
                    n.wait_exit(timeout=60)
                except subprocess.TimeoutExpired:
                    n.proc.kill()
        if haproxy:
            haproxy.stop()
    print(f"fleet test: {time.monotonic() - started:.0f} s, "
          f"{'all checks passed' if not failures else str(len(failures)) + ' failed'}")
    if failures:
        for n in nodes:
            print(f"--- {n.name} log (tail) ---\n{n.log()}")
        if haproxy:
            print("--- haproxy log (tail) ---\n" + open(haproxy.log.name).read()[-3000:])
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
