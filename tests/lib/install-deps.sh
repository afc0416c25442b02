#!/usr/bin/env bash
# Installs the Debian 12 packages that building, running and testing unifaas need.
# Idempotent: does nothing when everything is there already.
set -euo pipefail

packages=(
  # build
  build-essential cmake pkg-config git
  libcpp-httplib-dev libtomlplusplus-dev nlohmann-json3-dev libspdlog-dev libgtest-dev
  libsystemd-dev libsdbus-c++-dev libsdbus-c++-bin
  libnftables-dev nftables  # guest firewall (net/firewall); nft for tests and operators
  libseccomp-dev  # engine = "oci": the containers' precompiled seccomp filter
  clang  # libFuzzer targets (tests/fuzz, UNIFAAS_FUZZ)
  # real components the daemon drives and the tests exercise
  docker.io runc crun iproute2 curl systemd
  lz4 cpio qemu-system-x86
  umoci skopeo  # engine = "oci": OCI image layouts and docker-archives
  # packages (cpack: dpkg-shlibdeps, rpmbuild; lintian) and their end-to-end test (tests/e2e)
  dpkg-dev file rpm lintian debootstrap systemd-container dbus
  # several nodes behind a load balancer (tests/fleet, bench/haproxy_hop.py)
  haproxy
  python3-websockets  # a real WebSocket client through the gateway (Streaming tests)
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
