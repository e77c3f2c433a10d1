#!/usr/bin/env bash
# Installs what the tests and the demo need on a fresh Debian or Ubuntu machine (as root).
# Idempotent: a machine that has everything is left as it is.
set -euo pipefail

packages=(
  libpam0g-dev        # links the module and the test driver
  pamtester           # the demo's login; logins through the pam-auth-update profile (tests/real_logins.rs)
  libpam-wrapper      # PAM stacks from a folder, without touching /etc/pam.d
  openssh-server openssh-client sshpass   # real SSH logins
  sudo util-linux     # real sudo and su; unshare for private PAM stacks
  polkitd             # Debian's own /usr/lib/pam.d/polkit-1, which tests/real_logins.rs runs next to conf/pam.d/polkit-1
  bubblewrap
  ca-certificates curl socat   # the demo: control endpoint, syslog listener
  binutils valgrind g++   # nm/readelf for tests/exports.rs; tests/valgrind.sh; libFuzzer for tests/fuzz.sh
  libnss-wrapper gcc  # tests/names.rs: NSS from files and a case-insensitive NSS module built there
  iproute2 python3-minimal   # tests/faults.rs: a private network namespace where a user holds every local port
  selinux-policy-dev checkpolicy semodule-utils setools   # the .rpm's SELinux policy module: built by packaging/build.sh, checked by tests/selinux.sh
  i3lock xvfb xdotool   # tests/locker.rs: a real screen locker on a headless X server, typed at
)

if [ "$(id -u)" -ne 0 ]; then
  echo "setup: run as root (sudo $0): it installs packages, and the tests run PAM as root." >&2
  exit 1
fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  apt-get -o DPkg::Lock::Timeout=300 update -qq
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
mkdir -p /run/sshd

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo is missing. Install Rust (https://rustup.rs), then run this again." >&2
  exit 1
fi
