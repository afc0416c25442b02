# Sourced by scripts: a private Docker engine inside a network namespace of our own, so nothing
# touches the host's network or a system-wide engine.
#   private_docker_start NETNS DIR   -> engine socket at $DIR/docker.sock
#   private_docker_stop  NETNS DIR   -> removes its containers, stops it, deletes the namespace
# DIR keeps the engine's data root, so imported images survive between runs.

private_docker_start() {
  local netns=$1 dir=$2
  mkdir -p "$dir/data" "$dir/exec"
  if ! ip netns list | grep -qw "$netns"; then
    ip netns add "$netns"
  fi
  ip -n "$netns" link set lo up
  # Declares crun next to the default runc. On hosts with hybrid cgroups crun needs the last
  # v2-only controller mounted as v1 (see ENVIRONMENT.md).
  cat >"$dir/daemon.json" <<JSON
{"runtimes": {"crun": {"path": "/usr/bin/crun"}}}
JSON
  # setsid: the engine must outlive a Ctrl-C aimed at the daemon, which removes its containers.
  setsid nsenter --net="/run/netns/$netns" dockerd \
    --config-file "$dir/daemon.json" \
    --data-root "$dir/data" --exec-root "$dir/exec" --pidfile "$dir/dockerd.pid" \
    -H "unix://$dir/docker.sock" --iptables=true --ip-masq=false \
    >"$dir/dockerd.log" 2>&1 </dev/null &
  local i
  # dockerd has no readiness notification; its socket answering /_ping is the signal.
  for i in $(seq 1 600); do
    if curl -fsS --unix-socket "$dir/docker.sock" http://localhost/_ping >/dev/null 2>&1; then
      return 0
    fi
    sleep 0.1
  done
  echo "private dockerd did not come up; its log:" >&2
  tail -n 30 "$dir/dockerd.log" >&2
  return 1
}

private_docker_stop() {
  local netns=$1 dir=$2 sock="$2/docker.sock" id pid
  if [ -S "$sock" ]; then
    for id in $(curl -fsS --unix-socket "$sock" \
        'http://localhost/containers/json?all=1' 2>/dev/null |
        grep -o '"Id":"[0-9a-f]*"' | cut -d'"' -f4); do
      curl -fsS -X DELETE --unix-socket "$sock" \
        "http://localhost/containers/$id?force=true&v=true" >/dev/null 2>&1 || true
    done
  fi
  if [ -f "$dir/dockerd.pid" ]; then
    pid=$(cat "$dir/dockerd.pid")
    kill "$pid" 2>/dev/null || true
    # Wait for its exit: it still holds the namespace and its mounts until then.
    while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
    rm -f "$dir/dockerd.pid"
  fi
  ip netns delete "$netns" 2>/dev/null || true
}
