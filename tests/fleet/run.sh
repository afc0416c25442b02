#!/usr/bin/env bash
# tests/fleet/run.sh [BUILD_DIR]: three unifaas nodes behind a real HAProxy (Debian's haproxy),
# everything in network namespaces made here and deleted on exit:
#
#   <tag>-front: HAProxy on 127.0.0.1:8000 (the shipped examples/fleet/haproxy.cfg, with test
#                addresses and faster check intervals) and the test client (fleet.py)
#   <tag>-n1..3: one "host" each: its own unifaas (listen :8123, agent-check :8125) and sandbox
#                backend; a veth to the front namespace (10.77.N.1 front, 10.77.N.2 node)
#
# Scenarios (fleet.py): affinity, spread, rolling restart under load (0 failures), kill -9 under
# load (no failure after the check interval), agent-check weight in HAProxy's stats.
#
# The sandbox backend is one variable: FLEET_BACKEND (default docker: a private Docker engine per
# node, tests/lib/private-docker.sh, with the example image). A backend is three functions below:
# backend_start_<name> N, backend_stop_<name> N, backend_config_<name> N (daemon config lines and
# the function's sandbox table, see fleet.py --backend-config). FLEET_KEEP=1 keeps this run's
# directory (configs, daemon and HAProxy logs with every request) for a look afterwards.
set -euo pipefail

src=$(cd "$(dirname "$0")/../.." && pwd)
build=$(cd "${1:-$src/build}" && pwd)
backend=${FLEET_BACKEND:-docker}
# Short: interface names are at most 15 characters.
tag=uf$$
front=$tag-front
work=$build/fleet            # engines' data roots: images survive between runs
run=$(mktemp -d /tmp/unifaas-fleet-XXXXXX)  # this run's configs, logs, sockets
image=unifaas-hello

[ "$(id -u)" = 0 ] || { echo "fleet test: needs root (network namespaces)" >&2; exit 77; }
command -v haproxy >/dev/null || { echo "fleet test: haproxy missing (tests/lib/install-deps.sh)" >&2; exit 1; }

for f in "$build/unifaas" "$build/examples/hello-rootfs.tar"; do
  [ -e "$f" ] || { echo "fleet test: $f missing: build the unifaas and example_images targets" >&2; exit 1; }
done

. "$src/tests/lib/private-docker.sh"

node_ns() { echo "$tag-n$1"; }

# --- backend: docker ------------------------------------------------------------------------
backend_start_docker() {
  private_docker_start "$(node_ns "$1")" "$work/node$1/docker"
  "$src/examples/import-image.sh" "$work/node$1/docker/docker.sock" \
    "$build/examples/hello-rootfs.tar" "$image" >/dev/null
}
backend_stop_docker() { private_docker_stop "$(node_ns "$1")" "$work/node$1/docker"; }
backend_config_docker() {  # daemon lines, then "---", then the function's sandbox table
  printf 'docker-socket = "%s"\n---\n[container]\nimage = "%s"\nmemory = 64\n' \
    "$work/node$1/docker/docker.sock" "$image"
}
# ----------------------------------------------------------------------------------------------

cleanup() {
  local n
  for n in 1 2 3; do
    "backend_stop_$backend" "$n" 2>/dev/null || true
    ip netns delete "$(node_ns "$n")" 2>/dev/null || true
  done
  ip netns delete "$front" 2>/dev/null || true
  if [ "${FLEET_KEEP:-}" ]; then echo "fleet test: kept $run"; else rm -rf "$run"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

ip netns add "$front"
ip -n "$front" link set lo up
for n in 1 2 3; do
  ns=$(node_ns "$n")
  ip netns add "$ns" 2>/dev/null || true
  ip -n "$ns" link set lo up
  ip -n "$front" link add "n$n" type veth peer name eth0 netns "$ns"
  ip -n "$front" addr add "10.77.$n.1/24" dev "n$n"
  ip -n "$front" link set "n$n" up
  ip -n "$ns" addr add "10.77.$n.2/24" dev eth0
  ip -n "$ns" link set eth0 up
  "backend_start_$backend" "$n"
  "backend_config_$backend" "$n" >"$run/backend-$n.conf"
done

nsenter --net="/run/netns/$front" python3 "$src/tests/fleet/fleet.py" \
  --daemon "$build/unifaas" --haproxy-example "$src/examples/fleet/haproxy.cfg" \
  --work "$run" --netns-prefix "$tag-n" --backend-config "$run/backend-%d.conf"
