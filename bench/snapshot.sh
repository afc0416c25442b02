#!/usr/bin/env bash
# bench/snapshot.sh [--smoke] [--out DIR]
#
# Snapshot cold starts of the hello microVM (QEMU microvm, the accelerator the daemon picks):
# boot-based vs restore-based ([vm] snapshot = true) single-use cold starts, paired and
# alternating, then the PSS of N idle booted VMs vs N idle clones (bench/lib/snapshot.py).
# Runs the daemon in a network namespace of its own (deleted on exit); results in
# DIR/snapshot.json (default bench/results/<date>-snapshot[-smoke]). --smoke: 2 runs, no idle part.
# Needs the build (BUILD_DIR, default build): unifaas and guest_images.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
[ "$(id -u)" = 0 ] || exec sudo --preserve-env=PATH,BUILD_DIR "$0" "$@"
smoke=false out=""
while (($#)); do
  case $1 in
    --smoke) smoke=true ;;
    --out) out=${2:?--out needs a directory}; shift ;;
    *) sed -n '2,3p' "$0" >&2; exit 2 ;;
  esac
  shift
done
if $smoke; then runs=2 idle=0; else runs=${SNAPSHOT_RUNS:-20} idle=10; fi
build=${BUILD_DIR:-build}
case $build in /*) ;; *) build=$repo/$build ;; esac
[ -n "$out" ] || out=bench/results/$(date +%Y-%m-%d-%H%M%S)-snapshot$($smoke && echo -smoke || true)
mkdir -p "$out"
cmake --build "$build" -j2 --target unifaas guest_images >/dev/null

ns=unifaas-snapbench-$$
work=$(mktemp -d /tmp/unifaas-snapbench.XXXXXX)
daemon_pid=""
cleanup() {
  local rc=$?
  set +e
  if [ -n "$daemon_pid" ]; then
    kill -TERM "$daemon_pid" 2>/dev/null
    for _ in $(seq 600); do kill -0 "$daemon_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$daemon_pid" 2>/dev/null
  fi
  cp "$work/daemon.log" "$out/" 2>/dev/null
  ip netns delete "$ns" 2>/dev/null
  rm -rf "$work"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
ip netns add "$ns"
ip -n "$ns" link set lo up

vm_fn() {  # vm_fn NAME SNAPSHOT TOP-LEVEL-LINES...
  mkdir -p "$work/reg/$1"
  {
    printf '%s\n' "${@:3}"
    printf '\n[vm]\nkernel = "%s"\ninitrd = "%s"\nmemory = 128\ncpus = 1\nsnapshot = %s\n' \
      "$build/guest/kernel/vmlinux" "$build/guest/hello-initramfs.cpio.gz" "$2"
    printf 'cmdline = "console=ttyS0 reboot=t panic=-1 cryptomgr.notests quiet unifaas.ip=%%ip unifaas.gw=%%gateway unifaas.mask=%%netmask unifaas.callback=%%callback"\n'
    printf 'hypervisor = { type = "microvm", pic = false, pit = false, rtc = true, acpi = true, auto-kernel-cmdline = false }\n'
  } >"$work/reg/$1/function.toml"
}
vm_fn boot-once false "single-use = true" "boot-timeout = 60"
vm_fn snap-once true "single-use = true" "boot-timeout = 60"
vm_fn boot-idle false "max-instances = $((idle + 1))" "keepalive = 600" "queue-timeout = 120" "boot-timeout = 120"
vm_fn snap-idle true "max-instances = $((idle + 1))" "keepalive = 600" "queue-timeout = 120" "boot-timeout = 120"
cat >"$work/unifaas.toml" <<TOML
registry = "$work/reg"
listen = "127.0.0.1:8123"
callback-listen = "0.0.0.0:8124"
runtime-dir = "$work/run"
snapshot-dir = "$work/snapshots"
tap-prealloc = 2
TOML
nsenter --net="/run/netns/$ns" "$build/unifaas" --config "$work/unifaas.toml" >"$work/daemon.log" 2>&1 &
daemon_pid=$!
for _ in $(seq 300); do
  nsenter --net="/run/netns/$ns" curl -fsS -o /dev/null http://127.0.0.1:8123/healthz 2>/dev/null && break
  sleep 0.1
done
load=$(cut -d' ' -f1-3 /proc/loadavg)
nsenter --net="/run/netns/$ns" python3 bench/lib/snapshot.py --daemon-pid "$daemon_pid" \
  --runs "$runs" --idle "$idle" --snapdir "$work/snapshots" --out "$out/snapshot.json"
echo "load average before: $load; results: $out/snapshot.json"
