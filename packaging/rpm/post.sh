# %post of the unifaas .rpm ($1: 1 = first installation, 2 or more = upgrade).
# What %systemd_post does, written out (CPack scripts get no rpm macros), except that the socket
# is enabled outright instead of following presets, so both packages behave the same: unifaas is
# reached through unifaas.socket (which pulls in unifaas-callback.socket); they start the daemon
# on the first connection, unifaas.service itself is not enabled. Following the RPM convention
# nothing is started here: `systemctl start unifaas.socket` (or a reboot) does.
# Enabling works without a running systemd (image builds); runtime actions need
# /run/systemd/system. Nothing here may fail the transaction.

# Makes the system bus re-read its policy (dbus-daemon and dbus-broker both answer ReloadConfig).
reload_bus() {
    [ -S /run/dbus/system_bus_socket ] || return 0
    if command -v busctl >/dev/null 2>&1; then
        busctl --system --timeout=10 call org.freedesktop.DBus /org/freedesktop/DBus \
            org.freedesktop.DBus ReloadConfig >/dev/null 2>&1 || true
    elif command -v dbus-send >/dev/null 2>&1; then
        dbus-send --system --type=method_call --reply-timeout=10000 \
            --dest=org.freedesktop.DBus / org.freedesktop.DBus.ReloadConfig >/dev/null 2>&1 || true
    fi
}

if [ "$1" -eq 1 ] && command -v systemctl >/dev/null 2>&1; then
    systemctl --no-reload enable unifaas.socket >/dev/null 2>&1 || true
fi
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || true
fi
reload_bus
exit 0
