# %postun of pam_truid: on erase ($1 = 0), not on upgrade, remove what the module and
# truid-pam made at run time. A changed /etc/security/pam_truid.toml is kept by rpm
# as pam_truid.toml.rpmsave.
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
fi
if [ "$1" = 0 ]; then
    rm -f /etc/security/.pam_truid.toml.lock
    rm -rf /run/pam_truid
elif [ -d /run/systemd/system ]; then
    # An upgrade, as %systemd_postun_with_restart: a running agent takes the new
    # truid-pam (modules skip an agent of another protocol version).
    systemctl try-restart pam_truid-agent.service >/dev/null 2>&1 || :
fi
