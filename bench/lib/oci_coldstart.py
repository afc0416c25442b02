#!/usr/bin/env python3
"""Cold start of an engine = "oci" function: unifaas-oci vs bare `crun run` vs unifaas-docker,
the same static hello function, run after run, rotating which side goes first.

    oci_coldstart.py RAW --function F --docker-function D --runs N --rootfs DIR
                     --template CONFIG_JSON --callback-port P --workdir DIR [--runtime crun]

Times (monotonic clock, ms):
  unifaas-oci     GET /invoke/F/hello sent .. response received (F single-use, engine oci)
  unifaas-docker  the same for D (single-use, Docker Engine)
  crun ready      `crun run` started here .. the function's readiness callback arrives here
  crun response   `crun run` started here .. response of GET /hello sent straight to it
                  (overhead of unifaas-oci = unifaas-oci minus this)

The bare side uses the daemon's own config.json (tests/data/oci/config.json, the golden file of
the unit tests; with --seccomp-from, plus the seccomp filter a live instance of the daemon got) with this script's rootfs, process, callback and a network namespace made here
once (veth, /30, outside the timed part), as the daemon's namespaces are made ahead of use.
Before each run unifaas has no instance of F or D and the previous bare container is gone.
"""

import argparse
import json
import os
import secrets
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import (  # noqa: E402
    UNIFAAS,
    CallbackListener,
    append_record,
    http_get,
    summary_ms,
    wait_instances,
)

HOST_IP, GUEST_IP = "10.202.0.1", "10.202.0.2"
SETTLE_S = 0.2


def sh(*args):
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL)


def crun_needs_hugetlb():
    """crun refuses hybrid cgroup hosts while hugetlb is left on v2 (ENVIRONMENT.md)."""
    try:
        with open("/sys/fs/cgroup/unified/cgroup.controllers") as f:
            on_v2 = "hugetlb" in f.read().split()
    except OSError:
        return
    if on_v2 and not os.path.ismount("/sys/fs/cgroup/hugetlb"):
        os.makedirs("/sys/fs/cgroup/hugetlb", exist_ok=True)
        sh("mount", "-t", "cgroup", "-o", "hugetlb", "cgroup", "/sys/fs/cgroup/hugetlb")


class BareNetwork:
    """A namespace with eth0 = GUEST_IP/30 and a veth host end = HOST_IP/30 here."""

    def __init__(self):
        self.name = f"ocibench-{os.getpid()}"
        sh("ip", "netns", "add", self.name)
        sh("ip", "link", "add", "ocibench0", "type", "veth", "peer", "name", "eth0", "netns",
           self.name)
        sh("ip", "addr", "add", f"{HOST_IP}/30", "dev", "ocibench0")
        sh("ip", "link", "set", "ocibench0", "up")
        for cmd in (["link", "set", "lo", "up"], ["addr", "add", f"{GUEST_IP}/30", "dev", "eth0"],
                    ["link", "set", "eth0", "up"], ["route", "add", "default", "via", HOST_IP]):
            sh("ip", "-n", self.name, *cmd)
        self.path = f"/run/netns/{self.name}"

    def close(self):
        subprocess.run(["ip", "link", "del", "ocibench0"], stderr=subprocess.DEVNULL)
        subprocess.run(["ip", "netns", "del", self.name], stderr=subprocess.DEVNULL)


def bare_run(args, template, net, listener, run):
    """One bare `crun run`; returns (ready_ms, response_ms)."""
    token = secrets.token_hex(8)
    callback = f"http://{HOST_IP}:{args.callback_port}/ready/{token}"
    bundle = os.path.join(args.workdir, f"bare-{run}")
    os.makedirs(bundle, exist_ok=True)
    config = json.loads(json.dumps(template))
    config["root"]["path"] = os.path.abspath(args.rootfs)
    config["process"]["args"] = ["/hello", callback]
    config["process"]["env"] = ["PATH=/bin", f"UNIFAAS_CALLBACK={callback}", "PORT=8080",
                                "UNIFAAS_FUNCTION=bare", f"UNIFAAS_INSTANCE=bare{run}"]
    config["process"]["cwd"] = "/"
    config["process"]["user"] = {"uid": 0, "gid": 0}
    config["hostname"] = f"bare{run}"
    config["linux"]["cgroupsPath"] = f"/unifaas-bench/bare{run}"
    for ns in config["linux"]["namespaces"]:
        if ns["type"] == "network":
            ns["path"] = net.path
    with open(os.path.join(bundle, "config.json"), "w") as f:
        json.dump(config, f)
    state = os.path.join(args.workdir, "state")
    cid = f"ocibench-{run}"
    start = time.monotonic()
    proc = subprocess.Popen([args.runtime, "--root", state, "run", "--bundle", bundle, cid],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        ready = listener.wait(f"/ready/{token}", 30)
        if ready is None:
            raise RuntimeError("the bare container did not call back within 30 s")
        code, _ = http_get(GUEST_IP, 8080, "/hello", timeout=10)
        done = time.monotonic()
        if code != 200:
            raise RuntimeError(f"the bare container answered {code}")
        return (ready - start) * 1000, (done - start) * 1000
    finally:
        subprocess.run([args.runtime, "--root", state, "kill", cid, "KILL"],
                       stderr=subprocess.DEVNULL)
        proc.wait()
        subprocess.run([args.runtime, "--root", state, "delete", "--force", cid],
                       stderr=subprocess.DEVNULL)


def unifaas_run(function):
    wait_instances(function, 0, 30)
    start = time.monotonic()
    code, body = http_get(*UNIFAAS, f"/invoke/{function}/hello", timeout=60)
    done = time.monotonic()
    if code != 200:
        raise RuntimeError(f"{function} answered {code}: {body[:300]!r}")
    return (done - start) * 1000


def wait_spare(runtime_dir, timeout=30):
    """Until the daemon's state root holds a spare: a container created (crun create wrote the
    init's pid file) and not started (its exec.fifo is there)."""
    deadline = time.monotonic() + timeout
    state = os.path.join(runtime_dir, "oci")
    while time.monotonic() < deadline:
        try:
            for name in os.listdir(state):
                if not os.path.exists(os.path.join(state, name, "exec.fifo")):
                    continue
                pid_file = os.path.join(runtime_dir, "instances", name[8:], "init.pid")
                with open(pid_file) as f:
                    if int(f.read().strip() or 0) > 0:
                        time.sleep(0.05)  # handed to the daemon's list just after create exits
                        return
        except (OSError, ValueError):
            pass
        time.sleep(0.02)
    raise RuntimeError(f"no spare container in {state} within {timeout} s")


def daemon_annotations(runtime_dir, function):
    """The annotations (the precompiled seccomp filter) of a live instance's config.json."""
    code, body = http_get(*UNIFAAS, f"/invoke/{function}/hello", timeout=60)
    if code != 200:
        raise RuntimeError(f"{function} answered {code}: {body[:300]!r}")
    for name in os.listdir(os.path.join(runtime_dir, "instances")):
        try:
            with open(os.path.join(runtime_dir, "instances", name, "config.json")) as f:
                annotations = json.load(f).get("annotations")
        except OSError:
            continue
        if annotations:
            return annotations
    print("  (this daemon gives its containers no seccomp annotation: the bare side runs without)")
    return {}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("raw")
    p.add_argument("--function", required=True)
    p.add_argument("--docker-function", help="omit to leave the Docker side out")
    p.add_argument("--runs", type=int, required=True)
    p.add_argument("--rootfs", required=True)
    p.add_argument("--template", required=True)
    p.add_argument("--callback-port", type=int, required=True)
    p.add_argument("--workdir", required=True)
    p.add_argument("--runtime", default="crun")
    p.add_argument("--spare-function", help="a function served from spares (daemon key "
                   "oci-spare-memory): timed once its spare is ready; omit to leave it out")
    p.add_argument("--runtime-dir", help="the daemon's runtime-dir (with --spare-function)")
    p.add_argument("--seccomp-from", metavar="RUNTIME_DIR:FUNCTION",
                   help="give the bare side the daemon's seccomp filter: invoke FUNCTION (kept "
                        "alive) once and copy its config.json annotations")
    args = p.parse_args()

    crun_needs_hugetlb()
    os.makedirs(args.workdir, exist_ok=True)
    with open(args.template) as f:
        template = json.load(f)
    if args.seccomp_from:
        template["annotations"] = daemon_annotations(*args.seccomp_from.rsplit(":", 1))
    net = BareNetwork()
    listener = CallbackListener(args.callback_port, bind=HOST_IP)
    times = {"unifaas-oci": [], "unifaas-spare": [], "crun ready": [], "crun response": [],
             "unifaas-docker": []}
    try:
        unifaas_run(args.function)  # warm-up: the daemon's namespace pool starts here
        wait_instances(args.function, 0, 30)
        time.sleep(1)  # the pool fills in the background (not timed)
        sides = ["oci", "bare"]
        if args.spare_function:
            sides.append("spare")
        if args.docker_function:
            sides.append("docker")
        for run in range(args.runs):
            order = sides[run % len(sides):] + sides[:run % len(sides)]
            for side in order:
                time.sleep(SETTLE_S)
                if side == "oci":
                    times["unifaas-oci"].append(unifaas_run(args.function))
                elif side == "spare":
                    wait_instances(args.spare_function, 0, 30)
                    wait_spare(args.runtime_dir)
                    times["unifaas-spare"].append(unifaas_run(args.spare_function))
                elif side == "docker":
                    times["unifaas-docker"].append(unifaas_run(args.docker_function))
                else:
                    ready, response = bare_run(args, template, net, listener, run)
                    times["crun ready"].append(ready)
                    times["crun response"].append(response)
    finally:
        listener.close()
        net.close()
        for controller in os.listdir("/sys/fs/cgroup"):  # the bare runs' empty parent cgroup
            try:
                os.rmdir(os.path.join("/sys/fs/cgroup", controller, "unifaas-bench"))
            except OSError:
                pass
    for side, values in times.items():
        if not values:
            continue
        append_record(args.raw, {"kind": "oci_coldstart", "side": side, "ms": values})
        show(side, values)
    show("oci overhead", [a - b for a, b in zip(times["unifaas-oci"], times["crun response"])],
         "(unifaas-oci minus crun response, paired)")
    if times["unifaas-spare"]:
        show("spare gain", [a - b for a, b in zip(times["unifaas-oci"], times["unifaas-spare"])],
             "(unifaas-oci minus unifaas-spare, paired)")


def show(label, values, note=""):
    s = summary_ms(values)
    if s["n"] == 0:
        print(f"  {label:15s} no runs")
        return
    print(f"  {label:15s} p50 {s['median']:7.1f} ms  p90 {s['p90']:7.1f} ms  (n={s['n']}) {note}")


if __name__ == "__main__":
    main()
