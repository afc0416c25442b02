#!/usr/bin/env bash
# bench/run.sh [--smoke] [--warm-only] [--out DIR]
#
# The unifaas benchmark: one command that installs what it needs (wrk, nginx), builds unifaas and
# the example images (BUILD_DIR, default build/), and measures, each comparison side by side in
# the same run:
#   1. warm latency      unifaas vs straight to the same container instance (wrk, keep-alive),
#                        for two differently built functions: hello (thread per connection) and
#                        hello-epoll (one epoll thread, a pre-built response)
#   2. warm throughput   unifaas vs nginx reverse proxy vs direct, c = 1 4 16 64, both functions
#      + streaming       download MiB/s and SSE time to first event, unifaas vs direct vs nginx
#      + websocket       echo round-trip p50/p99, unifaas vs direct (bench/lib/ws_rtt.py)
#   3. cold start        single-use function through unifaas vs the bare sandbox started here
#                        (Docker Engine API create+start; QEMU with unifaas's own command line)
#   4. burst             10/50/100 simultaneous requests to a single-use function, no instance
#   5. idle footprint    daemon RSS and CPU over 60 s, no instances and 20 idle instances
#   6. fleet             warm latency with 1/100/1000 functions and 1/50 live instances
#   7. HAProxy hop       warm latency through HAProxy (examples/fleet/haproxy.cfg) vs direct
#   8. snapshot          microVM cold start boot vs restore, PSS of idle clones (bench/snapshot.sh)
# Results: DIR/results.json and DIR/results.md (default bench/results/<date>[-smoke]); the
# Markdown is printed at the end. See bench/README.md for how to read them.
#
# Everything (private dockerd, the daemon, nginx, QEMU, wrk and the python clients) runs inside a
# network namespace made here (unifaas-bench-PID) and deleted on exit, Ctrl-C included: nothing
# touches the host's network. --smoke: the same with tiny durations and counts (< 60 s once built),
# exit 0 whenever the measurements ran; benchmarks report, they do not pass or fail.
# --warm-only: only 1, 2 and streaming (for before/after comparisons of the warm path).
# Environment: BUILD_DIR (default build) for the daemon and the images; UNIFAAS_BIN to measure
# another unifaas binary (e.g. a before/after comparison) with the same images; BENCH_PERF=1 adds
# a perf profile of the daemon under wrk -c16 (DIR/perf-report.txt).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
if [ "$(id -u)" != 0 ]; then
  exec sudo --preserve-env=PATH,BUILD_DIR,UNIFAAS_BIN,BENCH_PERF,BENCH_PERF_FN "$0" "$@"
fi

usage() { sed -n '2,4p' "$0" | sed 's/^# \{0,1\}//'; }
smoke=false
warm_only=false
out=""
while (($#)); do
  case $1 in
    --smoke) smoke=true ;;
    --warm-only) warm_only=true ;;
    --out) out=${2:?--out needs a directory}; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; exit 2 ;;
  esac
  shift
done

if $smoke; then
  mode=smoke wrk_s=1 rounds=1 conns=(1 16) cold_runs=2 bursts=(5 10)
  idle_s=3 idle_instances=5 fleet_functions=(1 100) fleet_instances=(1 5)
else
  mode=full wrk_s=3 rounds=5 conns=(1 4 16 64) cold_runs=20 bursts=(10 50 100) settle_s=45
  idle_s=60 idle_instances=20 fleet_functions=(1 100 1000) fleet_instances=(1 50)
fi
build=${BUILD_DIR:-build}
case $build in /*) ;; *) build=$repo/$build ;; esac  # absolute: ctest passes its binary dir
suffix=""
$smoke && suffix=-smoke
[ -n "$out" ] || out=bench/results/$(date +%Y-%m-%d-%H%M%S)$suffix
py=python3
[ -x /usr/bin/python3 ] && py=/usr/bin/python3
lib=$repo/bench/lib
started=$(date +%s)

log() { printf '\n== %s (%ds)\n' "$*" $(($(date +%s) - started)); }
die() { echo "bench: $*" >&2; exit 1; }

# ---------------------------------------------------------------------------------------------
# Tools and build

log "packages"
tests/lib/install-deps.sh
need=()
command -v wrk >/dev/null || need+=(wrk)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx)
if ((${#need[@]})); then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # nginx-light is the small flavour; where it is only a transitional name, plain nginx.
  for i in "${!need[@]}"; do
    if [ "${need[$i]}" = nginx ] && apt-cache show nginx-light >/dev/null 2>&1; then
      need[$i]=nginx-light
    fi
  done
  # A package's maintainer scripts must not start a system-wide nginx on the host:
  # policy-rc.d answering 101 forbids service starts during the install.
  made_policy=false
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    made_policy=true
  fi
  echo "installing: ${need[*]}"
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null || install_failed=1
  if $made_policy; then rm -f /usr/sbin/policy-rc.d; fi
  [ -z "${install_failed:-}" ] || die "apt-get install ${need[*]} failed"
fi
nginx_bin=$(command -v nginx || echo /usr/sbin/nginx)

log "build ($build)"
if [ ! -f "$build/CMakeCache.txt" ]; then
  cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
else
  cmake "$build" >/dev/null  # a build directory configured before a target below existed
fi
cmake --build "$build" -j"$(nproc)" --target unifaas example_images \
  example_epoll_image guest_images >/dev/null
unifaas=${UNIFAAS_BIN:-$build/unifaas}  # UNIFAAS_BIN: compare another build of the daemon
[ -x "$unifaas" ] || die "$unifaas is not an executable"
build_type=$(sed -n 's/^CMAKE_BUILD_TYPE:[A-Z]*=//p' "$build/CMakeCache.txt")
case $build_type in
  Release|RelWithDebInfo) ;;
  *) echo "bench: warning: $build is a '${build_type:-no type}' build; numbers of an" \
       "unoptimised daemon mean little" >&2 ;;
esac

# One run per build directory at a time: the engine's data root below is shared.
mkdir -p "$build"
exec 9>"$build/bench.lock"
flock -n 9 || die "another bench run is using $build"

# ---------------------------------------------------------------------------------------------
# Namespace, engine, clean-up

. tests/lib/private-docker.sh
ns=unifaas-bench-$$
work=$(mktemp -d /tmp/unifaas-bench.XXXXXX)
dockerdir=$build/bench-docker  # kept between runs: the imported image survives
dsock=$dockerdir/docker.sock
raw=$work/raw.jsonl
daemon_pid=""
nginx_pid=""
mkdir -p "$work/logs" "$work/run" "$work/vm" "$work/nginx/tmp"

innet() { nsenter --net="/run/netns/$ns" "$@"; }
pyin() { innet "$py" "$@"; }

stop_pid() {  # stop_pid PID SIGNAL SECONDS: signal, wait, then SIGKILL
  local pid=$1 sig=$2 secs=$3 i
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 0
  kill -"$sig" "$pid" 2>/dev/null || true
  for ((i = 0; i < secs * 10; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

cleanup() {
  local rc=$? pid left=""
  set +e
  trap - EXIT INT TERM
  stop_pid "$daemon_pid" TERM 60
  stop_pid "$nginx_pid" QUIT 10
  [ -f "$work/vm/bare-qemu.pid" ] && stop_pid "$(cat "$work/vm/bare-qemu.pid")" KILL 5
  # Everything still in the namespace now is the engine or a process of ours interrupted
  # mid-run; once the engine has stopped (its containers removed), the rest is killed.
  [ -e "/run/netns/$ns" ] && left=$(ip netns pids "$ns" 2>/dev/null)
  private_docker_stop "$ns" "$dockerdir"
  for pid in $left; do kill -KILL "$pid" 2>/dev/null; done
  ip netns delete "$ns" 2>/dev/null
  if [ -d "$out" ] && [ -d "$work/logs" ]; then
    mkdir -p "$out/logs" && cp "$work"/logs/*.log "$out/logs/" 2>/dev/null
    tail -n 100 "$dockerdir/dockerd.log" >"$out/logs/dockerd-tail.log" 2>/dev/null
  fi
  rm -rf "$work"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

load_start=$(cut -d' ' -f1-3 /proc/loadavg)  # the host is shared: say how busy it was
log "network namespace $ns, private dockerd"
ip netns add "$ns"
ip -n "$ns" link set lo up
private_docker_start "$ns" "$dockerdir"
for id in $(curl -fsS --unix-socket "$dsock" 'http://localhost/containers/json?all=1' |
    grep -o '"Id":"[0-9a-f]*"' | cut -d'"' -f4); do  # leftovers of an interrupted run
  curl -fsS -X DELETE --unix-socket "$dsock" "http://localhost/containers/$id?force=true" >/dev/null
done
examples/import-image.sh "$dsock" "$build/examples/hello-rootfs.tar" unifaas-hello
examples/import-image.sh "$dsock" "$build/examples/hello-epoll-rootfs.tar" unifaas-hello-epoll

# ---------------------------------------------------------------------------------------------
# Registries and the daemon

# No OCI spares: the cold-start table times `crun run` through unifaas against bare `crun run`;
# starts from a spare have their own side in bench/oci.sh.
cat >"$work/unifaas.toml" <<TOML
runtime-dir = "$work/run"
shutdown-grace = 5
drain-delay = 0
oci-spare-memory = 0
TOML

container_fn() {  # [image=IMAGE] container_fn DIR [extra toml lines...]
  mkdir -p "$1"
  {
    printf '%s\n' "${@:2}"
    printf '\n[container]\nimage = "%s"\nmemory = 64\n' "${image:-unifaas-hello}"
  } >"$1/function.toml"
}

main_reg=$work/reg-main
# Warm tests: one instance takes every connection, so "direct" hits the very same instance.
container_fn "$main_reg/hello" "concurrent-requests = 256" "max-instances = 1" "keepalive = 600"
# The same, built differently (examples/hello-epoll: one epoll thread, a pre-built response).
image=unifaas-hello-epoll container_fn "$main_reg/hello-epoll" "concurrent-requests = 256" \
  "max-instances = 1" "keepalive = 600"
# Cold starts and bursts: examples/registry/hello-once (defaults: max-instances 10,
# queue-timeout 10 s).
container_fn "$main_reg/hello-once" "concurrent-requests = 1" "single-use = true" "keepalive = 30"
# Idle instances: one slot each, kept for 10 minutes.
container_fn "$main_reg/idle" "concurrent-requests = 1" "max-instances = $idle_instances" \
  "keepalive = 600" "boot-timeout = 120" "queue-timeout = 120"
# The OCI example (examples/registry/hello-oci: crun, no engine), single-use.
mkdir -p "$main_reg/hello-oci-once"
sed -e "s|\.\./\.\./\.\./build/|$build/|" \
    -e 's/^concurrent-requests = .*/concurrent-requests = 1\nsingle-use = true/' \
    examples/registry/hello-oci/function.toml >"$main_reg/hello-oci-once/function.toml"
# The microVM example (examples/registry/hello-vm), single-use, booted every time: this section
# measures a boot against the bare QEMU (restores have their own section, bench/snapshot.sh).
mkdir -p "$main_reg/hello-vm-once"
sed -e "s|\.\./\.\./\.\./build/|$build/|" \
    -e 's/^concurrent-requests = .*/concurrent-requests = 1\nsingle-use = true/' \
    -e 's/^snapshot = true/snapshot = false/' \
    examples/registry/hello-vm/function.toml >"$main_reg/hello-vm-once/function.toml"

start_daemon() {  # start_daemon REGISTRY LOGNAME
  # A simple command (no shell function) in the background: nsenter and env exec, so $! is
  # the daemon itself.
  nsenter --net="/run/netns/$ns" env DOCKER_HOST="unix://$dsock" "$unifaas" \
    --config "$work/unifaas.toml" --registry "$1" --listen 127.0.0.1:8123 --log-level warn \
    </dev/null >"$work/logs/$2.log" 2>&1 &
  daemon_pid=$!
  if ! pyin "$lib/status.py" healthy 60; then
    tail -n 30 "$work/logs/$2.log" >&2
    die "unifaas did not start"
  fi
}

stop_daemon() {
  stop_pid "$daemon_pid" TERM 60
  daemon_pid=""
}

# ---------------------------------------------------------------------------------------------
# 1 + 2: warm latency and throughput

log "warm latency and throughput (wrk ${wrk_s} s x ${rounds} rounds, c = ${conns[*]})"
start_daemon "$main_reg" daemon-main
innet curl -fsS -o /dev/null http://127.0.0.1:8123/invoke/hello/hello
innet curl -fsS -o /dev/null http://127.0.0.1:8123/invoke/hello-epoll/hello
addr=$(pyin "$lib/status.py" address hello)
addr_epoll=$(pyin "$lib/status.py" address hello-epoll)
echo "instance of hello at $addr:8080, of hello-epoll at $addr_epoll:8080"

cat >"$work/nginx/nginx.conf" <<NGINX
worker_processes auto;
pid $work/nginx/nginx.pid;
error_log $work/logs/nginx-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $work/nginx/tmp/body;
  proxy_temp_path $work/nginx/tmp/proxy;
  upstream fn {
    server $addr:8080;
    keepalive 64;
  }
  upstream fn_epoll {
    server $addr_epoll:8080;
    keepalive 64;
  }
  server {
    listen 127.0.0.1:8180;
    location / {
      proxy_pass http://fn;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
  server {  # the same in front of hello-epoll
    listen 127.0.0.1:8182;
    location / {
      proxy_pass http://fn_epoll;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
  server {  # streaming (bench/lib/stream.py): each read passed on at once
    listen 127.0.0.1:8181;
    location / {
      proxy_pass http://fn;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
    }
  }
}
NGINX
nsenter --net="/run/netns/$ns" "$nginx_bin" -e "$work/logs/nginx-error.log" -p "$work/nginx" \
  -c "$work/nginx/nginx.conf" -g 'daemon off;' </dev/null >>"$work/logs/nginx-error.log" 2>&1 &
nginx_pid=$!  # the nginx master (nsenter execs)
for _ in $(seq 100); do
  innet curl -fsS -o /dev/null http://127.0.0.1:8180/hello 2>/dev/null && break
  sleep 0.05
done
innet curl -fsS -o /dev/null http://127.0.0.1:8180/hello || die "nginx does not answer"

innet curl -fsS -o /dev/null http://127.0.0.1:8182/hello || die "nginx does not answer"

declare -A url=(
  [hello/direct]=http://$addr:8080/hello
  [hello/unifaas]=http://127.0.0.1:8123/invoke/hello/hello
  [hello/nginx]=http://127.0.0.1:8180/hello
  [hello-epoll/direct]=http://$addr_epoll:8080/hello
  [hello-epoll/unifaas]=http://127.0.0.1:8123/invoke/hello-epoll/hello
  [hello-epoll/nginx]=http://127.0.0.1:8182/hello
)
fns=(hello hello-epoll)
targets=(direct unifaas nginx)
for key in "${!url[@]}"; do  # warm-up: connections, instance slots, caches
  innet wrk -t2 -c64 -d1s "${url[$key]}" >/dev/null
done
# Each cell (function, c) runs its three targets back to back, the order rotating from round to
# round, so load drifting on the shared host hits all three alike.
for ((r = 1; r <= rounds; r++)); do
  for c in "${conns[@]}"; do
    for fn in "${fns[@]}"; do
      for ((k = 0; k < ${#targets[@]}; k++)); do
        t=${targets[$(((k + r + c) % ${#targets[@]}))]}
        pyin "$lib/wrkrun.py" "$raw" "${url[$fn/$t]}" -c "$c" -d "$wrk_s" \
          --tag phase=warm --tag fn="$fn" --tag target="$t" --tag round="$r"
      done
    done
  done
done
if [ -n "${BENCH_PERF:-}" ]; then  # BENCH_PERF=1: where the daemon's time goes at c=16
  perf record -q -g -o "$work/perf.data" -p "$daemon_pid" -- sleep "$wrk_s" >/dev/null 2>&1 &
  perf_pid=$!
  perf_fn=${BENCH_PERF_FN:-hello-epoll}  # the function whose warm path is profiled
  innet wrk -t2 -c16 -d"${wrk_s}s" "${url[$perf_fn/unifaas]}" >"$work/logs/perf-wrk.txt"
  wait "$perf_pid" || true
  perf report -q -i "$work/perf.data" --no-children --percent-limit 0.7 --stdio \
    -g none >"$work/perf-report.txt" 2>/dev/null || true
  {
    echo; echo "# inclusive (children), by symbol"
    perf report -q -i "$work/perf.data" --children --sort sym --percent-limit 3 --stdio \
      -g none 2>/dev/null
    echo; echo "# inclusive (children), the daemon's own code and libraries"
    perf report -q -i "$work/perf.data" --children --sort dso,sym --percent-limit 0.5 --stdio \
      -g none 2>/dev/null | grep -v kernel.kallsyms
  } >>"$work/perf-report.txt" || true
  # Syscalls per request, unifaas against nginx (strace slows both alike; counts are what matter).
  for t in unifaas nginx; do
    if [ "$t" = unifaas ]; then pids=$daemon_pid; else pids=$(pgrep -P "$nginx_pid" | paste -sd,); fi
    strace -c -f -p "$pids" -o "$work/strace-$t.txt" >/dev/null 2>&1 &
    strace_pid=$!
    sleep 0.5
    innet wrk -t2 -c16 -d2s "${url[$perf_fn/$t]}" >"$work/logs/strace-wrk-$t.txt"
    kill -INT "$strace_pid"; wait "$strace_pid" || true
    reqs=$(sed -n 's/^ *\([0-9]*\) requests in.*/\1/p' "$work/logs/strace-wrk-$t.txt")
    {
      echo; echo "# syscalls of $t under wrk -c16 (strace -c), $reqs requests"
      cat "$work/strace-$t.txt"
    } >>"$work/perf-report.txt"
  done
  echo "profile: $out/perf-report.txt"
fi
echo "hello has $(pyin "$lib/status.py" count hello) instance(s) after the warm runs"
# The SSE and WebSocket probes are latencies of a few tens of µs. Right after the saturating wrk
# runs this VM stays slower for a while: direct's own SSE time +10-15 %, the added time of a
# proxy +20-30 µs (a loaded daemon next to a fresh one: +64..74 against +40..67 µs, both back to
# +35..49 after 45 s idle; nginx alike). So the machine settles first; wrk is unchanged.
if ! $smoke; then
  log "settling ${settle_s} s before the streaming probes"
  sleep "$settle_s"
fi
log "streaming: download throughput and SSE time to first event (bench/lib/stream.py)"
stream_args=(--bytes $((1 << 30)) --rounds 3 --sse 500)
$smoke && stream_args=(--bytes $((64 << 20)) --rounds 1 --sse 50)
pyin "$lib/stream.py" "$raw" "$work/stream.md" "${stream_args[@]}" --target "direct=$addr:8080/" \
  --target unifaas=127.0.0.1:8123/invoke/hello/ --target nginx=127.0.0.1:8181/
log "websocket: echo round trips, unifaas vs direct (bench/lib/ws_rtt.py)"
pyin "$lib/ws_rtt.py" "$raw" "$work/websocket.md" --count 1000 --target "direct=$addr:8080/" \
  --target unifaas=127.0.0.1:8123/invoke/hello/
stop_pid "$nginx_pid" QUIT 10
nginx_pid=""
if $warm_only; then  # --warm-only: the sections above, then the report
  innet curl -fsS http://127.0.0.1:8123/metrics >"$work/metrics-main.txt"
  stop_daemon
else
  log "HAProxy hop (bench/lib/haproxy_hop.py, examples/fleet/haproxy.cfg)"
  "$py" "$lib/haproxy_hop.py" --ns "$ns" --raw "$raw" --work "$work" \
    --example examples/fleet/haproxy.cfg --seconds "$wrk_s" --rounds "$rounds"

  # ---------------------------------------------------------------------------------------------
  # 3: cold starts

  log "cold start, Docker ($cold_runs runs per side)"
  pyin "$lib/coldstart.py" docker "$raw" --socket "$dsock" --function hello-once \
    --image unifaas-hello --memory 64 --runs "$cold_runs" --callback-port 9190

  log "cold start, OCI: unifaas-oci vs bare crun run vs unifaas-docker ($cold_runs runs per side)"
  pyin "$lib/oci_coldstart.py" "$raw" --function hello-oci-once --docker-function hello-once \
    --runs "$cold_runs" --rootfs "$build/examples/hello-rootfs" --callback-port 9192 \
    --template tests/data/oci/config.json --workdir "$work/oci"

  log "cold start, microVM ($cold_runs runs per side)"
  # The bare VM's tap, inside the namespace, outside the daemon's subnet (10.100.0.0/16).
  ip -n "$ns" tuntap add dev benchtap0 mode tap
  ip -n "$ns" addr add 10.201.0.1/30 dev benchtap0
  ip -n "$ns" link set benchtap0 up
  # The guest's MAC is known (02:fa:<guest IPv4>, as unifaas derives it): a permanent neighbour
  # entry means the host never has to ARP for the guest. Without it, a guest address reused after
  # a killed guest can have a stale entry whose ARP retry (1 s timer) holds the host's SYN-ACK to
  # the readiness callback: 0-1 s of noise per boot (see bench/README.md).
  ip -n "$ns" neigh replace 10.201.0.2 lladdr 02:fa:0a:c9:00:02 dev benchtap0 nud permanent
  pyin "$lib/coldstart.py" vm "$raw" --daemon-pid "$daemon_pid" --function hello-vm-once \
    --runs "$cold_runs" --callback-port 9191 --tap benchtap0 --host-ip 10.201.0.1 \
    --guest-ip 10.201.0.2 --workdir "$work/vm"
  # The daemon's own view of the cold starts above (start -> readiness callback histogram).
  innet curl -fsS http://127.0.0.1:8123/metrics >"$work/metrics-main.txt"

  # ---------------------------------------------------------------------------------------------
  # 4: bursts

  log "burst (${bursts[*]} simultaneous requests, single-use container function)"
  for n in "${bursts[@]}"; do
    pyin "$lib/status.py" wait hello-once 0 120
    sleep 1  # the engine finishes removing the previous burst's containers
    pyin "$lib/burst.py" http://127.0.0.1:8123/invoke/hello-once/hello "$n" --raw "$raw" \
      --tag phase=burst
  done
  pyin "$lib/status.py" wait hello-once 0 120
  stop_daemon

  # ---------------------------------------------------------------------------------------------
  # 5: idle footprint

  log "idle footprint (${idle_s} s with no instances, then ${idle_s} s with $idle_instances)"
  start_daemon "$main_reg" daemon-idle
  sleep 2  # start-up work (accelerator probe, pre-created taps) is not idleness
  pyin "$lib/idle.py" "$raw" "$daemon_pid" "$idle_s" --tag instances=0
  pyin "$lib/burst.py" "http://127.0.0.1:8123/invoke/idle/sleep?ms=500" "$idle_instances"
  pyin "$lib/status.py" wait idle "$idle_instances" 60 ready
  sleep 1
  pyin "$lib/idle.py" "$raw" "$daemon_pid" "$idle_s" --tag instances="$idle_instances"
  stop_daemon

  # ---------------------------------------------------------------------------------------------
  # 6: fleet

  max_instances=${fleet_instances[-1]}
  for nf in "${fleet_functions[@]}"; do
    log "fleet: $nf registered functions, ${fleet_instances[*]} live instances"
    reg=$work/reg-$nf
    container_fn "$reg/hello" "concurrent-requests = 1" "max-instances = $max_instances" \
      "keepalive = 600" "boot-timeout = 120" "queue-timeout = 120"
    for ((i = 1; i < nf; i++)); do
      container_fn "$(printf '%s/f%04d' "$reg" "$i")" "concurrent-requests = 4"
    done
    start_daemon "$reg" "daemon-fleet-$nf"
    for ni in "${fleet_instances[@]}"; do
      if ((ni == 1)); then
        innet curl -fsS -o /dev/null http://127.0.0.1:8123/invoke/hello/hello
      else
        pyin "$lib/burst.py" "http://127.0.0.1:8123/invoke/hello/sleep?ms=500" "$ni"
      fi
      pyin "$lib/status.py" wait hello "$ni" 60 ready
      pyin "$lib/wrkrun.py" "$raw" http://127.0.0.1:8123/invoke/hello/hello -c 1 -d "$wrk_s" \
        --tag phase=fleet --tag functions="$nf" --tag instances="$ni" --count-after hello
    done
    stop_daemon
  done

  log "snapshot cold starts: boot vs restore (bench/snapshot.sh)"
  BUILD_DIR=$build bench/snapshot.sh $($smoke && echo --smoke) --out "$out/snapshot" ||
    echo "bench: bench/snapshot.sh failed (see $out/snapshot)" >&2
fi

# ---------------------------------------------------------------------------------------------
# Report

log "report"
mkdir -p "$out"
version() { "$@" 2>&1 | head -n 1 || true; }
git_rev=$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo "?")
git -C "$repo" diff --quiet HEAD -- src 2>/dev/null || git_rev+=" (src/ modified)"
BENCH_DATE=$(date -u +%Y-%m-%dT%H:%M:%SZ) BENCH_MODE=$mode BENCH_BUILD_TYPE=$build_type \
BENCH_GIT=$git_rev BENCH_UNIFAAS="$(version "$unifaas" --version) ($unifaas)" \
BENCH_DOCKERD=$(version dockerd --version) BENCH_RUNC=$(version runc --version) \
BENCH_QEMU=$(version qemu-system-x86_64 --version) BENCH_NGINX=$(version "$nginx_bin" -v) \
BENCH_WRK=$(version wrk -v) BENCH_LOAD_START=$load_start \
BENCH_CONFIG="{\"mode\": \"$mode\", \"wrk_seconds\": $wrk_s, \"rounds\": $rounds, \
\"cold_runs\": $cold_runs, \"idle_seconds\": $idle_s, \"idle_instances\": $idle_instances}" \
  "$py" "$lib/machine.py" >"$work/machine.json"
mkdir -p "$out/logs"
cp "$raw" "$out/raw.jsonl"
cp "$work/machine.json" "$out/machine.json"
[ ! -f "$work/metrics-main.txt" ] || cp "$work/metrics-main.txt" "$out/logs/metrics-main.txt"
[ ! -f "$work/perf-report.txt" ] || cp "$work/perf-report.txt" "$out/perf-report.txt"
[ ! -f "$work/stream.md" ] || cp "$work/stream.md" "$out/stream.md"
[ ! -f "$work/websocket.md" ] || cp "$work/websocket.md" "$out/websocket.md"
"$py" "$lib/report.py" "$raw" "$work/machine.json" "$out" --metrics "$work/metrics-main.txt" \
  --snapshot "$out/snapshot/snapshot.json"
echo
echo "results: $out/results.md, $out/results.json ($(($(date +%s) - started)) s)"
