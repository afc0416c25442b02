#!/usr/bin/env python3
"""Cold-start overhead: a request to a single-use function with no instance through unifaas,
against the same sandbox started by this script without unifaas, run after run, alternating
which side goes first.

    coldstart.py docker RAW --socket SOCK --function F --image IMG --memory MIB --runs N
                             --callback-port P
    coldstart.py vm RAW --daemon-pid PID --function F --runs N --callback-port P
                         --tap TAP --host-ip A --guest-ip B --workdir DIR

Times (monotonic clock, ms):
  unifaas        client connects and sends GET /invoke/F/hello .. response body received
  bare ready     sandbox start requested .. its readiness callback arrives here
  bare response  sandbox start requested .. response of GET /hello sent straight to it (the same
                 work a client of the bare sandbox needs for an answer; the overhead is
                 unifaas minus this)

Docker bare start: Engine API create + start + inspect (for the address) on one keep-alive
connection with the container configuration unifaas sends (image, callback as Cmd, env,
memory, bridge network). microVM bare start: the exact QEMU command line unifaas used for a
warm-up instance of F (read from /proc/PID/cmdline of the daemon's qemu child), with this
script's tap, addresses, MAC, callback, console file and TMPDIR put in.

Before each run both sides are quiet: unifaas has no instance of F and has removed its sandbox
(no container labelled with F in the engine / no qemu child), the bare sandbox was removed.
"""

import argparse
import os
import re
import secrets
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import (  # noqa: E402
    UNIFAAS,
    CallbackListener,
    Engine,
    append_record,
    children,
    cmdline,
    environ,
    http_get,
    instances,
)

SETTLE_S = 0.2  # pause before each run, after the previous sandbox is gone


def wait_until(pred, timeout, interval=0.02):
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
    return True


def via_unifaas(function):
    t0 = time.monotonic()
    code, body = http_get(*UNIFAAS, f"/invoke/{function}/hello", timeout=120)
    ms = (time.monotonic() - t0) * 1000.0
    if code != 200:
        raise RuntimeError(f"unifaas answered {code}: {body[:300]!r}")
    return ms


def get_hello(ip):
    code, body = http_get(ip, 8080, "/hello", timeout=30)
    if code != 200:
        raise RuntimeError(f"bare sandbox answered {code}: {body[:200]!r}")


# ---------------------------------------------------------------------------------------------
# Docker


class DockerBare:
    def __init__(self, a, listener):
        self.a = a
        self.engine = Engine(a.socket)
        self.listener = listener
        # As unifaas finds it: the bridge's IPAM gateway, else the first host of its subnet.
        configs = self.engine.call("GET", "/networks/bridge")["IPAM"]["Config"]
        gateways = [c["Gateway"] for c in configs if ":" not in c.get("Gateway", ":")]
        if not gateways:
            import ipaddress

            gateways = [str(next(ipaddress.ip_network(c["Subnet"]).hosts())) for c in configs
                        if ":" not in c.get("Subnet", ":")]
        self.gateway = gateways[0]
        self.n = 0

    def run(self):
        self.n += 1
        token = secrets.token_hex(16)
        url = f"http://{self.gateway}:{self.a.callback_port}/ready/{token}"
        memory = self.a.memory * 1024 * 1024
        config = {
            "Image": self.a.image,
            "Cmd": [url],
            "Env": [f"PORT=8080", f"UNIFAAS_CALLBACK={url}", "UNIFAAS_FUNCTION=bare",
                    f"UNIFAAS_INSTANCE={token[:12]}"],
            "Labels": {"unifaas-bench.bare": "1"},
            "HostConfig": {"Memory": memory, "MemorySwap": memory, "NetworkMode": "bridge"},
        }
        t0 = time.monotonic()
        cid = self.engine.call("POST", f"/containers/create?name=bench-bare-{os.getpid()}-{self.n}",
                               config)["Id"]
        try:
            t1 = time.monotonic()
            self.engine.call("POST", f"/containers/{cid}/start")
            t2 = time.monotonic()
            info = self.engine.call("GET", f"/containers/{cid}/json")
            t3 = time.monotonic()
            ip = info["NetworkSettings"]["Networks"]["bridge"]["IPAddress"]
            ready = self.listener.wait(f"/ready/{token}", 60)
            if ready is None:
                raise RuntimeError("bare container: no readiness callback within 60 s")
            get_hello(ip)
            t5 = time.monotonic()
        finally:
            self.engine.call("DELETE", f"/containers/{cid}?force=true&v=true")
        ms = lambda a, b: (b - a) * 1000.0
        return {"ready": ms(t0, ready), "response": ms(t0, t5), "create": ms(t0, t1),
                "start": ms(t1, t2), "inspect": ms(t2, t3)}


def docker_quiet(a, engine):
    def quiet():
        return (not instances(a.function)
                and not engine.containers(f"unifaas.function={a.function}")
                and not engine.containers("unifaas-bench.bare=1"))
    return wait_until(quiet, 60)


# ---------------------------------------------------------------------------------------------
# microVM


def find_qemu(daemon_pid):
    for pid in children(daemon_pid):
        try:
            argv = cmdline(pid)
        except OSError:
            continue
        if argv and os.path.basename(argv[0]).startswith("qemu-system"):
            return pid, argv
    return None, None


def capture_qemu_argv(a):
    """A warm-up request through unifaas; returns the argv and environment of the qemu it
    starts, and the warm-up's time."""
    import threading

    result = {}

    def request():
        try:
            result["ms"] = via_unifaas(a.function)
        except Exception as e:  # noqa: BLE001
            result["error"] = e

    t = threading.Thread(target=request)
    t.start()
    argv = env = None
    while t.is_alive() and argv is None:
        pid, argv = find_qemu(a.daemon_pid)
        if pid:
            try:
                env = environ(pid)
            except OSError:
                env = {}
        else:
            time.sleep(0.005)
    t.join()
    if "error" in result:
        raise result["error"]
    if argv is None:
        raise RuntimeError("did not see the daemon's qemu process")
    return argv, env, result["ms"]


def bare_qemu_argv(argv, a, callback_url):
    argv = list(argv)
    i = argv.index("-append")
    append = argv[i + 1]
    m = re.search(r"http://([0-9.]+):\d+/ready/[0-9a-f]+", append)
    if not m:
        raise RuntimeError(f"no callback URL in the kernel command line: {append}")
    host_ip = m.group(1)
    g = re.search(r"unifaas\.ip=([0-9.]+)", append)
    append = append.replace(m.group(0), callback_url)
    if g:
        append = re.sub(r"\b%s\b" % re.escape(g.group(1)), a.guest_ip, append)
    append = re.sub(r"\b%s\b" % re.escape(host_ip), a.host_ip, append)
    argv[i + 1] = append
    mac = "02:fa:" + ":".join(f"{int(x):02x}" for x in a.guest_ip.split("."))
    for j, arg in enumerate(argv):
        if j > 0 and argv[j - 1] == "-name":
            argv[j] = "unifaas-bench-bare"
        elif j > 0 and argv[j - 1] == "-serial" and arg.startswith("file:"):
            argv[j] = "file:" + os.path.join(a.workdir, "console.log")
        elif j > 0 and argv[j - 1] == "-netdev":
            argv[j] = re.sub(r"ifname=[^,]+", f"ifname={a.tap}", arg)
        elif j > 0 and argv[j - 1] == "-device" and arg.startswith("virtio-net"):
            argv[j] = re.sub(r"mac=[0-9a-fA-F:]+", f"mac={mac}", arg)
    return argv


class VmBare:
    def __init__(self, a, listener, argv, env):
        self.a = a
        self.listener = listener
        self.template = argv
        self.env = dict(os.environ)
        self.env["TMPDIR"] = a.workdir
        if "TMPDIR" not in env:
            del self.env["TMPDIR"]
        self.pidfile = os.path.join(a.workdir, "bare-qemu.pid")
        self.proc = None

    def run(self):
        token = secrets.token_hex(16)
        url = f"http://{self.a.host_ip}:{self.a.callback_port}/ready/{token}"
        argv = bare_qemu_argv(self.template, self.a, url)
        self.argv = argv
        log = open(os.path.join(self.a.workdir, "qemu.log"), "w")
        t0 = time.monotonic()
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                     stderr=subprocess.STDOUT, env=self.env)
        with open(self.pidfile, "w") as f:
            f.write(str(self.proc.pid))
        try:
            ready = self.listener.wait(f"/ready/{token}", 120)
            if ready is None:
                raise RuntimeError("bare VM: no readiness callback within 120 s; console:\n"
                                   + tail(os.path.join(self.a.workdir, "console.log")))
            get_hello(self.a.guest_ip)
            t2 = time.monotonic()
        finally:
            self.stop()
            log.close()
        return {"ready": (ready - t0) * 1000.0, "response": (t2 - t0) * 1000.0}

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None
        try:
            os.unlink(self.pidfile)
        except FileNotFoundError:
            pass


def tail(path, n=15):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return "(none)"


def vm_quiet(a):
    return wait_until(lambda: not instances(a.function) and find_qemu(a.daemon_pid)[0] is None, 60)


# ---------------------------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("backend", choices=["docker", "vm"])
    ap.add_argument("raw")
    ap.add_argument("--function", required=True)
    ap.add_argument("--runs", type=int, required=True)
    ap.add_argument("--callback-port", type=int, required=True)
    ap.add_argument("--socket")
    ap.add_argument("--image")
    ap.add_argument("--memory", type=int, default=64)
    ap.add_argument("--daemon-pid", type=int)
    ap.add_argument("--tap")
    ap.add_argument("--host-ip")
    ap.add_argument("--guest-ip")
    ap.add_argument("--workdir")
    a = ap.parse_args()

    # Ctrl-C or SIGTERM from run.sh: unwind through the finally blocks (kill the bare qemu,
    # remove the bare container).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(130))
    listener = CallbackListener(a.callback_port)
    rec = {"kind": "coldstart", "backend": a.backend, "function": a.function, "runs": a.runs,
           "unifaas_ms": [], "bare_ready_ms": [], "bare_response_ms": [], "bare_phases_ms": {},
           "failures": []}
    bare = None
    try:
        if a.backend == "docker":
            engine = Engine(a.socket)
            bare = DockerBare(a, listener)
            quiet = lambda: docker_quiet(a, engine)
            # Warm-up of both sides (not counted): the engine's first start of an image is slower.
            quiet()
            via_unifaas(a.function)
            quiet()
            bare.run()
        else:
            vm_quiet(a)
            argv, env, warm_ms = capture_qemu_argv(a)
            rec["unifaas_qemu_argv"] = argv
            rec["warmup_unifaas_ms"] = round(warm_ms, 3)
            bare = VmBare(a, listener, argv, env)
            quiet = lambda: vm_quiet(a)
            quiet()
            bare.run()  # warm-up: page cache of kernel and initrd for both
            rec["bare_qemu_argv"] = bare.argv
        for i in range(a.runs):
            order = ("unifaas", "bare") if i % 2 else ("bare", "unifaas")
            for side in order:
                if not quiet():
                    rec["failures"].append(f"run {i}: previous sandbox not gone after 60 s")
                time.sleep(SETTLE_S)
                try:
                    if side == "unifaas":
                        rec["unifaas_ms"].append(round(via_unifaas(a.function), 3))
                    else:
                        r = bare.run()
                        rec["bare_ready_ms"].append(round(r.pop("ready"), 3))
                        rec["bare_response_ms"].append(round(r.pop("response"), 3))
                        for k, v in r.items():
                            rec["bare_phases_ms"].setdefault(k, []).append(round(v, 3))
                except Exception as e:  # noqa: BLE001 - recorded, the run goes on
                    rec["failures"].append(f"run {i} {side}: {e}")
            print(f"  {a.backend} run {i + 1}/{a.runs}: unifaas "
                  f"{rec['unifaas_ms'][-1] if rec['unifaas_ms'] else '-'} ms, bare "
                  f"{rec['bare_response_ms'][-1] if rec['bare_response_ms'] else '-'} ms",
                  flush=True)
        quiet()
    finally:
        if isinstance(bare, VmBare):
            bare.stop()
        listener.close()
    append_record(a.raw, rec)
    for f in rec["failures"]:
        print(f"  failure: {f}", file=sys.stderr)


if __name__ == "__main__":
    main()
