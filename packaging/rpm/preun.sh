# %preun of the unifaas .rpm ($1: 0 = removal, 1 or more = upgrade).
# What %systemd_preun does, written out: on removal disable the units and stop the sockets, the
# daemon (which stops its instances) and the slice of the instances. Upgrades leave them alone;
# %postun restarts the daemon.
if [ "$1" -eq 0 ]; then
    if command -v systemctl >/dev/null 2>&1; then
        systemctl --no-reload disable unifaas.socket unifaas-agent.socket unifaas.service \
            >/dev/null 2>&1 || true
    fi
    if [ -d /run/systemd/system ]; then
        systemctl stop unifaas.socket unifaas-callback.socket unifaas-agent.socket \
            unifaas.service unifaas.slice \
            >/dev/null 2>&1 || true
    fi
fi
exit 0
