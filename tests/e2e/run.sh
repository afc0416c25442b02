#!/usr/bin/env bash
# End-to-end test of the packages on a real systemd: the built .deb is installed with dpkg into a
# fresh Debian 12 system booted with systemd-nspawn, a microVM function is invoked through the
# packaged socket unit, the daemon's D-Bus interface, scopes and journal fields are checked, the
# package is upgraded and purged; the .rpm's files and scriptlets are compared with the .deb's.
#
#   tests/e2e/run.sh [BUILD_DIR]       (root; ctest runs it as test "e2e" after test "packages")
#
# Needs: BUILD_DIR/packages/unifaas_*.deb and unifaas-*.rpm (cmake --build BUILD --target
# package), BUILD_DIR/guest/{kernel/vmlinux,hello-initramfs.cpio.gz}, and debootstrap,
# systemd-nspawn (systemd-container), rpm, iproute2 on the host (tests/lib/install-deps.sh).
#
# The Debian tree is made once with debootstrap (about a minute; the Debian archive must be
# reachable) and cached as BUILD_DIR/e2e/rootfs-<key>.tar, <key> naming the package list: the
# base system plus the packages of the libraries the daemon links. Every run extracts a fresh
# copy, so each starts from a system that never saw unifaas.
#
# Network: the container lives in a network namespace made here (unifaas-e2e-<pid>) with only
# lo; the daemon's taps and the guests are inside it. Nothing is added to the host's namespace.
#
# Output: PASS/FAIL/SKIP lines, then "N passed, M failed". Exit 0 when nothing failed, 1 when
# something did, 77 (ctest: skipped) when the host cannot run it at all.
# E2E_KEEP=1 keeps the run directory (rootfs, logs) for inspection.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
source_dir=$(cd "$here/../.." && pwd)
build=$(cd "${1:-$source_dir/build}" && pwd)
suite=${E2E_SUITE:-bookworm}
mirror=${E2E_MIRROR:-http://deb.debian.org/debian}
start_time=$(date +%s)

passed=0
failed=0
skipped=0
pass() { passed=$((passed + 1)); echo "PASS: $*"; }
fail() { failed=$((failed + 1)); echo "FAIL: $*"; }
skip() { skipped=$((skipped + 1)); echo "SKIP: $*"; }
note() { echo "---- $* ($(($(date +%s) - start_time)) s)"; }
# check DESCRIPTION COMMAND...: PASS when the command succeeds, FAIL with its output otherwise.
check() {
  local what=$1 out
  shift
  if out=$("$@" 2>&1); then
    pass "$what"
  else
    fail "$what"
    printf '%s\n' "$out" | tail -n 25 | sed 's/^/    | /'
  fi
}
# wait_for SECONDS COMMAND...: polls every 0.2 s until the command succeeds.
wait_for() {
  local deadline=$(($(date +%s) + $1))
  shift
  until "$@" >/dev/null 2>&1; do
    (($(date +%s) < deadline)) || return 1
    sleep 0.2
  done
}
# not COMMAND...: succeeds when the command fails (for check).
not() { ! "$@"; }
finished=false
finish() {
  finished=true
  ((skipped == 0)) || echo "($skipped checks skipped)"
  echo "$passed passed, $failed failed"
  ((failed == 0))
}

# --- prerequisites ---------------------------------------------------------------------------
if [ "$(id -u)" != 0 ]; then
  echo "SKIP: the e2e test needs root (systemd-nspawn, network namespaces)"
  exit 77
fi
for tool in debootstrap systemd-nspawn nsenter ip rpm dpkg-deb flock; do
  if ! command -v "$tool" >/dev/null; then
    echo "SKIP: $tool is missing (tests/lib/install-deps.sh installs it)"
    exit 77
  fi
done
# The packages of the version the build directory is configured for (older ones may lie next
# to them): CPack's configuration has the project's version and the package release.
cpack_value() { sed -n "s/^set($1 \"\(.*\)\")\$/\1/p" "$build/CPackConfig.cmake" 2>/dev/null; }
version=$(cpack_value CPACK_PACKAGE_VERSION)
release=$(cpack_value CPACK_DEBIAN_PACKAGE_RELEASE)
shopt -s nullglob
debs=("$build/packages/unifaas_${version}-${release}"_*.deb)
rpms=("$build/packages/unifaas-${version}-$(cpack_value CPACK_RPM_PACKAGE_RELEASE)".*.rpm)
shopt -u nullglob
if [ -z "$version" ] || ((${#debs[@]} != 1 || ${#rpms[@]} != 1)); then
  echo "FAIL: no .deb and .rpm of version ${version:-?} in $build/packages (cmake --build $build --target package)"
  echo "0 passed, 1 failed"
  exit 1
fi
deb=${debs[0]}
rpm_file=${rpms[0]}
deb_files=$(dpkg-deb --fsys-tarfile "$deb" | tar -t | sed 's|^\./|/|; s|/$||' | grep -v '^/\?$' | sort)
has_file() { grep -qxF "$1" <<<"$deb_files"; }
have_units=false
sockets=()
if has_file /usr/lib/systemd/system/unifaas.socket && has_file /usr/lib/systemd/system/unifaas.service; then
  have_units=true
  # unifaas.socket, unifaas-callback.socket: the socket units the package ships and starts;
  # unifaas-agent.socket (HAProxy agent-check, docs/FLEET.md) ships disabled and stays off.
  mapfile -t sockets < <(sed -n 's|^/usr/lib/systemd/system/\(unifaas[^/]*\.socket\)$|\1|p' <<<"$deb_files" |
    grep -vx 'unifaas-agent.socket')
fi
# Enabling and starting unifaas.socket is all it takes: it pulls in the other socket units
# (unifaas-callback.socket); those are static.
socket_state() {
  local state
  state=$(in_ct systemctl is-enabled unifaas.socket)
  echo "unifaas.socket: $state"
  [ "$state" = "$1" ]
}
# every socket unit is active (systemctl is-active with several units tests "any")
agent_socket_off() {
  grep -qx /usr/lib/systemd/system/unifaas-agent.socket <<<"$deb_files" &&
    ! in_ct systemctl is-active --quiet unifaas-agent.socket
}
all_sockets_active() {
  local unit
  for unit in "${sockets[@]}"; do
    in_ct systemctl is-active --quiet "$unit" || { echo "$unit: not active"; return 1; }
  done
}
have_bus=false
if has_file /usr/share/dbus-1/system.d/org.unifaas.conf; then
  have_bus=true
fi
echo "package: $(basename "$deb") (version $version), $(basename "$rpm_file")"

# --- (a) the Debian tree, cached ---------------------------------------------------------------
# The packages of the shared libraries the daemon links (as the host resolves them), so that
# dpkg -i finds its dependencies without network; QEMU for the microVM function, crun for the
# OCI one.
state=$build/e2e
mkdir -p "$state"
netns=unifaas-e2e-$$
nspawn_pid=
cpid=
teardown() {
  local rc=$?
  set +e
  if ! $finished; then
    fail "the test stopped early (status $rc)${error_at:+ at $error_at}"
    finish
    ((rc != 0)) || rc=1
  fi
  if [ -n "$nspawn_pid" ] && kill -0 "$nspawn_pid" 2>/dev/null; then
    if [ -n "$cpid" ]; then
      nsenter -t "$cpid" -a systemctl poweroff >/dev/null 2>&1
    fi
    wait_for 30 bash -c "! kill -0 $nspawn_pid" || kill -TERM "$nspawn_pid"
    wait_for 15 bash -c "! kill -0 $nspawn_pid" || kill -KILL "$nspawn_pid"
    wait "$nspawn_pid" 2>/dev/null
  fi
  ip netns delete "$netns" 2>/dev/null
  if [ "${E2E_KEEP:-0}" = 1 ]; then
    echo "kept $scratch"
  elif ! findmnt -rno TARGET | grep -q "^$scratch"; then
    rm -rf --one-file-system "$scratch"
  else
    echo "not removing $scratch: something is still mounted below it"
  fi
  exit "$rc"
}
scratch=$(mktemp -d "$state/run.XXXXXX")
error_at=
trap teardown EXIT
trap 'exit 130' INT TERM
trap 'error_at="line $LINENO: $BASH_COMMAND"' ERR
binary=$scratch/unifaas
dpkg-deb --fsys-tarfile "$deb" | tar -xO ./usr/bin/unifaas >"$binary"
chmod +x "$binary"
lib_packages=$(ldd "$binary" | awk '$2 == "=>" && $3 ~ /^\// { print $3 }' |
  while read -r lib; do
    dpkg -S "$(readlink -f "$lib")" 2>/dev/null || dpkg -S "$lib" 2>/dev/null || true
  done | cut -d: -f1 | sort -u | tr '\n' ',')
rm -f "$binary"
include="systemd,systemd-sysv,dbus,iproute2,curl,procps,qemu-system-x86,crun,${lib_packages%,}"
key=$(printf '%s %s %s' "$suite" "$mirror" "$include" | sha256sum | cut -c1-12)
rootfs_tar=$state/rootfs-$suite-$key.tar
{
  flock 9
  if [ ! -f "$rootfs_tar" ]; then
    note "debootstrap $suite (cached afterwards as $(basename "$rootfs_tar"))"
    echo "    packages: $include"
    tree=$state/debootstrap.tmp
    rm -rf --one-file-system "$tree"
    if ! debootstrap --variant=minbase --include="$include" "$suite" "$tree" "$mirror" \
      >"$state/debootstrap.log" 2>&1; then
      tail -n 20 "$state/debootstrap.log"
      fail "debootstrap (log: $state/debootstrap.log)"
      rm -rf --one-file-system "$tree"
      finish || exit 1
    fi
    # A stable hostname and no machine-id: nspawn gives every boot a fresh one.
    echo unifaas-e2e >"$tree/etc/hostname"
    : >"$tree/etc/machine-id"
    tar -C "$tree" --numeric-owner -cf "$rootfs_tar.tmp" . && mv "$rootfs_tar.tmp" "$rootfs_tar"
    rm -rf --one-file-system "$tree"
    # Trees for another package list are stale now (about 400 MB each).
    find "$state" -maxdepth 1 -name 'rootfs-*.tar' ! -name "$(basename "$rootfs_tar")" -delete
  fi
} 9>"$state/.rootfs.lock"

# --- (b) boot it in a network namespace of its own --------------------------------------------
root=$scratch/rootfs

note "extracting a fresh rootfs"
mkdir "$root"
tar -C "$root" --numeric-owner -xf "$rootfs_tar"
ip netns add "$netns"
ip -n "$netns" link set lo up

# Installing where systemd does not run (image builds, chroots) must work and enable the socket;
# purging removes what it did, so the booted system below still sees a first installation.
note "dpkg -i and --purge in a chroot (no systemd running)"
cp "$deb" "$root/root/"
ct_deb=/root/$(basename "$deb")
check "dpkg -i in a chroot without a running systemd succeeds" chroot "$root" dpkg -i "$ct_deb"
check "... and enables unifaas.socket offline" \
  test -L "$root/etc/systemd/system/sockets.target.wants/unifaas.socket"
check "dpkg --purge in the chroot succeeds" chroot "$root" dpkg --purge unifaas
chroot_clean() {
  local left
  left=$(find "$root" -xdev -name '*unifaas*' ! -path "$root$ct_deb")
  echo "$left"
  [ -z "$left" ]
}
check "... and leaves nothing named *unifaas*" chroot_clean

note "booting it with systemd-nspawn"
# Without a session of its own the container would get the terminal's signals. CAP_NET_ADMIN:
# the daemon makes the guests' taps inside the container's (private) network namespace.
setsid systemd-nspawn -q -D "$root" --register=no --keep-unit --link-journal=no \
  --capability=CAP_NET_ADMIN --network-namespace-path="/run/netns/$netns" -b \
  >"$scratch/console.log" 2>&1 </dev/null &
nspawn_pid=$!
# The container's init is the child of nspawn that is PID 1 in a PID namespace of its own
# (nspawn's first child is an intermediate process that exits).
find_init() {
  local pid
  for pid in $(pgrep -P "$nspawn_pid"); do
    if awk '$1 == "NSpid:" && NF == 3 && $3 == 1 { found = 1 } END { exit !found }' \
      "/proc/$pid/status" 2>/dev/null; then
      cpid=$pid
      return 0
    fi
  done
  return 1
}
if ! wait_for 30 find_init; then
  fail "the container started (console: $scratch/console.log)"
  tail -n 20 "$scratch/console.log"
  finish || exit 1
fi
find_init
# Runs a command inside the container, with a clean environment.
in_ct() {
  nsenter -t "$cpid" -a env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 SYSTEMD_PAGER= \
    SYSTEMD_COLORS=0 "$@"
}
# Early in the boot systemctl answers "offline" (no /run/systemd/system yet) or cannot reach
# systemd at all (no /run/systemd/private yet); both were seen in clean CI runs. Ask until
# systemd answers, then wait for the boot to finish.
systemd_answers() {
  local state
  state=$(in_ct systemctl is-system-running 2>&1 || true)
  case $state in
    offline | *"Failed to connect"* | *"not been booted"* | "") return 1 ;;
    *) return 0 ;;
  esac
}
wait_for 60 systemd_answers || true
boot_state=$(in_ct timeout 60 systemctl is-system-running --wait 2>&1 || true)
case $boot_state in
  running | degraded) pass "the container booted ($boot_state)" ;;
  *)
    fail "the container booted (state: $boot_state)"
    in_ct systemctl --failed --no-pager || true
    finish || exit 1
    ;;
esac

# --- (c) install the .deb ----------------------------------------------------------------------
note "dpkg -i $(basename "$deb")"
check "dpkg -i installs the package with its dependencies already present" \
  in_ct dpkg -i "$ct_deb"
version_is_packaged() { [ "$(in_ct unifaas --version)" = "unifaas $version" ]; }
check "unifaas --version prints the package version ($version)" version_is_packaged
# shellcheck disable=SC2016 # ${Conffiles} is dpkg-query's field, not the shell's
is_conffile() { in_ct dpkg-query -W -f='${Conffiles}' unifaas | grep -q ' */etc/unifaas/unifaas.toml '; }
check "/etc/unifaas/unifaas.toml is a conffile" is_conffile
empty_registry() { [ -d "$root/var/lib/unifaas/functions" ] && [ -z "$(ls -A "$root/var/lib/unifaas/functions")" ]; }
check "the registry /var/lib/unifaas/functions exists and is empty" empty_registry
check "man unifaas(8) and unifaas.toml(5) are installed" \
  test -s "$root/usr/share/man/man8/unifaas.8.gz" -a -s "$root/usr/share/man/man5/unifaas.toml.5.gz"
# Every key documented in the default file, uncommented, must load: the comments stay true.
sed -E 's/^#([a-z-]+ = )/\1/' "$root/etc/unifaas/unifaas.toml" >"$root/root/all-keys.toml"
check "the default configuration loads with every documented key uncommented" \
  in_ct unifaas --config /root/all-keys.toml --cleanup-taps
rm -f "$root/root/all-keys.toml"

if $have_units; then
  check "unifaas.socket is enabled on first installation" socket_state enabled
  check "${sockets[*]} listening after installation" all_sockets_active
  check "unifaas-agent.socket is shipped but not started" agent_socket_off
  check "unifaas.service is not running after installation (socket activation)" \
    not in_ct systemctl is-active --quiet unifaas.service
else
  skip "systemd units: the package has no /usr/lib/systemd/system/unifaas.{socket,service} yet"
fi

# --- (d) a microVM function in the registry ----------------------------------------------------
kernel=$build/guest/kernel/vmlinux
initrd=$build/guest/hello-initramfs.cpio.gz
have_guest=false
if [ -f "$kernel" ] && [ -f "$initrd" ]; then
  have_guest=true
  fn=$root/var/lib/unifaas/functions/hello-vm
  mkdir -p "$fn"
  cp "$kernel" "$initrd" "$fn/"
  # As examples/registry/hello-vm, with the guest files next to function.toml. No accel key:
  # the container has no /dev/kvm, so "auto" must pick TCG by itself.
  cat >"$fn/function.toml" <<'EOF'
concurrent-requests = 4
keepalive = 30

[vm]
kernel = "vmlinux"
initrd = "hello-initramfs.cpio.gz"
memory = 128
cpus = 1
cmdline = "console=ttyS0 reboot=t panic=-1 cryptomgr.notests quiet unifaas.ip=%ip unifaas.gw=%gateway unifaas.mask=%netmask unifaas.callback=%callback"
hypervisor = { type = "microvm", pic = false, pit = false, rtc = true, acpi = true, auto-kernel-cmdline = false }
EOF
else
  skip "microVM function: $kernel or $initrd not built (target guest_images)"
fi

# --- (d2) an OCI function (crun exec'd by the daemon, no container engine) ---------------------
rootfs_dir=$build/examples/hello-rootfs
have_oci=false
if [ -x "$rootfs_dir/hello" ] && [ -x "$root/usr/bin/crun" ]; then
  have_oci=true
  fn=$root/var/lib/unifaas/functions/hello-oci
  mkdir -p "$fn"
  cp -a "$rootfs_dir" "$fn/rootfs"
  cat >"$fn/function.toml" <<'EOF'
concurrent-requests = 4
keepalive = 30

[container]
engine = "oci"
image = "rootfs"
entrypoint = ["/hello"]
memory = 64
EOF
else
  skip "OCI function: $rootfs_dir/hello not built (target example_images) or no crun in the tree"
fi

# --- (e) socket activation, invocation, D-Bus, scope, journal, stop ----------------------------
if $have_units && $have_guest; then
  note "invoking hello-vm through the socket"
  in_ct systemctl start unifaas.socket || true
  answer=$(in_ct curl -sS --max-time 90 http://127.0.0.1:8123/invoke/hello-vm/hello 2>&1 || true)
  invoked=false
  if [ "$answer" = "hello from unifaas" ]; then
    invoked=true
    pass "curl 127.0.0.1:8123/invoke/hello-vm/hello starts the daemon and a microVM: '$answer'"
  else
    fail "curl 127.0.0.1:8123/invoke/hello-vm/hello answered '$answer'"
    in_ct journalctl -u 'unifaas*' --no-pager -n 30 | sed 's/^/    | /'
  fi
  check "unifaas.service was activated by the connection" \
    in_ct systemctl is-active --quiet unifaas.service

  # The instance's scope, D-Bus entry and place in the slice exist only when it came up.
  if $invoked; then
    # hello-vm's scope: unifaas-hello\x2dvm-<id>.scope (hello-oci's spare has one too)
    scope=$(in_ct systemctl list-units --plain --no-legend --type=scope 'unifaas-*' | awk '{ print $1 }' |
      grep -F 'x2dvm-' | head -n1 || true)
    if [ -n "$scope" ]; then
      pass "the instance runs in a transient scope: $scope"
    else
      fail "the instance runs in a transient scope (systemctl list-units 'unifaas-*' shows none)"
    fi

    if $have_bus; then
      instances=$(in_ct busctl call org.unifaas /org/unifaas org.unifaas.Manager1 ListInstances 2>&1 || true)
      # busctl prints the scope name with its backslash escaped: compare without backslashes.
      if grep -q '"hello-vm"' <<<"$instances" && [ -n "$scope" ] &&
        grep -qF "${scope//\\/}" <<<"${instances//\\/}"; then
        pass "busctl ListInstances shows the instance of hello-vm with its scope"
      else
        fail "busctl ListInstances shows the instance of hello-vm with its scope: $instances"
      fi
    else
      skip "D-Bus: the package has no /usr/share/dbus-1/system.d/org.unifaas.conf yet"
    fi

    slice_status=$(in_ct systemctl status unifaas.slice --no-pager 2>&1 || true)
    if [ -n "$scope" ] && grep -qF "$scope" <<<"$slice_status"; then
      pass "systemctl status unifaas.slice shows the scope"
    else
      fail "systemctl status unifaas.slice shows the scope"
      printf '%s\n' "$slice_status" | head -n 20 | sed 's/^/    | /'
    fi
  else
    skip "scope, busctl ListInstances and unifaas.slice checks: no instance (the invocation failed)"
  fi

  journal=$(in_ct journalctl UNIFAAS_FUNCTION=hello-vm --no-pager -q -o cat 2>&1 || true)
  if [ -n "$journal" ]; then
    pass "journalctl UNIFAAS_FUNCTION=hello-vm finds $(wc -l <<<"$journal") lines"
  else
    fail "journalctl UNIFAAS_FUNCTION=hello-vm finds the function's lines"
  fi

  # The packaged unit's sandboxing must let the daemon run crun: namespaces, mounts, a veth in
  # a network namespace of its own, the instance in its scope.
  if $have_oci; then
    note "invoking hello-oci (crun under the packaged unit)"
    answer=$(in_ct curl -sS --max-time 30 http://127.0.0.1:8123/invoke/hello-oci/hello 2>&1 || true)
    if [ "$answer" = "hello from unifaas" ]; then
      pass "curl 127.0.0.1:8123/invoke/hello-oci/hello is answered by crun's container: '$answer'"
      # The instance names itself in /echo; its scope is unifaas-hello\x2doci-<id>.scope (the
      # function name systemd-escaped). Spares made ahead have scopes of their own.
      oci_id=$(in_ct curl -sS --max-time 30 http://127.0.0.1:8123/invoke/hello-oci/echo 2>&1 |
        sed -n 's/^instance: //p')
      oci_scope="unifaas-hello\\x2doci-$oci_id.scope"
      oci_scope_active() { [ -n "$oci_id" ] && in_ct systemctl is-active --quiet "$oci_scope"; }
      check "the OCI instance ($oci_id) runs in its transient scope $oci_scope" oci_scope_active
      hello_in_scope() { in_ct systemctl status "$oci_scope" --no-pager | grep -q '/hello'; }
      check "... and the function's process /hello is in it" hello_in_scope
      # The daemon made a spare (crun create, held in its scope) while hello-vm booted: the
      # invocation started it.
      from_spare() {
        in_ct curl -sS --max-time 10 http://127.0.0.1:8123/metrics |
          grep -F 'unifaas_cold_starts_total{function="hello-oci",kind="spare"} 1'
      }
      check "... started from a spare created ahead (/metrics kind=\"spare\")" from_spare
      # Its shim (unifaas-oci-shim, the init's parent) stays in the service's cgroup: it is not
      # charged to the instance's memory limit.
      shim_outside_scope() {
        in_ct systemctl status unifaas.service --no-pager -l | grep -qF -- "unifaas-oci-shim" &&
          in_ct systemctl status unifaas.service --no-pager -l | grep -qF -- "$oci_id/init.pid" &&
          ! in_ct systemctl status "$oci_scope" --no-pager -l | grep -qF -- "unifaas-oci-shim"
      }
      check "... its shim runs in unifaas.service, not in the instance's scope" shim_outside_scope
    else
      fail "curl 127.0.0.1:8123/invoke/hello-oci/hello answered '$answer'"
      in_ct journalctl -u 'unifaas*' --no-pager -n 30 | sed 's/^/    | /'
    fi
  fi

  note "systemctl stop unifaas.service"
  check "systemctl stop unifaas.service" in_ct systemctl stop unifaas.service
  no_scopes() { [ -z "$(in_ct systemctl list-units --plain --no-legend --all --type=scope 'unifaas-*')" ]; }
  no_taps() { ! in_ct ip -o link show | grep -v ': lo:' | grep -q .; }
  no_qemu() { ! in_ct pgrep -f qemu-system >/dev/null; }
  check "after the stop no unifaas-*.scope unit is left" wait_for 15 no_scopes
  if ! no_scopes; then in_ct systemctl list-units --all --type=scope 'unifaas-*' | sed 's/^/    | /'; fi
  check "after the stop no tap is left (only lo)" wait_for 15 no_taps
  check "after the stop no qemu process is left" wait_for 15 no_qemu
  if $have_oci; then
    no_crun() { ! in_ct pgrep -f 'crun|/hello' >/dev/null; }
    # (the daemon keeps its namespaces bound under its runtime-dir, not /run/netns)
    no_netns() { ! in_ct grep -q ' nsfs ' /proc/self/mountinfo; }
    check "after the stop no crun or function process is left" wait_for 15 no_crun
    check "after the stop no network namespace of an OCI instance is left" wait_for 15 no_netns
  fi
  if ! no_taps; then in_ct ip -br link | sed 's/^/    | /'; fi
else
  skip "invocation, D-Bus, scope, journal and stop checks (need the units and the guest image)"
fi

# --- (f) upgrade keeps the configuration, purge removes everything -----------------------------
note "upgrade and purge"
conf=$root/etc/unifaas/unifaas.toml
printf '\n# edited by the e2e test\nlog-level = "debug"\n' >>"$conf"
edited=$(sha256sum <"$conf")
old_pid=
if $have_units; then
  # A running daemon gets the new binary: start one through the socket.
  in_ct curl -sS --max-time 30 http://127.0.0.1:8123/healthz >/dev/null 2>&1 || true
  old_pid=$(in_ct systemctl show -P MainPID unifaas.service)
  # An administrator's choice must survive upgrades too.
  in_ct systemctl disable --quiet unifaas.socket
fi
check "installing the same .deb again (upgrade) succeeds without questions" \
  in_ct env DEBIAN_FRONTEND=noninteractive dpkg -i "$ct_deb"
conf_untouched() { [ "$(sha256sum <"$conf")" = "$edited" ]; }
check "the upgrade left the edited /etc/unifaas/unifaas.toml untouched" conf_untouched
if $have_units; then
  check "the upgrade kept unifaas.socket disabled as the administrator left it" \
    not in_ct systemctl is-enabled --quiet unifaas.socket
  restarted() {
    local pid
    pid=$(in_ct systemctl show -P MainPID unifaas.service)
    echo "MainPID before $old_pid, after $pid"
    [ "$old_pid" != 0 ] && [ "$pid" != 0 ] && [ "$pid" != "$old_pid" ]
  }
  check "the upgrade restarted the running daemon" restarted
  in_ct systemctl enable --quiet unifaas.socket
fi

check "dpkg --purge unifaas" in_ct dpkg --purge unifaas
leftovers=$(in_ct find / \( -path /proc -o -path /sys -o -path /dev \) -prune -o \
  -name '*unifaas*' ! -path "$ct_deb" -print 2>&1 || true)
if [ -z "$leftovers" ]; then
  pass "after the purge no file named *unifaas* is left (binary, /etc, /var/lib, units, links)"
else
  fail "after the purge files are left: $(tr '\n' ' ' <<<"$leftovers")"
fi
unit_files=$(in_ct systemctl list-unit-files --no-legend 'unifaas*' 2>&1 || true)
units=$(in_ct systemctl list-units --all --plain --no-legend 'unifaas*' 2>&1 || true)
if [ -z "$unit_files$units" ]; then
  pass "after the purge systemd knows no unifaas unit (list-unit-files, list-units --all)"
else
  fail "after the purge systemd still lists: $unit_files $units"
fi
check "after the purge no unifaas process runs" not in_ct pgrep unifaas

# --- (g) the .rpm: same files, intended scriptlets ---------------------------------------------
note "the .rpm"
rpm_root=$scratch/rpm-root
mkdir -p "$rpm_root"
# --noscripts: the scriptlets need a shell and systemd, which the empty root has not; they are
# compared with packaging/rpm/ below and run in the container after that.
check "rpm -i --root SCRATCH --nodeps --noscripts installs the .rpm" \
  rpm -i --root "$rpm_root" --nodeps --noscripts "$rpm_file"
# Paths with their type (d or f for anything else), without rpm's database (Debian's rpm keeps
# it in ~/.rpmdb).
rpm_listing() {
  (cd "$rpm_root" && find . -mindepth 1 \( -path ./root -o -path ./var/lib/rpm -o -path ./usr/lib/sysimage \) \
    -prune -o \( -type d -printf 'd %P\n' \) -o -printf 'f %P\n')
}
deb_listing() {
  dpkg-deb --fsys-tarfile "$deb" | tar -tv | awk '{ t = substr($1, 1, 1); print (t == "d" ? "d" : "f"), $6 }' |
    sed -E 's| \./| |; s|/$||' | grep -v '^d $'
}
# What a package holds for itself: its files, and the directories named after it. Shared
# directories (/usr/share/man, /var/lib, ...) belong to other packages. Documentation differs by
# convention: /usr/share/doc/unifaas/{copyright,changelog.Debian.gz} vs. a %license file.
own_paths() { awk '$1 == "f" || $2 ~ /(^|\/)unifaas(\/|$)/ { print "/" $2 }' | grep -v -e '^/usr/share/doc/unifaas' -e '^/usr/share/licenses/unifaas' | sort; }
deb_own=$(deb_listing | own_paths)
rpm_own=$(rpm_listing | own_paths)
if [ -n "$deb_own" ] && [ "$deb_own" = "$rpm_own" ]; then
  pass "the .rpm installs what the .deb does ($(wc -l <<<"$deb_own") paths besides the docs)"
else
  fail "the .rpm and the .deb install different paths (< deb, > rpm):"
  diff <(echo "$deb_own") <(echo "$rpm_own") | sed 's/^/    | /'
fi
docs_by_convention() {
  has_file /usr/share/doc/unifaas/copyright && has_file /usr/share/doc/unifaas/changelog.Debian.gz &&
    [ -f "$rpm_root/usr/share/licenses/unifaas/LICENSE" ] &&
    rpm -qp --qf '[%{FILEFLAGS:fflags} %{FILENAMES}\n]' "$rpm_file" | grep -qx 'l /usr/share/licenses/unifaas/LICENSE'
}
check "the .deb has copyright and changelog.Debian.gz, the .rpm a %license file" docs_by_convention
only_conf_is_config() {
  [ "$(rpm -qp --qf '[%{FILEFLAGS:fflags} %{FILENAMES}\n]' "$rpm_file" | grep '^[a-z]*c[a-z]* ')" = 'cn /etc/unifaas/unifaas.toml' ]
}
check "in the .rpm only /etc/unifaas/unifaas.toml is configuration, %config(noreplace)" only_conf_is_config
weak_deps() { rpm -qp --recommends "$rpm_file" | grep -q qemu && rpm -qp --recommends "$rpm_file" | grep -q docker; }
check "the .rpm recommends QEMU and a Docker engine" weak_deps
scriptlet_is() { diff -B <(rpm -qp --qf "%{$1}\n" "$rpm_file") "$2"; }
for pair in POSTIN:post PREUN:preun POSTUN:postun; do
  name=${pair#*:}
  check "the .rpm's %$name scriptlet is packaging/rpm/$name.sh" \
    scriptlet_is "${pair%%:*}" "$source_dir/packaging/rpm/$name.sh"
done
no_other_scriptlets() {
  [ "$(rpm -qp --qf '%{PREIN}|%{PRETRANS}|%{POSTTRANS}' "$rpm_file")" = '(none)|(none)|(none)' ] &&
    [ -z "$(rpm -qp --triggers "$rpm_file")" ]
}
check "the .rpm has no %pre, %pretrans, %posttrans or triggers" no_other_scriptlets

# The scriptlets against the container's systemd, as rpm runs them: payload, %post 1; then
# %preun 0, files removed, %postun 0.
if $have_units; then
  rpm_listing | awk '$1 == "f" { print $2 }' >"$scratch/rpm-files"
  (cd "$rpm_root" && cpio -pdm --quiet "$root" <"$scratch/rpm-files")
  for tag in POSTIN:post PREUN:preun POSTUN:postun; do
    rpm -qp --qf "%{${tag%%:*}}\n" "$rpm_file" >"$root/root/${tag#*:}.sh"
  done
  check "rpm %post 1 (first installation) succeeds" in_ct sh -e /root/post.sh 1
  # (systemctl is-active with several units succeeds when any is active)
  enabled_not_started() { socket_state enabled && ! in_ct systemctl is-active --quiet "${sockets[@]}"; }
  check "after rpm %post unifaas.socket is enabled, no socket started (RPM convention)" enabled_not_started
  in_ct systemctl start unifaas.socket || true
  check "rpm %preun 0 (removal) succeeds" in_ct sh -e /root/preun.sh 0
  stopped_disabled() { socket_state disabled && ! in_ct systemctl is-active --quiet "${sockets[@]}"; }
  check "after rpm %preun unifaas.socket is disabled, no socket active" stopped_disabled
  while read -r f; do rm -f "$root/$f"; done <"$scratch/rpm-files"
  for d in etc/unifaas var/lib/unifaas/functions var/lib/unifaas usr/share/licenses/unifaas; do
    rmdir "$root/$d" 2>/dev/null || true
  done
  check "rpm %postun 0 succeeds" in_ct sh -e /root/postun.sh 0
  no_unit_files() { [ -z "$(in_ct systemctl list-unit-files --no-legend 'unifaas*')" ]; }
  check "after the rpm-style removal systemd knows no unifaas unit file" no_unit_files
else
  skip "rpm scriptlets in the container (no units in the package yet)"
fi

note "done"
finish
