# %post of pam_truid: the token cache folder (/usr/lib/tmpfiles.d/pam_truid.conf).
# No PAM stack is changed: add the module with authselect or by hand, see pam_truid(8).
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
