#!/usr/bin/env bash
# Builds unifaas and the example function, then serves the example registry on
# 127.0.0.1:8123 until Ctrl-C. Needs root: the functions' sandboxes live in a private network
# namespace ("unifaas-demo") with a private Docker engine, started here and removed on exit.
# The daemon is socket-activated on 127.0.0.1:8123 in the host namespace and then enters the
# private one, so `curl localhost:8123/...` reaches it while its instances stay isolated.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
  exec sudo --preserve-env=PATH "$0" "$@"
fi

tests/lib/install-deps.sh
build=${BUILD_DIR:-build}
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$build" -j"$(nproc)" --target unifaas example_images

netns=unifaas-demo
state="$PWD/$build/demo"
. tests/lib/private-docker.sh
trap 'private_docker_stop "$netns" "$state/docker"' EXIT
private_docker_start "$netns" "$state/docker"
examples/import-image.sh "$state/docker/docker.sock" "$build/examples/hello-rootfs.tar" unifaas-hello

cat <<MSG

unifaas is serving examples/registry on 127.0.0.1:8123. Try:

    curl localhost:8123/invoke/hello/hello
    curl -d 'some body' 'localhost:8123/invoke/hello/echo/a/b?x=1'
    curl localhost:8123/status

Ctrl-C stops the daemon, its containers, the private engine and the namespace.

MSG
# The daemon starts on the first connection (socket activation) and stops on Ctrl-C.
systemd-socket-activate -l 127.0.0.1:8123 --fdname=http \
  -E DOCKER_HOST="unix://$state/docker/docker.sock" \
  nsenter --net="/run/netns/$netns" "$build/unifaas" --registry examples/registry \
  --listen 127.0.0.1:8123 --log-level "${LOG_LEVEL:-info}" || true
