# %preun of pam_truid, as %systemd_preun: on erase ($1 = 0), not on upgrade, disable and
# stop the agent before its binary goes.
if [ "$1" = 0 ] && command -v systemctl >/dev/null 2>&1; then
    systemctl --no-reload disable pam_truid-agent.service >/dev/null 2>&1 || :
    if [ -d /run/systemd/system ]; then
        systemctl stop pam_truid-agent.service >/dev/null 2>&1 || :
    fi
fi
