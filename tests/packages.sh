#!/usr/bin/env bash
# CI test of the packages (issue 7). As root, on Debian or Ubuntu:
#   - installs the tools when missing (apt: rpm lintian scdoc dpkg-dev jq, plus what
#     tests/setup.sh installs; cargo: cargo-deb, cargo-generate-rpm),
#   - builds the .deb and the .rpm with packaging/build.sh,
#   - checks their file lists, modes, owners, conffiles and dependencies, and the .rpm's
#     SELinux policy module, authselect profile and their scriptlets (issue 18),
#   - runs lintian on the .deb (errors fail; warnings are listed),
#   - installs the .deb (without a running systemd here, its postinst only enables the
#     agent's unit), then: the sshd login test against the INSTALLED module, the installed
#     truid-pam check against the emulator, and the installed agent started by hand: its
#     socket, a login that can reach tru.ID only through it, its public socket (a user's
#     truid-pam enroll reaches it and is refused as [enroll] self is off), and its stop on
#     SIGTERM; the unit's public socket, the folders it may write and its syscall filter,
#   - enables the pam-auth-update profile in a private mount namespace (the host's
#     /etc/pam.d is never written) to check where its line lands,
#   - upgrades (same version again, then a -2 revision) with a changed config: kept,
#   - apt-get remove keeps the config, purge removes it,
#   - /etc/pam.d is byte-for-byte the same before install, after install, after remove
#     and after purge.
#
# It really installs and removes libpam-truid. It refuses to run when libpam-truid is
# already installed; an /etc/security/pam_truid.toml from a source install is moved
# aside and put back at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
started=$(date +%s)

fail() { echo "packages: FAIL: $*" >&2; exit 1; }
note() { echo "packages: $*"; }
secs() { echo $(( $(date +%s) - $1 )); }

[ "$(id -u)" -eq 0 ] || fail "run as root: it installs and removes packages"
if dpkg-query -W -f='${Status}' libpam-truid 2>/dev/null | grep -q "installed"; then
    fail "libpam-truid is installed on this machine; remove it first (this test installs and purges it)"
fi

# --------------------------------------------------------------------------------------
# Tools
t=$(date +%s)
tests/setup.sh
apt_tools=(rpm rpm2cpio cpio lintian scdoc dpkg-dev jq)
missing=()
for p in "${apt_tools[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    note "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
note "apt tools ready in $(secs "$t") s"
t=$(date +%s)
for tool in cargo-deb cargo-generate-rpm; do
    command -v "$tool" >/dev/null || cargo install --locked "$tool"
done
note "cargo tools ready in $(secs "$t") s"

# --------------------------------------------------------------------------------------
# State of the host, and cleanup

work=$(mktemp -d /tmp/pam_truid-packages.XXXXXX)
emu_pid=""
agent_pid=""
installed=0
moved_config=""
cleanup() {
    local rc=$?
    set +e
    if [ -n "$agent_pid" ]; then
        kill "$agent_pid" 2>/dev/null
        wait "$agent_pid" 2>/dev/null
    fi
    if [ -n "$emu_pid" ]; then
        kill "$emu_pid" 2>/dev/null
        wait "$emu_pid" 2>/dev/null
    fi
    # Installed, or removed with its config left ("config-files", e.g. after a failed check
    # following remove): purged either way, so that the host keeps no trace.
    if [ "$installed" = 1 ] && dpkg-query -W -f='${Status}' libpam-truid 2>/dev/null | grep -qE 'installed|config-files|half'; then
        echo "packages: purging libpam-truid after a failure" >&2
        DEBIAN_FRONTEND=noninteractive apt-get purge -y -qq libpam-truid >/dev/null 2>&1 || true
    fi
    if [ -n "$moved_config" ]; then
        mv -f "$moved_config" /etc/security/pam_truid.toml
    fi
    rm -rf "$work"
    exit $rc
}
trap cleanup EXIT

if [ -e /etc/security/pam_truid.toml ]; then
    moved_config=$(mktemp /etc/security/.pam_truid.toml.packages-test.XXXXXX)
    mv -f /etc/security/pam_truid.toml "$moved_config"
    note "moved the existing /etc/security/pam_truid.toml aside until the end"
fi

pam_sums() { (cd /etc/pam.d && find . -type f -print0 | sort -z | xargs -0 sha256sum); }
pam_sums > "$work/pam.before"
assert_pam_untouched() {
    pam_sums > "$work/pam.now"
    diff -u "$work/pam.before" "$work/pam.now" || fail "/etc/pam.d changed $1"
    note "ok: /etc/pam.d unchanged $1"
}

# --------------------------------------------------------------------------------------
# Build
t=$(date +%s)
packaging/build.sh
note "packages built in $(secs "$t") s"
version=$(cargo metadata --no-deps --format-version 1 | jq -r '.packages[] | select(.name == "pam_truid") | .version')
multiarch=$(dpkg-architecture -qDEB_HOST_MULTIARCH)
deb=$(ls packaging/out/libpam-truid_"$version"-1_*.deb)
rpm=$(ls packaging/out/pam_truid-"$version"-1.*.rpm)
module=/usr/lib/$multiarch/security/pam_truid.so
target=$(cargo metadata --no-deps --format-version 1 | jq -r .target_directory)

# --------------------------------------------------------------------------------------
# The .deb's contents

dpkg-deb -c "$deb" > "$work/deb.list"
note "$deb:"
sed 's/^/    /' "$work/deb.list"
# MODE PATH: each must be in the list, owned by root/root.
deb_expect=(
    "-rw-r--r-- ./usr/lib/$multiarch/security/pam_truid.so"
    "-rw-r--r-- ./usr/lib/$multiarch/security/libpam_truid_direct.so"
    "-rwxr-xr-x ./usr/bin/truid-pam"
    "-rw------- ./etc/security/pam_truid.toml"
    "-rw-r--r-- ./usr/share/pam-configs/truid"
    "-rw-r--r-- ./usr/lib/tmpfiles.d/pam_truid.conf"
    "-rw-r--r-- ./usr/lib/systemd/system/pam_truid-agent.service"
    "-rw-r--r-- ./usr/share/man/man8/pam_truid.8.gz"
    "-rw-r--r-- ./usr/share/man/man5/pam_truid.toml.5.gz"
    "-rw-r--r-- ./usr/share/man/man1/truid-pam.1.gz"
    "-rw-r--r-- ./usr/share/doc/libpam-truid/copyright"
    "-rw-r--r-- ./usr/share/doc/libpam-truid/changelog.Debian.gz"
    "-rw-r--r-- ./usr/share/doc/libpam-truid/examples/sshd_config.d/pam_truid.conf"
    "-rw-r--r-- ./usr/share/lintian/overrides/libpam-truid"
)
for f in conf/pam.d/*; do
    deb_expect+=("-rw-r--r-- ./usr/share/doc/libpam-truid/examples/pam.d/$(basename "$f")")
done
for e in "${deb_expect[@]}"; do
    mode=${e%% *}
    path=${e#* }
    awk -v m="$mode" -v p="$path" '$1 == m && ($2 == "root/root" || $2 == "0/0") && $6 == p { found = 1 } END { exit !found }' \
        "$work/deb.list" || fail "deb: missing $path with mode $mode root/root"
done
# Nothing in the host's PAM stacks, nothing under /usr/lib64 or target paths.
! grep -qE ' \./etc/pam\.d/| \./usr/lib64/' "$work/deb.list" || fail "deb: ships files in /etc/pam.d or /usr/lib64"
n_files=$(grep -c '^-' "$work/deb.list")
[ "$n_files" -eq "${#deb_expect[@]}" ] || fail "deb: $n_files files, expected ${#deb_expect[@]} (list above)"
note "ok: deb file list and modes (${#deb_expect[@]} files)"

dpkg-deb --ctrl-tarfile "$deb" | tar -x -C "$work" ./conffiles ./postinst ./prerm ./postrm ./control
[ "$(cat "$work/conffiles")" = "/etc/security/pam_truid.toml" ] ||
    fail "deb conffiles: $(cat "$work/conffiles")"
depends=$(dpkg-deb -f "$deb" Depends)
note "deb Depends: $depends"
for d in libc6 libpam0g; do
    echo ", $depends" | grep -qE "(^|, )$d( |,|$)" || fail "deb: Depends lacks $d"
done
# Only what the binaries link: libc6 and libpam0g (the unwinder is linked in statically, build.rs).
extra=$(echo "$depends" | tr ',' '\n' | sed 's/^ *//; s/ .*//' | grep -vxE 'libc6|libpam0g' || true)
[ -z "$extra" ] || fail "deb: unexpected dependencies: $extra"
[ "$(dpkg-deb -f "$deb" Package)" = libpam-truid ] || fail "deb: package name"
for s in postinst prerm postrm; do
    sh -n "$work/$s" || fail "deb: $s is not valid sh"
    grep -q "pam_truid-agent.service" "$work/$s" || fail "deb: $s does not handle pam_truid-agent.service"
done
note "ok: deb conffiles, maintainer scripts, Depends"

# --------------------------------------------------------------------------------------
# The .rpm's contents

rpm -qlpv "$rpm" > "$work/rpm.list"
note "$rpm:"
sed 's/^/    /' "$work/rpm.list"
rpm_expect=(
    "-rwxr-xr-x /usr/lib64/security/pam_truid.so"
    "-rwxr-xr-x /usr/lib64/security/libpam_truid_direct.so"
    "-rwxr-xr-x /usr/bin/truid-pam"
    "-rw------- /etc/security/pam_truid.toml"
    "-rw-r--r-- /usr/lib/tmpfiles.d/pam_truid.conf"
    "-rw-r--r-- /usr/lib/systemd/system/pam_truid-agent.service"
    "-rw-r--r-- /usr/share/man/man8/pam_truid.8.gz"
    "-rw-r--r-- /usr/share/man/man5/pam_truid.toml.5.gz"
    "-rw-r--r-- /usr/share/man/man1/truid-pam.1.gz"
    "-rw-r--r-- /usr/share/doc/pam_truid/examples/sshd_config.d/pam_truid.conf"
    "-rw-r--r-- /usr/share/selinux/packages/pam_truid.pp"
    "-rw-r--r-- /usr/share/selinux/devel/include/contrib/pam_truid.if"
)
for f in conf/pam.d/*; do
    rpm_expect+=("-rw-r--r-- /usr/share/doc/pam_truid/examples/pam.d/$(basename "$f")")
done
for f in packaging/authselect/*; do
    rpm_expect+=("-rw-r--r-- /usr/share/authselect/vendor/pam_truid/$(basename "$f")")
done
for e in "${rpm_expect[@]}"; do
    mode=${e%% *}
    path=${e#* }
    awk -v m="$mode" -v p="$path" '$1 == m && $3 == "root" && $4 == "root" && $NF == p { found = 1 } END { exit !found }' \
        "$work/rpm.list" || fail "rpm: missing $path with mode $mode root root"
done
n_files=$(grep -c '^-' "$work/rpm.list")
[ "$n_files" -eq "${#rpm_expect[@]}" ] || fail "rpm: $n_files files, expected ${#rpm_expect[@]} (list above)"
# %config(noreplace): flags "c" (config) and "n" (noreplace).
flags=$(rpm -qp --qf '[%{FILENAMES} %{FILEFLAGS:fflags}\n]' "$rpm" | awk '$1 == "/etc/security/pam_truid.toml" { print $2 }')
case "$flags" in *c*n* | *n*c*) ;; *) fail "rpm: pam_truid.toml flags \"$flags\", want %config(noreplace)" ;; esac
[ "$(rpm -qp --qf '%{NAME}' "$rpm")" = pam_truid ] || fail "rpm: package name"
note "rpm Requires: $(rpm -qpR "$rpm" | tr '\n' ' ')"
rpm -qpR "$rpm" | grep -q '^libpam\.so\.0' || fail "rpm: Requires lacks libpam.so.0"
# The agent's unit: preset on install, disabled and stopped on erase (as %systemd_* do).
rpm -qp --scripts "$rpm" > "$work/rpm.scripts"
grep -q 'preset pam_truid-agent.service' "$work/rpm.scripts" || fail "rpm: %post does not preset the agent's unit"
awk '/^preuninstall scriptlet/ { p = 1 } /^postuninstall scriptlet/ { p = 0 } p && /disable pam_truid-agent.service/ { ok = 1 }
     END { exit !ok }' "$work/rpm.scripts" || fail "rpm: %preun does not disable the agent's unit"
# %preun on erase warns about stacks that still name the module, and names them; on
# upgrade ($1 = 1) it says nothing. Run here on a private /etc/pam.d, with a stand-in
# systemctl (the host's agent unit is not this scriptlet's to disable here).
awk '/^preuninstall scriptlet/ { p = 1; next } /^[a-z]+ scriptlet/ { p = 0 } p' "$work/rpm.scripts" > "$work/preun.sh"
mkdir -p "$work/preun/pam.d" "$work/preun/bin"
printf '#!/bin/sh\nexit 0\n' > "$work/preun/bin/systemctl"
chmod +x "$work/preun/bin/systemctl"
printf 'auth required pam_unix.so\n# auth required pam_truid.so (a comment)\n' > "$work/preun/pam.d/plain"
printf 'auth requisite pam_truid.so\n' > "$work/preun/pam.d/guarded"
unshare --mount --propagation private sh -c '
    mount --bind "$1/preun/pam.d" /etc/pam.d
    PATH="$1/preun/bin:$PATH" sh "$1/preun.sh" 0 2> "$1/preun.erase"
    PATH="$1/preun/bin:$PATH" sh "$1/preun.sh" 1 2> "$1/preun.upgrade"
' _ "$work"
grep -q 'WARNING: these PAM stacks still use pam_truid.so' "$work/preun.erase" || fail "rpm %preun: no warning: $(cat "$work/preun.erase")"
grep -q '/etc/pam.d/guarded:1:auth requisite pam_truid.so' "$work/preun.erase" || fail "rpm %preun: the stack is not named: $(cat "$work/preun.erase")"
! grep -q 'plain' "$work/preun.erase" || fail "rpm %preun: named a stack whose only mention is a comment"
[ ! -s "$work/preun.upgrade" ] || fail "rpm %preun warned on upgrade: $(cat "$work/preun.upgrade")"
note "ok: rpm file list, modes, %config(noreplace) (${#rpm_expect[@]} files), %preun names stacks that still use the module"

# SELinux and authselect (issue 18): the policy module in the .rpm is the one built from
# packaging/selinux, the profile is packaging/authselect's, %post installs the module and
# relabels, %postun removes it on erase only. The scriptlets run here in a private mount
# namespace (tmpfs over /run, /var/lib, /etc/security, /etc/selinux and /sys/fs, with an
# SELinux "enforce" file) with stand-ins that log how semodule, restorecon, systemctl and
# systemd-tmpfiles were called: nothing of the host's is written.
mkdir -p "$work/rpmroot"
# (Debian's rpm2cpio exits 1 after writing a zstd payload whole; the cmp below checks it.)
(cd "$work/rpmroot" && { rpm2cpio "$repo/$rpm" || true; } | cpio -idm --quiet)
cmp -s "$work/rpmroot/usr/share/selinux/packages/pam_truid.pp" packaging/out/selinux/pam_truid.pp ||
    fail "rpm: pam_truid.pp is not the one packaging/selinux/build.sh built"
cmp -s "$work/rpmroot/usr/share/selinux/devel/include/contrib/pam_truid.if" packaging/selinux/pam_truid.if ||
    fail "rpm: pam_truid.if differs from packaging/selinux/pam_truid.if"
for f in packaging/authselect/*; do
    cmp -s "$work/rpmroot/usr/share/authselect/vendor/pam_truid/$(basename "$f")" "$f" || fail "rpm: authselect profile file $(basename "$f") differs"
done
rpm -qpR "$rpm" > "$work/rpm.requires"
grep -qx '(policycoreutils if selinux-policy)' "$work/rpm.requires" || fail "rpm: Requires lacks (policycoreutils if selinux-policy)"
awk '/^postinstall scriptlet/ { p = 1; next } /^[a-z]+ scriptlet/ { p = 0 } p' "$work/rpm.scripts" > "$work/post.sh"
awk '/^postuninstall scriptlet/ { p = 1; next } /^[a-z]+ scriptlet/ { p = 0 } p' "$work/rpm.scripts" > "$work/postun.sh"
mkdir -p "$work/se/bin"
for tool in semodule restorecon systemctl systemd-tmpfiles; do
    printf '#!/bin/sh\necho "%s $*" >> "$SCRIPTLET_LOG"\n' "$tool" > "$work/se/bin/$tool"
    chmod +x "$work/se/bin/$tool"
done
scriptlet() { # LOG SCRIPT ARG [noconfig]: runs a scriptlet in the private namespace
    : > "$work/se/$1"
    unshare --mount --propagation private bash -euc '
        for d in /run /var/lib /etc/security /etc/selinux /sys/fs; do mount -t tmpfs tmpfs "$d"; done
        mkdir /sys/fs/selinux
        echo 1 > /sys/fs/selinux/enforce
        [ "$4" = noconfig ] || printf "SELINUX=enforcing\nSELINUXTYPE=targeted\n" > /etc/selinux/config
        SCRIPTLET_LOG="$1" PATH="$2:$PATH" sh "$3" "$5" > "$1.out" 2>&1
        stat -c "%a %U" /var/lib/pam_truid >> "$1.out" 2>&1 || true
    ' _ "$work/se/$1" "$work/se/bin" "$work/$2" "${4:-}" "$3"
}
scriptlet post.install post.sh 1
scriptlet post.upgrade post.sh 2
scriptlet post.noselinux post.sh 1 noconfig
scriptlet postun.erase postun.sh 0
scriptlet postun.upgrade postun.sh 1
grep -qx 'semodule -X 200 -i /usr/share/selinux/packages/pam_truid.pp' "$work/se/post.install" ||
    fail "rpm %post: no semodule -i: $(cat "$work/se/post.install")"
grep -qx 'restorecon -R /usr/bin/truid-pam /etc/security/pam_truid.toml /run/pam_truid /run/pam_truid-public /var/lib/pam_truid' "$work/se/post.install" ||
    fail "rpm %post: no restorecon: $(cat "$work/se/post.install")"
# The module before the folders are made (so that they get its labels), the relabel last.
awk '/^semodule/ { s = NR } /^systemd-tmpfiles/ { t = NR } /^restorecon/ { r = NR } END { exit !(s && t && r && s < t && t < r) }' \
    "$work/se/post.install" || fail "rpm %post: order: $(cat "$work/se/post.install")"
grep -qx '700 root' "$work/se/post.install.out" || fail "rpm %post: /var/lib/pam_truid: $(cat "$work/se/post.install.out")"
grep -qx 'semodule -X 200 -i /usr/share/selinux/packages/pam_truid.pp' "$work/se/post.upgrade" || fail "rpm %post on upgrade: no semodule -i"
! grep -q '^semodule' "$work/se/post.noselinux" || fail "rpm %post without /etc/selinux/config ran semodule"
grep -qx 'semodule -X 200 -r pam_truid' "$work/se/postun.erase" || fail "rpm %postun on erase: no semodule -r: $(cat "$work/se/postun.erase")"
grep -q '^restorecon -R /var/lib/pam_truid' "$work/se/postun.erase" || fail "rpm %postun on erase: no relabel of what stays"
! grep -q '^semodule' "$work/se/postun.upgrade" || fail "rpm %postun on upgrade removed the policy module"
note "ok: rpm ships pam_truid.pp (as built), pam_truid.if and the authselect profile; %post semodule -i then restorecon, %postun semodule -r on erase only; Requires (policycoreutils if selinux-policy)"

# --------------------------------------------------------------------------------------
# lintian

lintian --tag-display-limit 0 --show-overrides "$deb" > "$work/lintian.out" 2>&1 || true
note "lintian:"
sed 's/^/    /' "$work/lintian.out"
if grep -q '^E: ' "$work/lintian.out"; then
    fail "lintian reported errors"
fi
note "ok: lintian: no errors, $(grep -c '^W: ' "$work/lintian.out" || true) warnings, $(grep -c '^O: ' "$work/lintian.out" || true) overridden (packaging/debian/lintian-overrides)"

# --------------------------------------------------------------------------------------
# Install

installed=1
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$repo/$deb" >/dev/null
[ -f "$module" ] || fail "$module missing after install"
[ -x /usr/bin/truid-pam ] || fail "/usr/bin/truid-pam missing after install"
[ "$(stat -c '%a %U %G' /etc/security/pam_truid.toml)" = "600 root root" ] ||
    fail "/etc/security/pam_truid.toml: $(stat -c '%a %U %G' /etc/security/pam_truid.toml)"
if command -v systemd-tmpfiles >/dev/null; then
    [ "$(stat -c '%a %U' /run/pam_truid)" = "700 root" ] || fail "/run/pam_truid not created 0700 root"
    # The public socket's folder: the unit's agent cannot make it (ProtectSystem=strict).
    [ "$(stat -c '%a %U %G' /run/pam_truid-public)" = "755 root root" ] ||
        fail "/run/pam_truid-public not created 0755 root root: $(stat -c '%a %U %G' /run/pam_truid-public 2>&1)"
fi
grep -qx truid /var/lib/pam/seen || fail "pam-auth-update did not register the profile"
assert_pam_untouched "by installing"

# The agent's unit: enabled by postinst through deb-systemd-helper, with or without systemd.
unit=/usr/lib/systemd/system/pam_truid-agent.service
wants=/etc/systemd/system/multi-user.target.wants/pam_truid-agent.service
[ "$wants" -ef "$unit" ] || fail "postinst did not enable $unit ($wants)"
# The agent holds every project's secret: no core file of it.
grep -qx 'LimitCORE=0' "$unit" || fail "$unit has no LimitCORE=0"
# Its public socket, at the path the module run without root and truid-pam enroll look at
# (src/config.rs), in the folder tmpfiles.d makes for it.
public=/run/pam_truid-public/agent.sock
grep -q "^pub const DEFAULT_PUBLIC_SOCKET: &str = \"$public\";" src/config.rs ||
    fail "src/config.rs: DEFAULT_PUBLIC_SOCKET is not $public"
grep -qx "ExecStart=/usr/bin/truid-pam agent --socket /run/pam_truid/agent.sock --public-socket $public" "$unit" ||
    fail "$unit: ExecStart does not give --public-socket $public"
grep -qx 'd /run/pam_truid-public 0755 root root -' /usr/lib/tmpfiles.d/pam_truid.conf ||
    fail "tmpfiles.d/pam_truid.conf does not make /run/pam_truid-public 0755 root"
# Under ProtectSystem=strict: the folders it writes besides its RuntimeDirectory (the public
# socket's, the config's for self-service enrolment, the recovery codes'), each "-" (a
# missing one must not keep the unit from starting).
grep -qx 'ProtectSystem=strict' "$unit" || fail "$unit: no ProtectSystem=strict"
rw=$(sed -n 's/^ReadWritePaths=//p' "$unit" | tr ' ' '\n' | LC_ALL=C sort | tr '\n' ' ')
[ "$rw" = "-/etc/security -/run/pam_truid-public -/var/lib/pam_truid " ] || fail "$unit: ReadWritePaths $rw"
# fchown (a rewritten config keeps its owner) comes back after ~@privileged took it: the
# order of the lines is what counts (systemd.exec(5), SystemCallFilter=).
awk '/^SystemCallFilter=@system-service$/ { a = NR } /^SystemCallFilter=~@privileged/ { d = NR } /^SystemCallFilter=@chown$/ { c = NR }
     END { exit !(a && d && c && a < d && d < c) }' "$unit" ||
    fail "$unit: SystemCallFilter=@chown is not after ~@privileged"
note "ok: the unit serves $public and may write /run/pam_truid-public, /etc/security and /var/lib/pam_truid, fchown allowed"
if command -v systemd-analyze >/dev/null; then
    systemd-analyze verify "$unit" > "$work/verify.out" 2>&1 ||
        fail "systemd-analyze verify $unit: $(cat "$work/verify.out")"
    [ ! -s "$work/verify.out" ] || fail "systemd-analyze verify $unit: $(cat "$work/verify.out")"
    note "ok: systemd-analyze verify $unit"
fi
if [ -d /run/systemd/system ]; then
    # A running systemd: postinst started it. Stopped here so the test runs its own below.
    systemctl is-active --quiet pam_truid-agent.service || fail "postinst did not start pam_truid-agent.service"
    systemctl stop pam_truid-agent.service
    note "ok: postinst enabled and started pam_truid-agent.service"
else
    note "ok: postinst enabled pam_truid-agent.service (no systemd running: not started)"
fi

# The shipped config is refused until filled in (empty client_id): the check says so.
if /usr/bin/truid-pam check > "$work/check.shipped" 2>&1; then
    fail "truid-pam check accepted the unfilled shipped config"
fi
grep -q 'client_id: is empty' "$work/check.shipped" || fail "check of the shipped config: $(cat "$work/check.shipped")"
note "ok: the shipped config is refused until filled in"

# --------------------------------------------------------------------------------------
# The sshd login test against the installed module

t=$(date +%s)
PAM_TRUID_MODULE="$module" tests/private-host.sh cargo test --locked --test real_logins ssh_key_then_code -- --nocapture
note "ok: sshd key + code login through $module ($(secs "$t") s)"

# --------------------------------------------------------------------------------------
# truid-pam check (installed) against the emulator

cargo build --locked -p truid-emulator
emulator="$target/debug/truid-emulator"
: > "$work/emu.out"
"$emulator" --listen 127.0.0.1:0 > "$work/emu.out" 2> "$work/emu.err" &
emu_pid=$!
ready=""
for _ in $(seq 600); do
    ready=$(head -n 1 "$work/emu.out" || true)
    [ -n "$ready" ] && break
    kill -0 "$emu_pid" 2>/dev/null || break
    sleep 0.1
done
[ -n "$ready" ] || fail "the emulator printed no ready line: $(cat "$work/emu.err")"
field() { echo "$ready" | jq -er ".$1"; }
base_url=$(field base_url)
ca_file=$(field ca_file)
# An enrolled user, so that check also looks at a factor.
factor=$(curl -sS --fail --cacert "$ca_file" -H 'content-type: application/json' \
    -d '{"external_user_id":"root","type":"TOTP"}' "$base_url/_emulator/seed" | jq -er .factor_id)
# The administrator's edit of the conffile: what upgrades must keep.
cat > /etc/security/pam_truid.toml <<EOF
# Edited by tests/packages.sh: the emulator.
[api]
base_url = "$base_url"
ca_file = "$ca_file"
client_id = "$(field client_id)"
client_secret = "$(field client_secret)"

[login]
failmode = "secure"

[users]
root = "$factor"
EOF
chown root:root /etc/security/pam_truid.toml
chmod 600 /etc/security/pam_truid.toml
/usr/bin/truid-pam check > "$work/check.out" 2>&1 || { cat "$work/check.out"; fail "truid-pam check against the emulator"; }
sed 's/^/    /' "$work/check.out"
# No agent yet, and nothing configured needs the public socket: said, not warned.
grep -q "^ok   public socket: no agent of root's serves $public" "$work/check.out" ||
    fail "truid-pam check without an agent: no ok line about $public"
grep -qx "ok   direct client: /usr/lib/$multiarch/security/libpam_truid_direct.so: root's, writable by root alone; logins that find no agent load it" "$work/check.out" ||
    fail "truid-pam check does not report the installed direct client library"
note "ok: installed truid-pam check against the emulator (the direct client library beside the module)"

# --------------------------------------------------------------------------------------
# The installed agent, started by hand, on the socket the config's default [api] agent names

sock=/run/pam_truid/agent.sock
mkfifo "$work/agent.fifo"
# As the unit starts it: with the public socket.
/usr/bin/truid-pam agent --socket "$sock" --public-socket "$public" > "$work/agent.fifo" 2> "$work/agent.err" &
agent_pid=$!
# Its ready lines, read from its stdout: EOF (it exited) or 30 s without them fail.
exec 3< "$work/agent.fifo"
agent_public=""
agent_ready=""
read -r -t 30 agent_public <&3 || true
read -r -t 30 agent_ready <&3 || true
[ "$agent_public" = "truid-pam agent: serving users on $public" ] ||
    fail "agent: first line \"$agent_public\": $(cat "$work/agent.err")"
[ "$agent_ready" = "truid-pam agent: listening on $sock" ] ||
    fail "agent: ready line \"$agent_ready\": $(cat "$work/agent.err")"
[ "$(stat -c '%F %a %U' "$sock")" = "socket 600 root" ] || fail "agent: $sock is $(stat -c '%F %a %U' "$sock")"
[ "$(stat -c '%a %U' /run/pam_truid)" = "700 root" ] || fail "agent: /run/pam_truid is $(stat -c '%a %U' /run/pam_truid)"
[ "$(stat -c '%F %a %U' "$public")" = "socket 666 root" ] || fail "agent: $public is $(stat -c '%F %a %U' "$public")"
[ "$(stat -c '%a %U' /run/pam_truid-public)" = "755 root" ] || fail "agent: /run/pam_truid-public is $(stat -c '%a %U' /run/pam_truid-public)"
socat -u /dev/null "UNIX-CONNECT:$sock" || fail "agent: $sock does not accept connections"
# A user reaches the public socket: truid-pam enroll run as nobody gets the agent's answer
# for [enroll] self, off in this config (MSG_SELF_OFF of src/agent/services.rs), which only
# the agent gives.
self_off=$(awk '/^pub const MSG_SELF_OFF: &str =$/ { getline; print }' src/agent/services.rs | sed 's/^ *"//; s/";$//')
[ -n "$self_off" ] || fail "no MSG_SELF_OFF in src/agent/services.rs"
if setpriv --reuid="$(id -u nobody)" --regid="$(id -g nobody)" --clear-groups \
    /usr/bin/truid-pam enroll < /dev/null > "$work/enroll.user" 2>&1; then
    fail "truid-pam enroll by nobody succeeded with [enroll] self off: $(cat "$work/enroll.user")"
fi
grep -qxF "$self_off" "$work/enroll.user" ||
    fail "truid-pam enroll by nobody: no refusal from the agent: $(cat "$work/enroll.user") / agent: $(cat "$work/agent.err")"
/usr/bin/truid-pam check > "$work/check.agent" 2>&1 || { cat "$work/check.agent"; fail "truid-pam check with the agent running"; }
grep -q "^ok   public socket: $public: root's agent serves users" "$work/check.agent" ||
    fail "truid-pam check with the agent running: $(grep 'public socket' "$work/check.agent")"
note "ok: the agent's public socket $public (0666, folder 0755): a user's truid-pam enroll reaches the agent and is refused ([enroll] self off); truid-pam check sees it served"
if /usr/bin/truid-pam agent --socket "$sock" > /dev/null 2> "$work/agent2.err"; then
    fail "a second agent started on $sock"
fi
grep -q 'another agent listens' "$work/agent2.err" || fail "second agent: $(cat "$work/agent2.err")"
note "ok: the installed agent listens on $sock (0600, folder 0700), a second one is refused"

# A login that can reach tru.ID only through the agent: truid-pam test (the module's flow
# and its agent-or-direct client) in a network namespace with no network. Pathname Unix
# sockets cross network namespaces; TCP to the emulator does not.
# The emulator accepts each time step's code once: each login takes the next step's.
totp() {
    curl -sS --fail --cacert "$ca_file" "$base_url/_emulator/factors/$factor/code?offset=$1" | jq -er .code
}
handshakes() { curl -sS --fail --cacert "$ca_file" "$base_url/_emulator/stats" | jq -er .tls_handshakes; }
totp 0 | unshare --net /usr/bin/truid-pam test root > "$work/test1.out" 2>&1 ||
    fail "login through the agent: $(cat "$work/test1.out") / agent: $(cat "$work/agent.err")"
grep -q 'PAM_SUCCESS: outcome=verified' "$work/test1.out" || fail "login through the agent: $(cat "$work/test1.out")"
# A second login reuses the agent's kept-alive connection: the only new TLS handshake is
# the one of curl asking for the count.
code=$(totp 1)
before=$(handshakes)
echo "$code" | unshare --net /usr/bin/truid-pam test root > "$work/test2.out" 2>&1 ||
    fail "second login through the agent: $(cat "$work/test2.out")"
grep -q 'PAM_SUCCESS: outcome=verified' "$work/test2.out" || fail "second login through the agent: $(cat "$work/test2.out")"
after=$(handshakes)
[ "$after" = $((before + 1)) ] || fail "the second login through the agent made $((after - before - 1)) new TLS handshakes"
note "ok: logins reach tru.ID through the agent, on its kept connection"

kill -TERM "$agent_pid"
agent_rc=0
wait "$agent_pid" || agent_rc=$?
agent_pid=""
exec 3<&-
[ "$agent_rc" = 0 ] || fail "agent: exit status $agent_rc on SIGTERM: $(cat "$work/agent.err")"
[ ! -e "$sock" ] || fail "agent: $sock left after SIGTERM"
[ ! -e "$public" ] || fail "agent: $public left after SIGTERM"
grep -q 'stopped by SIGTERM' "$work/agent.err" || fail "agent: $(cat "$work/agent.err")"
# No agent now: the same login goes direct, and so fails without a network.
if totp 0 | unshare --net /usr/bin/truid-pam test root > "$work/test3.out" 2>&1; then
    fail "a login without network succeeded with no agent running"
fi
grep -q 'outcome=unavailable_denied' "$work/test3.out" || fail "login without agent: $(cat "$work/test3.out")"
note "ok: the agent stops on SIGTERM (exit 0, socket removed); without it logins go direct"
edited=$(sha256sum < /etc/security/pam_truid.toml)

# --------------------------------------------------------------------------------------
# pam-auth-update with the profile on, in a private mount namespace: the host's
# /etc/pam.d, /var/lib/pam and debconf database are copies here, never written.

mkdir -p "$work/ns/pam.d" "$work/ns/varlibpam" "$work/ns/debconf"
cp -a /etc/pam.d/. "$work/ns/pam.d/"
cp -a /var/lib/pam/. "$work/ns/varlibpam/"
cp -a /var/cache/debconf/. "$work/ns/debconf/"
unshare --mount --propagation private bash -euc '
    mount --bind "$1/pam.d" /etc/pam.d
    mount --bind "$1/varlibpam" /var/lib/pam
    mount --bind "$1/debconf" /var/cache/debconf
    DEBIAN_FRONTEND=noninteractive pam-auth-update --enable truid
    cp /etc/pam.d/common-auth "$1/common-auth.enabled"
    DEBIAN_FRONTEND=noninteractive pam-auth-update --disable truid
    cp /etc/pam.d/common-auth "$1/common-auth.disabled"
' _ "$work/ns"
note "common-auth with the profile enabled:"
grep -v '^#' "$work/ns/common-auth.enabled" | grep . | sed 's/^/    /'
# The module line comes after pam_deny/pam_permit (the Additional block), as requisite.
awk '/pam_permit\.so/ { permit = NR } /^auth[ \t]+requisite[ \t]+pam_truid\.so/ { truid = NR }
     END { exit !(permit && truid > permit) }' "$work/ns/common-auth.enabled" ||
    fail "profile: pam_truid.so is not a requisite line after pam_permit in common-auth"
! grep -q pam_truid "$work/ns/common-auth.disabled" || fail "profile: --disable left pam_truid in common-auth"
cmp -s "$work/ns/common-auth.disabled" /etc/pam.d/common-auth ||
    fail "profile: enable then disable did not give back the same common-auth"
assert_pam_untouched "by the profile test (private namespace)"

# --------------------------------------------------------------------------------------
# Upgrades keep the edited config

DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --reinstall \
    -o Dpkg::Options::=--force-confdef "$repo/$deb" >/dev/null
[ "$(sha256sum < /etc/security/pam_truid.toml)" = "$edited" ] || fail "reinstall replaced the edited config"
[ "$(stat -c '%a %U' /etc/security/pam_truid.toml)" = "600 root" ] || fail "reinstall changed the config's mode"
# A real upgrade: the same files as revision 2.
cargo deb --no-build -p pam_truid --deb-revision 2 -o "$work/" >/dev/null
deb2=$(ls "$work"/libpam-truid_"$version"-2_*.deb)
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    -o Dpkg::Options::=--force-confdef "$deb2" >/dev/null
[ "$(dpkg-query -W -f='${Version}' libpam-truid)" = "$version-2" ] || fail "upgrade to -2 did not happen"
[ "$wants" -ef "$unit" ] || fail "upgrade dropped the agent's enablement"
[ "$(sha256sum < /etc/security/pam_truid.toml)" = "$edited" ] || fail "upgrade replaced the edited config"
/usr/bin/truid-pam check > /dev/null || fail "truid-pam check after the upgrade"
assert_pam_untouched "by reinstall and upgrade"
note "ok: reinstall and upgrade kept the edited config"

# --------------------------------------------------------------------------------------
# remove keeps the config, purge removes it

# Removed while a stack still names the module (an administrator's own line): the prerm
# names that file and says what to do (on its stderr, which apt passes on with dpkg's
# output). On a private copy of /etc/pam.d: the host's is never written.
mkdir -p "$work/rm/pam.d"
cp -a /etc/pam.d/. "$work/rm/pam.d/"
printf 'auth required pam_unix.so\nauth requisite pam_truid.so\n' > "$work/rm/pam.d/truid-test-svc"
unshare --mount --propagation private bash -euc '
    mount --bind "$1/rm/pam.d" /etc/pam.d
    DEBIAN_FRONTEND=noninteractive apt-get remove -y -qq libpam-truid > "$1/remove.err" 2>&1
' _ "$work" || fail "apt-get remove: $(cat "$work/remove.err")"
note "apt-get remove said:"
sed 's/^/    /' "$work/remove.err"
grep -q 'WARNING: these PAM stacks still use pam_truid.so' "$work/remove.err" || fail "remove: no warning about the stack still naming the module"
grep -q '/etc/pam.d/truid-test-svc:2:auth requisite pam_truid.so' "$work/remove.err" || fail "remove: the warning does not name the stack"
grep -q 'delete each pam_truid.so line' "$work/remove.err" || fail "remove: the warning does not say what to do"
[ "$(grep -c 'pam_truid.so, which is being removed' "$work/remove.err")" = 1 ] || fail "remove: warned more than once"
! grep -q 'common-auth' "$work/remove.err" || fail "remove: named common-auth, which pam-auth-update cleans"
note "ok: removing the package while a stack names the module names that stack, loudly"
[ ! -e "$module" ] || fail "remove left $module"
[ ! -e /usr/bin/truid-pam ] || fail "remove left /usr/bin/truid-pam"
[ "$(sha256sum < /etc/security/pam_truid.toml)" = "$edited" ] || fail "remove changed or deleted the config"
[ ! -e "$unit" ] || fail "remove left $unit"
assert_pam_untouched "by remove"
DEBIAN_FRONTEND=noninteractive apt-get purge -y -qq libpam-truid >/dev/null
[ ! -e /etc/security/pam_truid.toml ] || fail "purge left /etc/security/pam_truid.toml"
[ ! -e /etc/security/.pam_truid.toml.lock ] || fail "purge left the lock file"
[ ! -e /run/pam_truid ] || fail "purge left /run/pam_truid"
[ ! -e /run/pam_truid-public ] || fail "purge left /run/pam_truid-public"
! grep -qx truid /var/lib/pam/seen || fail "purge left the profile in /var/lib/pam/seen"
left=$(find /etc/systemd/system /var/lib/systemd -name 'pam_truid-agent.service*' 2>/dev/null)
[ -z "$left" ] || fail "purge left the agent's unit state: $left"
dpkg-query -W libpam-truid >/dev/null 2>&1 && fail "dpkg still knows libpam-truid after purge"
installed=0
assert_pam_untouched "by purge"
note "ok: remove kept the config, purge removed it"

note "all package checks passed in $(secs "$started") s"
