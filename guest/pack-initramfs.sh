#!/usr/bin/env bash
# pack-initramfs.sh KERNEL_DIR FUNCTION_BINARY INIT_BINARY OUT.cpio.gz
#
# Packs a unifaas guest initramfs (cpio newc, gzip): /init (unifaas-init), /function (the
# function, which must be static: there is no libc in the image), /lib/modules/*.ko and
# /lib/modules/order from KERNEL_DIR/modules (made by build-kernel.sh), and empty /dev /proc /sys
# /tmp. No device nodes are needed: the kernel's built-in initramfs provides /dev/console and init
# mounts devtmpfs on /dev. The archive is reproducible (owner 0:0, mtime 0, sorted) and written
# atomically.
set -euo pipefail

if (($# != 4)); then
  echo "usage: $0 KERNEL_DIR FUNCTION_BINARY INIT_BINARY OUT.cpio.gz" >&2
  exit 2
fi
kernel_dir=$1 function_bin=$2 init_bin=$3 out=$4

for f in "$kernel_dir/modules/order" "$function_bin" "$init_bin"; do
  [[ -f $f ]] || {
    echo "pack-initramfs.sh: $f does not exist" >&2
    exit 1
  }
done
command -v cpio >/dev/null || {
  echo "pack-initramfs.sh: cpio is missing (apt-get install cpio)" >&2
  exit 1
}
if command -v readelf >/dev/null && readelf -l "$function_bin" 2>/dev/null | grep -q INTERP; then
  echo "pack-initramfs.sh: warning: $function_bin is dynamically linked; the guest has no libc" >&2
fi

stage=$(mktemp -d "${TMPDIR:-/tmp}/unifaas-initramfs.XXXXXX")
trap 'rm -rf "$stage" "$out.tmp"' EXIT

mkdir -p "$stage"/{dev,proc,sys,tmp,lib/modules}
chmod 1777 "$stage/tmp"
install -m 0755 "$init_bin" "$stage/init"
install -m 0755 "$function_bin" "$stage/function"
while IFS= read -r line; do
  module=${line%% *}
  [[ -z $module || $module == \#* ]] && continue
  install -m 0644 "$kernel_dir/modules/$module" "$stage/lib/modules/$module"
done <"$kernel_dir/modules/order"
install -m 0644 "$kernel_dir/modules/order" "$stage/lib/modules/order"

find "$stage" -exec touch -h -d @0 {} +
mkdir -p "$(dirname "$out")"
(cd "$stage" && find . -mindepth 1 -print0 | LC_ALL=C sort -z |
  cpio --null --create --format=newc --owner=0:0 --reproducible --quiet) |
  gzip -n -9 >"$out.tmp"
mv "$out.tmp" "$out"
echo "initramfs: $out ($(stat -c %s "$out") bytes: init, $(basename "$function_bin") as /function," \
  "$(grep -cv '^\s*\(#\|$\)' "$kernel_dir/modules/order") modules)"
