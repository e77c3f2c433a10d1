# %post of pam_truid: the token cache folder (/usr/lib/tmpfiles.d/pam_truid.conf).
# No PAM stack is changed: add the module with authselect or by hand, see pam_truid(8).
if command -v systemd-tmpfiles >/dev/null 2>&1; then
    systemd-tmpfiles --create pam_truid.conf || :
fi
