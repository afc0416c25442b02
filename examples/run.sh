#!/usr/bin/env bash
# Builds unifaas, the example function and its guest image, then serves the example registry on
# 127.0.0.1:8123 until Ctrl-C. Needs root. The functions' sandboxes live in a private network
# namespace ("unifaas-demo") made here and removed on exit: the microVM example (hello-vm) needs
# only QEMU, the OCI container example (hello-oci) only crun; with --containers a private Docker
# engine is started there too for the Docker examples (hello, hello-once).
# The daemon is socket-activated on 127.0.0.1:8123 in the host namespace and then enters the
# private one, so `curl localhost:8123/...` reaches it while its instances stay isolated.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
  exec sudo --preserve-env=PATH "$0" "$@"
fi
containers=false
[ "${1:-}" = "--containers" ] && containers=true

tests/lib/install-deps.sh
build=build  # examples/registry/hello-vm names build/guest/
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$build" -j"$(nproc)" --target unifaas example_images guest_images

netns=unifaas-demo
state="$PWD/$build/demo"
. tests/lib/private-docker.sh
cleanup() {
  if $containers; then
    private_docker_stop "$netns" "$state/docker"
  fi
  ip netns delete "$netns" 2>/dev/null || true
}
trap cleanup EXIT
ip netns add "$netns"
ip -n "$netns" link set lo up
# crun (hello-oci) refuses hybrid cgroup hosts while hugetlb is left on v2 (docs: ENVIRONMENT).
if grep -qw hugetlb /sys/fs/cgroup/unified/cgroup.controllers 2>/dev/null &&
  ! mountpoint -q /sys/fs/cgroup/hugetlb; then
  mkdir -p /sys/fs/cgroup/hugetlb && mount -t cgroup -o hugetlb cgroup /sys/fs/cgroup/hugetlb
fi
engine=()
if $containers; then
  private_docker_start "$netns" "$state/docker"
  examples/import-image.sh "$state/docker/docker.sock" "$build/examples/hello-rootfs.tar" \
    unifaas-hello
  engine=(-E DOCKER_HOST="unix://$state/docker/docker.sock")
fi

cat <<MSG

unifaas is serving examples/registry on 127.0.0.1:8123. Try:

    curl localhost:8123/invoke/hello-vm/hello        # a microVM (QEMU microvm), cold then warm
    curl localhost:8123/invoke/hello-oci/hello       # a container run by crun, no engine
    curl -d 'some body' 'localhost:8123/invoke/hello-vm/echo/a/b?x=1'
    curl localhost:8123/status
MSG
if $containers; then
  echo "    curl localhost:8123/invoke/hello/hello           # a container (Docker, runc)"
else
  echo "    (container examples: examples/run.sh --containers)"
fi
cat <<MSG

Ctrl-C stops the daemon, its instances and taps, and removes the namespace.

MSG
# hello-vm's snapshot templates are kept under the build directory, not /var/lib.
mkdir -p "$state"
printf 'snapshot-dir = "%s"\n' "$state/snapshots" >"$state/unifaas.toml"
# The daemon starts on the first connection (socket activation) and stops on Ctrl-C.
systemd-socket-activate -l 127.0.0.1:8123 --fdname=http "${engine[@]}" \
  nsenter --net="/run/netns/$netns" "$build/unifaas" --config "$state/unifaas.toml" \
  --registry examples/registry --listen 127.0.0.1:8123 --log-level "${LOG_LEVEL:-info}" || true
