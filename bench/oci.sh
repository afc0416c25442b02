#!/usr/bin/env bash
# bench/oci.sh [--runs N] [--burst N] [--out DIR]
#
# The direct OCI backend alone, without Docker (bench/run.sh has the full cold-start table with
# unifaas-docker): unifaas-oci vs bare `crun run`, paired and alternating (bench/lib/
# oci_coldstart.py, default 20 runs per side), then a burst of N (default 100) simultaneous
# requests to a single-use engine = "oci" function with max-instances 10. Needs a built tree
# (BUILD_DIR, default build/, targets unifaas and example_images). The daemon runs at debug log
# level: each start's phase timeline ("runc 0.1 image 0.0 netns 0.2 ...") is summarised at the
# end (median per phase). Everything runs inside a network namespace made here
# (unifaas-ocibench-PID) and deleted on exit. Reports, never passes or fails on timing.
# Spares (README, oci-spare-memory): the daemon may keep 64 MiB of spares; only hello-oci-spare
# (memory 64) fits, the other functions (memory 96) always start with `crun run`, so the
# cold-start table has unifaas-oci (no spare), unifaas-spare (a spare ready before each run) and
# bare crun, alternating.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
[ "$(id -u)" = 0 ] || exec sudo --preserve-env=PATH,BUILD_DIR "$0" "$@"
runs=20 burst=100 out=""
while (($#)); do
  case $1 in
    --runs) runs=${2:?}; shift ;;
    --burst) burst=${2:?}; shift ;;
    --out) out=${2:?}; shift ;;
    *) sed -n '2p' "$0" >&2; exit 2 ;;
  esac
  shift
done
build=${BUILD_DIR:-build}
case $build in /*) ;; *) build=$repo/$build ;; esac
py=python3
[ -x /usr/bin/python3 ] && py=/usr/bin/python3
lib=$repo/bench/lib
ns=unifaas-ocibench-$$
work=$(mktemp -d /tmp/unifaas-ocibench.XXXXXX)
[ -n "$out" ] || out=$work/out
mkdir -p "$out" "$work/run"
daemon_pid=""
innet() { nsenter --net="/run/netns/$ns" "$@"; }
pyin() { innet "$py" "$@"; }
cleanup() {
  local rc=$?
  set +e
  if [ -n "$daemon_pid" ]; then kill -TERM "$daemon_pid"; wait "$daemon_pid"; fi
  ip netns delete "$ns" 2>/dev/null
  [ "$out" = "$work/out" ] && rm -rf /tmp/ocibench-last && cp -r "$out" /tmp/ocibench-last
  rm -rf "$work"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
ip netns add "$ns"
ip -n "$ns" link set lo up
printf 'runtime-dir = "%s"\nshutdown-grace = 5\ndrain-delay = 0\noci-spare-memory = 64\n' \
  "$work/run" >"$work/unifaas.toml"
fn() {  # fn NAME extra-lines...   (memory 96: above the spare cap; $mem overrides)
  mkdir -p "$work/reg/$1"
  {
    printf '%s\n' "${@:2}"
    printf '\n[container]\nengine = "oci"\nimage = "%s"\nentrypoint = ["/hello"]\nmemory = %s\n' \
      "$build/examples/hello-rootfs" "${mem:-96}"
  } >"$work/reg/$1/function.toml"
}
fn hello-oci-once "concurrent-requests = 1" "single-use = true" "keepalive = 30"
fn hello-oci-keep "keepalive = 600"
mem=64 fn hello-oci-spare "concurrent-requests = 1" "single-use = true" "keepalive = 30"
fn hello-oci-burst "concurrent-requests = 1" "single-use = true" "max-instances = 10" \
  "queue-timeout = 60"
nsenter --net="/run/netns/$ns" "${UNIFAAS_BIN:-$build/unifaas}" --config "$work/unifaas.toml" \
  --registry "$work/reg" --listen 127.0.0.1:8123 --log-level debug </dev/null \
  >"$out/daemon.log" 2>&1 &
daemon_pid=$!
pyin "$lib/status.py" healthy 60 || { tail -n 30 "$out/daemon.log" >&2; exit 1; }

echo "== cold start: unifaas-oci vs unifaas-spare vs bare crun run ($runs runs per side)"
pyin "$lib/oci_coldstart.py" "$out/raw.jsonl" --function hello-oci-once --runs "$runs" \
  --spare-function hello-oci-spare --runtime-dir "$work/run" \
  --rootfs "$build/examples/hello-rootfs" --callback-port 9192 \
  --template tests/data/oci/config.json --workdir "$work/oci" \
  --seccomp-from "$work/run:hello-oci-keep"
echo "== phases of OciBackend::start (median ms, daemon log, all starts)"
"$py" "$lib/oci_phases.py" "$out/daemon.log"
if ((burst > 0)); then
  echo "== burst: $burst simultaneous requests, single-use, max-instances 10"
  pyin "$lib/status.py" wait hello-oci-burst 0 60
  pyin "$lib/burst.py" http://127.0.0.1:8123/invoke/hello-oci-burst/hello "$burst" \
    --timeout 120 --raw "$out/raw.jsonl" --tag phase=oci-burst
  pyin "$lib/status.py" wait hello-oci-burst 0 120 && echo "burst: every instance gone afterwards"
fi
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
