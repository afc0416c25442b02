#!/usr/bin/env bash
# Builds the .deb and the .rpm of unifaas into BUILD_DIR/packages/ and checks the .deb with
# lintian (errors fail the script; warnings are listed in packaging/README.md).
#
#   packaging/build-packages.sh [BUILD_DIR]      (default: build)
#
# Needs the build dependencies (tests/lib/install-deps.sh) plus dpkg-dev, file and rpm; no root.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}

cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
# The "package" target builds everything first, then runs cpack (generators DEB and RPM).
cmake --build "$build" -j"$(nproc)" --target package

shopt -s nullglob
debs=("$build"/packages/unifaas_*.deb)
rpms=("$build"/packages/unifaas-*.rpm)
for f in "${debs[@]}" "${rpms[@]}"; do
  echo "built $f"
done
if command -v lintian >/dev/null && ((${#debs[@]})); then
  lintian --fail-on error "${debs[@]}"
fi
