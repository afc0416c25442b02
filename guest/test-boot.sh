#!/usr/bin/env bash
# test-boot.sh [KERNEL_DIR [INITRAMFS [MACHINES]]] — boot smoke test of the unifaas guest image.
#
# Boots the hello initramfs under QEMU (TCG) and checks the whole guest path: modules, network,
# readiness callback, a request to the function, and power-off when the function exits.
#   KERNEL_DIR  build-kernel.sh output  (default: $BUILD_DIR/guest/kernel)
#   INITRAMFS   pack-initramfs.sh output (default: $BUILD_DIR/guest/hello-initramfs.cpio.gz)
#   MACHINES    "microvm", "q35" or "all" (default all): microvm boots vmlinux with
#               virtio-net-device (virtio-mmio, found through ACPI), q35 boots the bzImage with
#               virtio-net-pci; "all" also checks that the VM powers itself off (QEMU exits) when
#               the function exits.
# BUILD_DIR defaults to build-guest next to this folder; EXTRA_APPEND adds kernel parameters;
# ACCEL (default tcg) picks the accelerator; KEEP_LOGS=1 keeps the console logs.
#
# Needs root, qemu-system-x86, iproute2 (ip, nsenter from util-linux), python3, curl. Everything
# with an address lives in the network namespace unifaas-guest-test (tap guesttap0 10.200.0.1/30,
# guest 10.200.0.2), deleted on exit; the host's own namespace is never touched.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
build_dir=${BUILD_DIR:-$here/../build-guest}
kernel_dir=${1:-$build_dir/guest/kernel}
initramfs=${2:-$build_dir/guest/hello-initramfs.cpio.gz}
machines=${3:-all}
accel=${ACCEL:-tcg}

netns=unifaas-guest-test
tap=guesttap0
host_ip=10.200.0.1
guest_ip=10.200.0.2
cb_port=9999

if ((EUID != 0)); then
  echo "test-boot.sh: needs root (network namespace, tap)" >&2
  exit 1
fi
for tool in qemu-system-x86_64 ip nsenter python3 curl flock; do
  command -v "$tool" >/dev/null || {
    echo "test-boot.sh: $tool is missing" >&2
    exit 1
  }
done
for f in "$kernel_dir/vmlinux" "$kernel_dir/bzImage" "$initramfs"; do
  [[ -f $f ]] || {
    echo "test-boot.sh: $f is missing (build the guest_images target first)" >&2
    exit 1
  }
done

# One run at a time (fixed namespace name); a namespace left by a killed run is removed.
exec 9>/run/unifaas-guest-test.lock
flock -w 120 9 || {
  echo "test-boot.sh: another run holds /run/unifaas-guest-test.lock" >&2
  exit 1
}

work=$(mktemp -d "${TMPDIR:-/tmp}/unifaas-guest-test.XXXXXX")
qemu_pid="" listener_pid=""
cleanup() {
  local rc=$?
  set +e
  [[ -n $qemu_pid ]] && kill "$qemu_pid" 2>/dev/null && wait "$qemu_pid" 2>/dev/null
  if [[ -n $listener_pid ]]; then
    # python3 may be a wrapper (pyenv) that forks: stop the server by the pid it wrote too.
    kill "$(cat "$work/listener.pid" 2>/dev/null)" "$listener_pid" 2>/dev/null
    wait "$listener_pid" 2>/dev/null
  fi
  ip netns del "$netns" 2>/dev/null || true
  if ((rc == 0)) && [[ ${KEEP_LOGS:-0} != 1 ]]; then
    rm -rf "$work"
  else
    echo "test-boot.sh: console logs kept in $work"
  fi
  return "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

in_ns() { nsenter --net="/run/netns/$netns" "$@"; }

fail() {
  echo "FAIL: $*" >&2
  if [[ -n ${current:-} && -s $work/$current.qemu.log ]]; then
    echo "--- QEMU said:" >&2
    cat "$work/$current.qemu.log" >&2
  fi
  if [[ -n ${console:-} && -f $console ]]; then
    echo "--- last console lines ($console):" >&2
    tail -n 25 "$console" >&2
  fi
  exit 1
}

ip netns del "$netns" 2>/dev/null || true
ip netns add "$netns"
ip -n "$netns" link set lo up
ip -n "$netns" tuntap add dev "$tap" mode tap
ip -n "$netns" addr add "$host_ip/30" dev "$tap"
ip -n "$netns" link set "$tap" up

# The readiness callback listener: records the arrival time and path of every call.
cat >"$work/listener.py" <<'EOF'
import http.server, os, sys, time

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        with open(sys.argv[3], "a") as f:
            f.write("%.6f %s %s\n" % (time.time(), self.client_address[0], self.path))
        self.send_response(200)
        self.send_header("Content-Length", "3")
        self.end_headers()
        self.wfile.write(b"ok\n")
    do_POST = do_GET
    def log_message(self, *args):
        pass

server = http.server.HTTPServer((sys.argv[1], int(sys.argv[2])), Handler)
with open(sys.argv[4], "w") as f:
    f.write("%d\n" % os.getpid())
server.serve_forever()
EOF
calls=$work/callbacks.log
: >"$calls"
nsenter --net="/run/netns/$netns" python3 "$work/listener.py" "$host_ip" "$cb_port" "$calls" "$work/listener.pid" &
listener_pid=$!
for _ in $(seq 200); do
  [[ -s $work/listener.pid ]] && break
  kill -0 "$listener_pid" 2>/dev/null || fail "the callback listener did not start"
  sleep 0.05
done

# Under TCG the kernel needs the TSC frequency (its calibration occasionally hangs a boot).
tsc_khz=$(awk -F: '/^cpu MHz/ { printf "%d", $2 * 1000; exit }' /proc/cpuinfo)
base_append="console=ttyS0 reboot=t panic=-1 cryptomgr.notests"
[[ $accel == tcg && -n $tsc_khz ]] && base_append+=" tsc_early_khz=$tsc_khz"
net_append="unifaas.ip=$guest_ip unifaas.gw=$host_ip unifaas.mask=255.255.255.252"
cpu=(-cpu max)
[[ $accel == kvm ]] && cpu=(-cpu host)

# boot NAME MACHINE_ARGS... -- APPEND: starts QEMU in the namespace; sets qemu_pid, t0, current
# and console.
boot() {
  local name=$1 append=${*: -1}
  shift
  local args=("${@:1:$#-2}")
  current=$name
  console=$work/$name.console.log
  t0=$(date +%s.%N)
  nsenter --net="/run/netns/$netns" qemu-system-x86_64 -accel "$accel" "${cpu[@]}" "${args[@]}" -m 256 -smp 1 \
    -nodefaults -no-user-config -no-reboot -display none -serial "file:$console" \
    -initrd "$initramfs" -append "$append" \
    -netdev tap,id=n0,ifname=$tap,script=no,downscript=no 2>"$work/$name.qemu.log" &
  qemu_pid=$!
}

stop_qemu() {
  kill "$qemu_pid" 2>/dev/null || true
  wait "$qemu_pid" 2>/dev/null || true
  qemu_pid=""
}

# wait_callback TOKEN: waits for GET /ready/TOKEN; prints seconds since t0.
wait_callback() {
  local token=$1 deadline=$((SECONDS + 60)) line
  while ((SECONDS < deadline)); do
    line=$(grep " /ready/$token\$" "$calls" | head -n1 || true)
    if [[ -n $line ]]; then
      awk -v t0="$t0" '{ printf "%.2f", $1 - t0 }' <<<"$line"
      return 0
    fi
    kill -0 "$qemu_pid" 2>/dev/null || fail "QEMU exited before the callback"
    sleep 0.02
  done
  fail "no callback /ready/$token within 60 s"
}

check_function() {
  local answer
  answer=$(in_ns curl -sS -m 10 "http://$guest_ip:8080/hello") || fail "curl http://$guest_ip:8080/hello"
  [[ $answer == "hello from unifaas" ]] || fail "unexpected answer: $answer"
  grep -q "^unifaas-init: eth0 $guest_ip/30 gw $host_ip" "$console" ||
    fail "no 'unifaas-init: eth0 $guest_ip/30 gw $host_ip' line on the console"
}

results=()
run_boot() {
  local name=$1
  local token=$name-$RANDOM
  shift
  boot "$name" "$@" "$base_append $net_append unifaas.callback=http://$host_ip:$cb_port/ready/$token ${EXTRA_APPEND:-}"
  local secs
  secs=$(wait_callback "$token")
  check_function
  stop_qemu
  results+=("$name: boot to callback ${secs} s")
  echo "ok: $name boot to callback ${secs} s, GET /hello answered"
}

mac=52:54:00:12:34:56
if [[ $machines == microvm || $machines == all ]]; then
  run_boot microvm -M microvm,pic=off,pit=off,rtc=on,acpi=on,auto-kernel-cmdline=off \
    -kernel "$kernel_dir/vmlinux" -device "virtio-net-device,netdev=n0,mac=$mac" --
fi
if [[ $machines == q35 || $machines == all ]]; then
  run_boot q35 -M q35 -kernel "$kernel_dir/bzImage" -device "virtio-net-pci,netdev=n0,mac=$mac" --
fi
if [[ $machines == all ]]; then
  # The function exits (hello's test hook, passed with unifaas.env): init must power off and
  # QEMU must exit by itself.
  boot poweroff -M microvm,pic=off,pit=off,rtc=on,acpi=on,auto-kernel-cmdline=off \
    -kernel "$kernel_dir/vmlinux" -device "virtio-net-device,netdev=n0,mac=$mac" -- \
    "$base_append $net_append unifaas.env=HELLO_EXIT_BEFORE_READY=1 ${EXTRA_APPEND:-}"
  deadline=$((SECONDS + 60))
  while kill -0 "$qemu_pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.02; done
  kill -0 "$qemu_pid" 2>/dev/null && fail "QEMU still running 60 s after the function exited"
  wait "$qemu_pid" || true
  qemu_pid=""
  grep -q '^unifaas-init: /function exited with status 3; powering off' "$console" ||
    fail "no 'exited with status 3' line on the console"
  secs=$(awk -v t0="$t0" -v now="$(date +%s.%N)" 'BEGIN { printf "%.2f", now - t0 }')
  results+=("poweroff: QEMU exited by itself ${secs} s after start")
  echo "ok: function exit powered the VM off; QEMU exited ${secs} s after start"
fi

echo "kernel $(head -n1 "$kernel_dir/version" 2>/dev/null || echo '?'), initramfs $(stat -c %s "$initramfs") bytes, accel $accel"
printf '  %s\n' "${results[@]}"
