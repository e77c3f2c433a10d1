# %preun of pam_truid, as %systemd_preun: on erase ($1 = 0), not on upgrade, disable and
# stop the agent before its binary goes.
if [ "$1" = 0 ] && command -v systemctl >/dev/null 2>&1; then
    systemctl --no-reload disable pam_truid-agent.service >/dev/null 2>&1 || :
    if [ -d /run/systemd/system ]; then
        systemctl stop pam_truid-agent.service >/dev/null 2>&1 || :
    fi
fi

# On erase, stacks in /etc/pam.d that still name the module: once the file is gone each of
# those services refuses every login ("Module is unknown"). Said loudly, with the fix; not
# refused (a failing %preun leaves rpm's database and dnf's transaction in a mess, and the
# fix is the same edit of /etc/pam.d either way). See pam_truid(8).
if [ "$1" = 0 ]; then
    stacks=$(grep -lsE '^[^#]*pam_truid\.so' /etc/pam.d/* || :)
    if [ -n "$stacks" ]; then
        {
            echo "pam_truid: WARNING: these PAM stacks still use pam_truid.so, which is being removed:"
            for f in $stacks; do
                grep -nE '^[^#]*pam_truid\.so' "$f" | sed "s|^|    $f:|"
            done
            echo "pam_truid: from now on these services refuse every login (\"Module is unknown\"),"
            echo "  root's too. Fix it now, from a root shell you keep open: delete each pam_truid.so line"
            echo "  above (or put back the copy saved before, e.g. /etc/pam.d/sshd.before-truid), or"
            echo "  reinstall pam_truid. Next time, remove the lines before removing the package."
        } >&2
    fi
fi
