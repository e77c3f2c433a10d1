#!/usr/bin/env bash
# The benchmark of issue 9 (run by hand, not in CI): whole pamtester logins with pam_truid.so
# next to pam_permit.so alone and pam_google_authenticator.so, pairwise in one run, against the
# tru.ID emulator on loopback over TLS with latency 0; then 200 concurrent logins, the emulator's
# own throughput, the floor (one TLS handshake + two round trips outside PAM), dlopen time,
# threads and sockets left after a login, and instructions per login under callgrind. Every
# pam_truid figure is given twice: the module on its own, and through the local agent.
#
#   sudo tests/bench.sh [--logins N] [--concurrent N] [--no-callgrind]   (BENCH_KEEP=1 keeps the work folder)
#
# With --wan, the WAN table of issue 15 instead: the module on its own and through the agent,
# pointed at emulators through truid-netem (RTT, idle FIN, silent drop), first/warm/idle logins,
# typing times, link faults, against the issue's targets (tests/emulator/src/bin/truid-bench/wan.rs):
#
#   sudo tests/bench.sh --wan [--rtts 0,30,100,300] [--link-rtt 100] [--quick]   (--quick: no 10 min idle, about 3 min)
#
# With --recovery, only the cost of one recovery-code check (issue 16): argon2id at the stored
# parameters, a wrong code against 10 codes, a right code found and struck off under the lock
# (examples/recovery_cost.rs, release mode; median and max over N runs, default 25). The full
# run above ends with the same table.
#
#   sudo tests/bench.sh --recovery [--runs N]
#
# Installs what it needs (pamtester, libpam-wrapper, libpam-google-authenticator, valgrind),
# builds in release mode, prints a Markdown table. Everything it starts is killed by PID at exit.
set -euo pipefail
cd "$(dirname "$0")/.."

wan=
recovery=
for a in "$@"; do
  [ "$a" = "--wan" ] && wan=1
  [ "$a" = "--recovery" ] && recovery=1
done

if [ "$(id -u)" -ne 0 ]; then
  echo "bench: run as root (sudo $0): configs must be root-owned, and it installs packages." >&2
  exit 1
fi

TARGET=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
if [ -n "$recovery" ]; then
  runs=25
  while [ $# -gt 0 ]; do
    case "$1" in
      --recovery) ;;
      --runs) runs=${2:?--runs needs a number}; shift ;;
      *) echo "bench: --recovery takes only --runs N" >&2; exit 2 ;;
    esac
    shift
  done
  echo "bench: building the recovery-code bench (release)" >&2
  cargo build --quiet --release -p pam_truid --example recovery_cost
  "$TARGET/release/examples/recovery_cost" "$runs"
  echo
  echo "command: sudo tests/bench.sh --recovery --runs $runs"
  exit 0
fi

packages=(libpam0g-dev pamtester libpam-wrapper libpam-google-authenticator valgrind ca-certificates)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "bench: installing ${missing[*]}"
  apt-get -o DPkg::Lock::Timeout=300 update -qq
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq \
    --no-install-recommends "${missing[@]}" >/dev/null
fi

echo "bench: building (release)" >&2
# Two builds, the module's last and alone: built with the emulator in one cargo invocation, the
# direct client library's tokio would get the emulator's "signal" feature (Cargo unifies
# features), whose process-wide socket pair the shipped library does not have.
cargo build --quiet --release -p truid-emulator
# The recovery-code bench is an example, which brings the dev-dependencies (the emulator's
# features) with it: built before the module too.
cargo build --quiet --release -p pam_truid --example recovery_cost
cargo build --quiet --release -p pam_truid -p pam_truid_module -p pam_truid_direct
REL=$TARGET/release

W=$(mktemp -d /tmp/pam_truid-bench.XXXXXX)
chmod 700 "$W"
emu_pid=
agent_pid=
cleanup() {
  for pid in $agent_pid $emu_pid; do
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  [ -n "${BENCH_KEEP:-}" ] || rm -rf "$W"
}
trap cleanup EXIT

# The module is loaded from a root-owned copy (what libpam would load from /lib/security).
install -m 0644 "$REL/libpam_truid.so" "$W/pam_truid.so"
# Its direct client library beside it, where the module looks for it (src/agent/direct.rs).
install -m 0644 "$REL/libpam_truid_direct.so" "$W/libpam_truid_direct.so"

# The WAN bench starts an emulator and a proxy per scenario itself (in its own process).
if [ -z "$wan" ]; then
  "$REL/truid-emulator" --listen 127.0.0.1:0 --cert-dir "$W/certs" --latency-ms 0 \
    >"$W/ready.json" 2>"$W/emulator.log" &
  emu_pid=$!
  for _ in $(seq 100); do
    grep -q base_url "$W/ready.json" 2>/dev/null && break
    sleep 0.1
  done
  grep -q base_url "$W/ready.json" || { echo "bench: the emulator did not start" >&2; cat "$W/emulator.log" >&2; exit 1; }
fi

# The local agent (truid-pam agent), as systemd would run it; its socket in the work folder.
# AGENT_WRAPPER (e.g. "valgrind --tool=callgrind") runs it under a profiler.
${AGENT_WRAPPER:-} "$REL/truid-pam" agent --socket "$W/agent/agent.sock" >"$W/agent.out" 2>"$W/agent.log" &
agent_pid=$!
for _ in $(seq 300); do
  grep -q "listening on" "$W/agent.out" 2>/dev/null && break
  sleep 0.1
done
grep -q "listening on" "$W/agent.out" || { echo "bench: the agent did not start" >&2; cat "$W/agent.log" >&2; exit 1; }

echo "bench: $(nproc) CPUs, $(uname -r), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')" >&2
if [ -n "$wan" ]; then
  args=()
  for a in "$@"; do [ "$a" = "--wan" ] || args+=("$a"); done
  "$REL/truid-bench" wan --module "$W/pam_truid.so" --work "$W" --agent "$W/agent/agent.sock" "${args[@]}"
  echo
  echo "command: sudo tests/bench.sh $*"
  exit 0
fi
SECDIR=$(dirname "$(dpkg -L libpam-modules | grep '/pam_permit\.so$' | head -n 1)")
"$REL/truid-bench" all --ready "$W/ready.json" --module "$W/pam_truid.so" --work "$W" \
  --secdir "$SECDIR" --agent "$W/agent/agent.sock" --agent-pid "$agent_pid" "$@"
echo
"$REL/examples/recovery_cost" 25
echo
echo "command: sudo tests/bench.sh $*"
