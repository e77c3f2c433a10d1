#!/usr/bin/env bash
# tests/private-host.sh CMD [ARG...]: runs CMD (as root) on a private copy of the host's
# accounts, so that the users the tests create (useradd, chpasswd) never reach the host.
#
# CMD runs in its own mount namespace (unshare --mount --propagation private) in which:
# - /etc is a copy of the host's /etc, bound over it whole: a directory bind, so useradd's
#   rename of passwd+ / shadow+ onto passwd / shadow stays inside the copy;
# - the copy's /etc/default/useradd puts new home folders in a private folder (HOME=), and
#   TRUID_PRIVATE_HOST names that folder's parent, for ensure_user (tests/common/logins.rs),
#   which refuses to add a user anywhere else;
# - /var/mail is an empty private folder, the login records (lastlog, faillog, wtmp, btmp)
#   private copies: useradd resets a new uid's lastlog and faillog entries, sshd and su
#   write wtmp and btmp.
# - nscd's socket folder, when there is one, is an empty folder: a running nscd answers from
#   the host's files, so the copy's users would not be found (glibc then reads the files).
# /home is left as it is (the checkout or cargo may live there): no home folder goes there.
# All of it lives on a tmpfs of CMD's namespace, gone when CMD ends, whatever its result (even
# if this script is killed); CMD's exit status is the script's.
# Nested `unshare --mount` (the tests' own private PAM stacks) works inside.
set -euo pipefail

if [ $# -eq 0 ]; then
  echo "usage: $0 CMD [ARG...]   (e.g. sudo $0 cargo test --test real_logins)" >&2
  exit 2
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "private-host: run as root (sudo $0 ...): it mounts a private copy of /etc." >&2
  exit 1
fi
if [ -n "${TRUID_PRIVATE_HOST:-}" ]; then
  # Already inside one: a second copy would hide the first one's users.
  exec "$@"
fi

root=$(mktemp -d /tmp/truid-private-host.XXXXXX)
# Only an empty folder is the host's: everything goes on a tmpfs mounted over it inside CMD's
# namespace, which disappears with the namespace however the run ends (kill -9 included).
trap 'rmdir "$root" 2>/dev/null || true' EXIT
# Other users must reach their home folders in there (sshd and su run as them).
chmod 0755 "$root"

# CMD leads its own process group (setsid), so that a signal to this script (Ctrl-C, a CI
# timeout) ends all of CMD, not only its first process; and it is sent SIGTERM if this script
# dies without passing a signal on (setpriv --pdeathsig).
TRUID_PRIVATE_HOST="$root" setsid setpriv --pdeathsig TERM \
  unshare --mount --propagation private -- sh -c '
  set -e
  root=$TRUID_PRIVATE_HOST
  mount -t tmpfs -o mode=0755 truid-private-host "$root"
  cp -a /etc "$root/etc"
  mkdir -m 0755 "$root/home" "$root/nscd" "$root/mail"
  if [ -d /var/mail ]; then
    chmod --reference=/var/mail "$root/mail"
    chown --reference=/var/mail "$root/mail"
  fi
  # useradd -m reads HOME= here; the last line wins.
  echo "HOME=$root/home" >>"$root/etc/default/useradd"
  for f in /var/log/lastlog /var/log/faillog /var/log/wtmp /var/log/btmp; do
    if [ -f "$f" ]; then
      cp -a "$f" "$root/${f##*/}"
      mount --bind "$root/${f##*/}" "$f"
    fi
  done
  mount --bind "$root/etc" /etc
  if [ -d /var/mail ]; then mount --bind "$root/mail" /var/mail; fi
  if [ -d /run/nscd ]; then mount --bind "$root/nscd" /run/nscd; fi
  export TRUID_PRIVATE_HOST
  exec "$@"
' sh "$@" &
child=$!
trap 'kill -TERM -- "-$child" 2>/dev/null || true' INT TERM HUP
status=0
# A trapped signal ends `wait` early: wait again until CMD is gone.
while :; do
  wait "$child" && status=0 || status=$?
  kill -0 "$child" 2>/dev/null || break
done
exit "$status"
