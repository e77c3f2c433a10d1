#!/usr/bin/env bash
# Builds the packages: man pages (scdoc), release binaries, then the .deb (cargo deb) and
# the .rpm (cargo generate-rpm). Run from anywhere; works at the repository root with the
# default target folder and with CARGO_TARGET_DIR set.
#
#   packaging/build.sh            everything; the packages are copied to packaging/out/
#   packaging/build.sh --man      only the man pages (packaging/out/man/*.gz), which is
#                                 what a bare `cargo deb` / `cargo generate-rpm` needs first
#                                 (and `cargo generate-rpm` packaging/selinux/build.sh's .pp)
#
# Needs: scdoc, gzip, cargo-deb, cargo-generate-rpm, and for the .rpm's SELinux policy module
# the policy devel files (selinux-policy-dev and checkpolicy on Debian, selinux-policy-devel on
# RHEL); tests/setup.sh and tests/packages.sh install them. The .deb does not carry the policy.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
out=packaging/out

die() { echo "build.sh: $*" >&2; exit 1; }

man_pages() {
    command -v scdoc >/dev/null || die "scdoc is missing (apt-get install scdoc)"
    mkdir -p "$out/man"
    for src in packaging/man/*.scd; do
        name=$(basename "$src" .scd)        # e.g. pam_truid.8
        scdoc < "$src" > "$out/man/$name.tmp"
        # -n: no name or time stamp in the gzip header, so the output is reproducible.
        gzip -9n -c "$out/man/$name.tmp" > "$out/man/$name.gz"
        rm -f "$out/man/$name.tmp"
    done
    echo "build.sh: man pages in $out/man/: $(cd "$out/man" && echo *.gz)"
}

man_pages
[ "${1:-}" = "--man" ] && exit 0
[ $# -eq 0 ] || die "unknown argument $1 (use --man or nothing)"

command -v cargo-deb >/dev/null || die "cargo-deb is missing (cargo install cargo-deb --locked)"
command -v cargo-generate-rpm >/dev/null ||
    die "cargo-generate-rpm is missing (cargo install cargo-generate-rpm --locked)"

# The target folder as cargo sees it (CARGO_TARGET_DIR, .cargo/config, or ./target).
target=$(cargo metadata --no-deps --format-version 1 |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
[ -n "$target" ] || die "cannot find cargo's target folder"
export CARGO_TARGET_DIR="$target"

# The module's multiarch folder: Cargo.toml names x86_64's; the arm64 variant moves it.
variant=()
if command -v dpkg-architecture >/dev/null; then
    case "$(dpkg-architecture -qDEB_HOST_MULTIARCH)" in
        x86_64-linux-gnu) ;;
        aarch64-linux-gnu) variant=(--variant arm64) ;;
        *) die "no .deb layout for $(dpkg-architecture -qDEB_HOST_MULTIARCH) in Cargo.toml" ;;
    esac
fi

# One release build of the module, its direct client library and truid-pam, used by both
# packages.
cargo build --release --locked -p pam_truid -p pam_truid_module -p pam_truid_direct

# The .rpm's SELinux policy module, built from packaging/selinux/ (packaging/out/selinux/).
packaging/selinux/build.sh "$out/selinux"

rm -f "$target"/debian/libpam-truid_*.deb "$target"/generate-rpm/pam_truid-*.rpm
cargo deb --no-build --locked -p pam_truid "${variant[@]}"   # strips what it packs
# cargo generate-rpm packs the files as they are: strip them like cargo deb did (the
# module keeps its dynamic symbols, pam_sm_*, and the library its pam_truid_direct_v1_*).
strip --strip-unneeded "$target/release/libpam_truid.so" "$target/release/libpam_truid_direct.so" \
    "$target/release/truid-pam"
cargo generate-rpm -p .

deb=$(ls "$target"/debian/libpam-truid_*.deb)
rpm=$(ls "$target"/generate-rpm/pam_truid-*.rpm)
cp "$deb" "$rpm" "$out/"
echo "build.sh: $root/$out/$(basename "$deb")"
echo "build.sh: $root/$out/$(basename "$rpm")"
