#!/usr/bin/env bash
# Builds the SELinux policy module pam_truid.pp from pam_truid.te, .fc and .if with the
# distribution's policy devel Makefile:
#   RHEL, Fedora:   dnf install selinux-policy-devel      (/usr/share/selinux/devel/Makefile)
#   Debian, Ubuntu: apt-get install selinux-policy-dev    (the same path, refpolicy's headers)
#
#   packaging/selinux/build.sh [OUTDIR]     default OUTDIR: packaging/out/selinux
#
# The sources are copied to a scratch folder: the Makefile writes tmp/ and the .pp where it
# runs. SELINUX_DEVEL_MAKEFILE overrides the Makefile's path.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here/../out/selinux}

die() { echo "selinux/build.sh: $*" >&2; exit 1; }

makefile=${SELINUX_DEVEL_MAKEFILE:-}
if [ -z "$makefile" ]; then
    for m in /usr/share/selinux/devel/Makefile /usr/share/selinux/default/include/Makefile \
        /usr/share/selinux/targeted/include/Makefile; do
        [ -f "$m" ] && { makefile=$m; break; }
    done
fi
[ -n "$makefile" ] && [ -f "$makefile" ] ||
    die "no policy devel Makefile (RHEL/Fedora: dnf install selinux-policy-devel; Debian: apt-get install selinux-policy-dev)"
command -v checkmodule >/dev/null || die "checkmodule is missing (package checkpolicy)"
command -v make >/dev/null || die "make is missing"

scratch=$(mktemp -d "${TMPDIR:-/tmp}/pam_truid-selinux.XXXXXX")
trap 'rm -rf "$scratch"' EXIT
cp "$here/pam_truid.te" "$here/pam_truid.fc" "$here/pam_truid.if" "$scratch/"
# Warnings are errors: a deprecated or unknown interface would build here and fail elsewhere.
(cd "$scratch" && make -s -f "$makefile" pam_truid.pp) > "$scratch/make.log" 2>&1 || {
    cat "$scratch/make.log" >&2
    die "make -f $makefile pam_truid.pp failed"
}
if grep -qiE 'warning|error' "$scratch/make.log"; then
    cat "$scratch/make.log" >&2
    die "the policy build printed warnings"
fi
mkdir -p "$out"
cp "$scratch/pam_truid.pp" "$out/pam_truid.pp"
cp "$here/pam_truid.if" "$out/pam_truid.if"
echo "selinux/build.sh: $out/pam_truid.pp (with $makefile)"
