#!/usr/bin/env bash
# A login verified end to end, on this machine, against the tru.ID emulator:
# enrolment with a QR code, the PAM prompt through real libpam, the verdicts, the log lines.
# Run as root from the repository: sudo tests/demo.sh   (installs what it needs first)
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

tests/setup.sh
say "Building pam_truid.so, truid-pam and truid-emulator"
cargo build --quiet --workspace
MOD=$PWD/target/debug/libpam_truid.so
CLI=$PWD/target/debug/truid-pam
EMU=$PWD/target/debug/truid-emulator

T=$(mktemp -d /tmp/pam_truid-demo.XXXXXX)
chmod 700 "$T"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$T"
}
trap cleanup EXIT

# The module asks NSS for every user and refuses a name it does not know. The demo's users
# (alice, bob) exist only for the demo's own logins and enroll: nss_wrapper (libnss-wrapper)
# gives those processes the host's accounts plus these two; the host is not changed.
{ cat /etc/passwd; printf 'alice:x:64101:64100::/nonexistent:/usr/sbin/nologin\nbob:x:64102:64100::/nonexistent:/usr/sbin/nologin\n'; } >"$T/passwd"
{ cat /etc/group; echo "truid-demo:x:64100:"; } >"$T/group"
export NSS_WRAPPER_PASSWD="$T/passwd" NSS_WRAPPER_GROUP="$T/group"

# Polls (bounded) until a file contains a pattern.
wait_for() {
  local file=$1 pattern=$2
  for _ in $(seq 100); do
    grep -q -- "$pattern" "$file" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "demo: timed out waiting for '$pattern' in $file" >&2
  cat "$file" >&2 || true
  exit 1
}

say "Starting the tru.ID emulator (HTTPS with its own CA, on a free loopback port)"
"$EMU" --listen 127.0.0.1:0 --cert-dir "$T/certs" --issuer-name "pam_truid demo" >"$T/ready.json" 2>"$T/emulator.log" &
pids+=($!)
wait_for "$T/ready.json" base_url
field() { sed -n "s/.*\"$1\":\"\([^\"]*\)\".*/\1/p" "$T/ready.json"; }
BASE=$(field base_url)
CA=$(field ca_file)
echo "emulator at $BASE, CA in $CA"
phone_code() { # the code the user's authenticator app shows now (+offset steps of 30 s)
  curl -fsS --cacert "$CA" "$BASE/_emulator/factors/$1/code?offset=${2:-0}" | sed -n 's/.*"code":"\([0-9]*\)".*/\1/p'
}

CFG=$T/pam_truid.toml
cat >"$CFG" <<EOF
# What an administrator writes to /etc/security/pam_truid.toml, pointed at the emulator.
[api]
base_url = "$BASE"
client_id = "$(field client_id)"
client_secret = "$(field client_secret)"
ca_file = "$CA"
timeout = 5
token_cache = "$T/cache"
# The local agent's socket: used once an agent listens there (below), direct until then.
agent = "$T/agent/agent.sock"

[login]
failmode = "secure"
tries = 3

[users]
EOF
chmod 600 "$CFG"

say "truid-pam check: is everything the module needs in place?"
"$CLI" --config "$CFG" check

say "truid-pam enroll alice: create the factor, show the QR code, activate it with the first code"
mkfifo "$T/code-in"
LD_PRELOAD=libnss_wrapper.so "$CLI" --config "$CFG" enroll alice --phone +447700900000 <"$T/code-in" >"$T/enroll.out" 2>&1 &
enroll_pid=$!
exec 3>"$T/code-in"
wait_for "$T/enroll.out" "enter this key by hand"
cat "$T/enroll.out"
FACTOR=$(sed -n 's/^Factor \([0-9a-f-]*\) created.*/\1/p' "$T/enroll.out")
FIRST=$(phone_code "$FACTOR")
echo "(the phone shows $FIRST; typing it)"
echo "$FIRST" >&3
exec 3>&-
wait "$enroll_pid"
tail -n 1 "$T/enroll.out"
echo "--- [users] of the config now:"
sed -n '/^\[users\]/,$p' "$CFG"

say "A PAM stack with the module (real libpam through pam_wrapper, service truid-demo)"
mkdir -p "$T/pamd"
# `debug` adds a line per login: HTTP requests sent, and whether they went through the agent.
printf 'auth required %s config=%s syslog_socket=%s debug\n' "$MOD" "$CFG" "$T/log.sock" >"$T/pamd/truid-demo"
printf 'auth required pam_deny.so\naccount required pam_deny.so\n' >"$T/pamd/other"
cat "$T/pamd/truid-demo"
socat -u UNIX-RECV:"$T/log.sock" OPEN:"$T/syslog.txt",creat,append &
pids+=($!)
wait_for_socket() { for _ in $(seq 100); do [ -S "$T/log.sock" ] && return 0; sleep 0.1; done; exit 1; }
wait_for_socket
login() { LD_PRELOAD="libpam_wrapper.so libnss_wrapper.so" PAM_WRAPPER=1 PAM_WRAPPER_SERVICE_DIR="$T/pamd" pamtester truid-demo alice authenticate; }

# The enrolment spent the current code; a code is good once, so the phone shows the next one.
CODE=$(phone_code "$FACTOR")
[ "$CODE" = "$FIRST" ] && CODE=$(phone_code "$FACTOR" 1)
say "Login as alice with the code the phone shows ($CODE)"
echo "$CODE" | login && echo ">>> verdict: logged in"

say "Login as alice with wrong codes"
printf '000000\n111111\nabc\n' | login || echo ">>> verdict: refused"

say "Starting the local agent (truid-pam agent): it keeps the TLS connection and the token"
"$CLI" agent --socket "$T/agent/agent.sock" >"$T/agent.out" 2>&1 &
pids+=($!)
wait_for "$T/agent.out" "listening on"
cat "$T/agent.out"
# A second user, seeded at the emulator as a phone would have been enrolled, for a fresh code.
BOB=$(curl -fsS --cacert "$CA" -X POST "$BASE/_emulator/seed" -d '{"external_user_id":"bob","type":"TOTP"}' | sed -n 's/.*"factor_id":"\([^"]*\)".*/\1/p')
sed -i "/^\[users\]/a bob = \"$BOB\"" "$CFG"
BOB_CODE=$(phone_code "$BOB")
say "Login as bob through the agent ($BOB_CODE): no TLS handshake in the login process"
echo "$BOB_CODE" | LD_PRELOAD="libpam_wrapper.so libnss_wrapper.so" PAM_WRAPPER=1 PAM_WRAPPER_SERVICE_DIR="$T/pamd" pamtester truid-demo bob authenticate && echo ">>> verdict: logged in"

say "Login while tru.ID is down (emulator stopped, failmode = \"secure\")"
kill "${pids[0]}"; wait "${pids[0]}" 2>/dev/null || true
echo "123456" | login || echo ">>> verdict: refused"

say "What the module logged (syslog authpriv: one outcome line per login, and the debug line)"
wait_for "$T/syslog.txt" unavailable_denied
# Datagrams arrive back to back; each starts with its <priority>.
sed 's/<[0-9]*>/\n/g' "$T/syslog.txt" | grep -v '^$'
say "Demo done"
