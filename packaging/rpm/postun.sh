# %postun of the unifaas .rpm ($1: 0 = removal, 1 or more = upgrade).
# daemon-reload and a bus reload so systemd and D-Bus see the changed or removed unit and
# policy files; on upgrade what %systemd_postun_with_restart does: restart the daemon if it
# runs, so it uses the new binary. RPM has no purge: the registry /var/lib/unifaas/functions
# stays when it holds functions.

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

if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || true
    if [ "$1" -ge 1 ]; then
        systemctl try-restart unifaas.service >/dev/null 2>&1 || true
    fi
fi
reload_bus
exit 0
