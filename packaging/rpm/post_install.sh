# %post of pam_truid: the folders of /usr/lib/tmpfiles.d/pam_truid.conf (the token cache,
# and the agent's public socket's, which the unit's agent cannot create under
# ProtectSystem=strict).
# No PAM stack is changed: add the module with authselect or by hand, see pam_truid(8).

# SELinux (RHEL, Fedora): the policy module first, so that the folders below are made with
# its labels, on every install and upgrade (-i replaces the module at the same priority, 200
# as for the distribution's own packages). Only where semodule and a policy are installed;
# semodule loads the new policy when SELinux is on. Never fatal: logins then fail with AVC
# denials, which truid-pam check and pam_truid(8) explain.
if command -v semodule >/dev/null 2>&1 && [ -f /etc/selinux/config ]; then
    semodule -X 200 -i /usr/share/selinux/packages/pam_truid.pp ||
        echo "pam_truid: semodule could not install the SELinux policy module /usr/share/selinux/packages/pam_truid.pp" >&2
fi
# The recovery codes' folder, root's alone, labelled pam_truid_var_lib_t by the module.
[ -d /var/lib/pam_truid ] || install -d -m 0700 -o root -g root /var/lib/pam_truid || :
if command -v systemd-tmpfiles >/dev/null 2>&1; then
    systemd-tmpfiles --create pam_truid.conf || :
fi
# pam_truid-agent.service as %systemd_post does it: on a first install ($1 = 1) the
# distribution's preset policy decides whether it is enabled (Fedora and RHEL: not
# unless listed); nothing is started. Enable it with: systemctl enable --now pam_truid-agent
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
fi
if [ "$1" = 1 ] && command -v systemctl >/dev/null 2>&1; then
    systemctl --no-reload preset pam_truid-agent.service >/dev/null 2>&1 || :
fi
# The labels of what the policy names (rpm laid the files down before the module existed).
if [ -e /sys/fs/selinux/enforce ] && command -v restorecon >/dev/null 2>&1; then
    restorecon -R /usr/bin/truid-pam /etc/security/pam_truid.toml /run/pam_truid /run/pam_truid-public /var/lib/pam_truid \
        >/dev/null 2>&1 || :
fi
