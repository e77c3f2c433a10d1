# %postun of pam_truid: on erase ($1 = 0), not on upgrade, remove what the module and
# truid-pam made at run time. A changed /etc/security/pam_truid.toml is kept by rpm
# as pam_truid.toml.rpmsave.
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
fi
if [ "$1" = 0 ]; then
    rm -f /etc/security/.pam_truid.toml.lock
    rm -rf /run/pam_truid /run/pam_truid-public
    # The SELinux policy module (installed by %post at priority 200). The recovery codes in
    # /var/lib/pam_truid and a kept pam_truid.toml.rpmsave stay: relabelled, as their type
    # is gone with the module.
    if command -v semodule >/dev/null 2>&1 && [ -f /etc/selinux/config ]; then
        semodule -X 200 -r pam_truid >/dev/null 2>&1 || :
        if [ -e /sys/fs/selinux/enforce ] && command -v restorecon >/dev/null 2>&1; then
            restorecon -R /var/lib/pam_truid /etc/security/pam_truid.toml.rpmsave >/dev/null 2>&1 || :
        fi
    fi
elif [ -d /run/systemd/system ]; then
    # An upgrade, as %systemd_postun_with_restart: a running agent takes the new
    # truid-pam (modules skip an agent of another protocol version).
    systemctl try-restart pam_truid-agent.service >/dev/null 2>&1 || :
fi
