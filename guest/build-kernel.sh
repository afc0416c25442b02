#!/usr/bin/env bash
# build-kernel.sh OUTDIR — fetches Debian's cloud kernel and prepares it for unifaas microVMs.
#
# Outputs (nothing is installed on the host):
#   OUTDIR/bzImage       the package's vmlinuz (LZ4 bzImage: for q35/pc and anything that wants one)
#   OUTDIR/vmlinux       the ELF kernel cut out of it (boots directly through PVH: QEMU -M microvm,
#                        Firecracker), about 0.4 s faster under TCG than the bzImage
#   OUTDIR/modules/      the virtio modules the initramfs carries (plain .ko) and `order`, the load
#                        order with dependencies first
#   OUTDIR/version       the kernel release (e.g. 6.1.0-56-cloud-amd64) and package version
#
# Cached: does nothing when those outputs exist and are newer than this script. UNIFAAS_KERNEL_PKG
# picks a package (default: the newest linux-image-6.1.0-N-cloud-amd64 apt knows);
# UNIFAAS_GUEST_MODULES replaces the module list (space separated, dependencies are added).
set -euo pipefail

if (($# != 1)); then
  echo "usage: $0 OUTDIR" >&2
  exit 2
fi
out=$1
self=$(readlink -f "${BASH_SOURCE[0]}")

# virtio transports (mmio for -M microvm / Firecracker, pci for q35/pc), network and block. 9p
# (9pnet 9pnet_virtio 9p, which would pull in netfs and fscache) is wanted for disk-type "9p", but
# the cloud kernel is built without it (CONFIG_NET_9P unset): missing modules are reported and
# skipped, so a kernel that has them gets them.
default_modules="virtio_ring virtio virtio_mmio virtio_pci_legacy_dev virtio_pci_modern_dev"
default_modules+=" virtio_pci failover net_failover virtio_net virtio_blk 9pnet 9pnet_virtio 9p"
read -ra modules <<<"${UNIFAAS_GUEST_MODULES:-$default_modules}"

up_to_date() {
  local f
  for f in "$out/vmlinux" "$out/bzImage" "$out/modules/order" "$out/version"; do
    [[ -s $f && $f -nt $self ]] || return 1
  done
}
if up_to_date; then
  echo "guest kernel: up to date in $out ($(head -n1 "$out/version"))"
  exit 0
fi

need() {
  local missing=()
  for tool in "$@"; do command -v "$tool" >/dev/null || missing+=("$tool"); done
  ((${#missing[@]} == 0)) && return
  echo "build-kernel.sh: missing ${missing[*]}; install them (tests/lib/install-deps.sh does)" >&2
  exit 1
}
need apt-get apt-cache dpkg-deb lz4 od objcopy

work=$(mktemp -d "${TMPDIR:-/tmp}/unifaas-kernel.XXXXXX")
trap 'rm -rf "$work"' EXIT

# 1. The package: newest linux-image-6.1.0-N-cloud-amd64 (the signed one: same modules, and the
#    kernel accepts its signatures; MODULE_SIG_FORCE is off so unsigned would load as well).
pkg=${UNIFAAS_KERNEL_PKG:-}
if [[ -z $pkg ]]; then
  pkg=$(apt-cache pkgnames linux-image-6.1.0- | grep -E '^linux-image-6\.1\.0-[0-9]+-cloud-amd64$' |
    sort -V | tail -n1 || true)
  if [[ -z $pkg ]]; then
    echo "build-kernel.sh: apt knows no linux-image-6.1.0-*-cloud-amd64 (run apt-get update)" >&2
    exit 1
  fi
fi
echo "guest kernel: downloading $pkg"
# apt's _apt user must be able to write the download directory.
chmod 0777 "$work"
if ! (cd "$work" && apt-get download -q "$pkg") 2>"$work/apt.err"; then
  cat "$work/apt.err" >&2
  echo "build-kernel.sh: apt-get download $pkg failed" >&2
  exit 1
fi
debs=("$work"/*.deb)
deb=${debs[0]}
[[ -f $deb ]] || {
  echo "build-kernel.sh: apt-get download $pkg produced no .deb" >&2
  exit 1
}
pkgver=$(dpkg-deb -f "$deb" Version)
dpkg-deb -x "$deb" "$work/x"
vmlinuzes=("$work"/x/boot/vmlinuz-*)
vmlinuz=${vmlinuzes[0]}
release=${vmlinuz##*/vmlinuz-}
moddir=$work/x/lib/modules/$release

# 2. vmlinux out of the bzImage. Setup header: setup_sects at 0x1f1 (0 means 4), the protected-mode
#    code starts at (setup_sects+1)*512; payload_offset (0x248) and payload_length (0x24c) are
#    relative to it. The payload is LZ4 legacy format followed by the 4-byte little-endian
#    decompressed size the kernel build appends, which lz4 would take for garbage.
u8() { od -An -t u1 -j "$(($2))" -N 1 "$1" | tr -d ' '; }
u32() { od -An -t u4 -j "$(($2))" -N 4 "$1" | tr -d ' '; }
[[ $(od -An -c -j $((0x202)) -N 4 "$vmlinuz" | tr -d ' ') == HdrS ]] || {
  echo "build-kernel.sh: $vmlinuz is not a bzImage" >&2
  exit 1
}
setup_sects=$(u8 "$vmlinuz" 0x1f1)
((setup_sects == 0)) && setup_sects=4
payload_offset=$(u32 "$vmlinuz" 0x248)
payload_length=$(u32 "$vmlinuz" 0x24c)
start=$(((setup_sects + 1) * 512 + payload_offset))
magic=$(od -An -t x4 -j "$start" -N 4 "$vmlinuz" | tr -d ' ')
if [[ $magic != 184c2102 ]]; then
  echo "build-kernel.sh: payload at $start is not LZ4 legacy (magic $magic)" >&2
  exit 1
fi
expected=$(u32 "$vmlinuz" $((start + payload_length - 4)))
dd if="$vmlinuz" iflag=skip_bytes,count_bytes skip="$start" count=$((payload_length - 4)) bs=1M \
  status=none | lz4 -dc >"$work/vmlinux"
size=$(stat -c %s "$work/vmlinux")
if ((size != expected)) || [[ $(od -An -c -N 4 "$work/vmlinux" | tr -d ' ') != 177ELF ]]; then
  echo "build-kernel.sh: decompressed vmlinux is $size bytes (expected $expected) or not ELF" >&2
  exit 1
fi

# 3. Modules, dependencies first (depends= in each module's .modinfo).
declare -A path_of=()
while IFS= read -r -d '' f; do
  name=${f##*/}
  name=${name%%.ko*}
  path_of[$name]=$f
  path_of[${name//-/_}]=$f
done < <(find "$moddir/kernel" -name '*.ko*' -print0)

depends_of() {
  local f=$1
  if command -v modinfo >/dev/null; then
    modinfo -F depends "$f"
  else
    objcopy -O binary --only-section=.modinfo "$f" /dev/stdout | tr '\0' '\n' |
      sed -n 's/^depends=//p'
  fi
}

mkdir -p "$work/modules"
declare -A state=()
order=()
visit() {
  local name=${1//-/_} dep f
  [[ ${state[$name]:-} == "done" ]] && return 0
  if [[ ${state[$name]:-} == visiting ]]; then
    echo "build-kernel.sh: module dependency cycle at $name" >&2
    exit 1
  fi
  f=${path_of[$name]:-}
  if [[ -z $f ]]; then
    echo "guest kernel: module $name is not in $release (built in or not configured); skipped"
    state[$name]="done"
    return 0
  fi
  state[$name]=visiting
  case $f in
    *.ko) cp "$f" "$work/modules/$name.ko" ;;
    *.ko.xz) xz -dc "$f" >"$work/modules/$name.ko" ;;
    *.ko.zst) zstd -qdc "$f" >"$work/modules/$name.ko" ;;
    *.ko.gz) gzip -dc "$f" >"$work/modules/$name.ko" ;;
    *) echo "build-kernel.sh: unknown module format $f" >&2 && exit 1 ;;
  esac
  for dep in $(depends_of "$work/modules/$name.ko" | tr ',' ' '); do visit "$dep"; done
  order+=("$name.ko")
  state[$name]="done"
}
for m in "${modules[@]}"; do visit "$m"; done
printf '%s\n' "${order[@]}" >"$work/modules/order"

# 4. Publish (replace the outputs as a whole).
mkdir -p "$out"
rm -rf "$out/modules"
mv "$work/modules" "$out/modules"
cp "$vmlinuz" "$out/bzImage"
mv "$work/vmlinux" "$out/vmlinux"
printf '%s\n%s %s\n' "$release" "$pkg" "$pkgver" >"$out/version"
touch "$out/bzImage" "$out/vmlinux" "$out/modules/order" "$out/version"
echo "guest kernel: $release ($pkg $pkgver) in $out; modules: ${order[*]}"
