#!/usr/bin/env bash
# Runs every cargo-fuzz target of fuzz/ for SECONDS each (CI: 60). Installs cargo-fuzz when it
# is missing. cargo-fuzz needs nightly flags (-Z sanitizer); on a stable toolchain they are
# allowed through RUSTC_BOOTSTRAP=1, which this script sets for its own builds only.
#
#   tests/fuzz.sh [SECONDS] [TARGET...]
# A crash stops the script with a non-zero status and the libFuzzer report; the input is in
# fuzz/artifacts/<target>/.
# Reproduce with: RUSTC_BOOTSTRAP=1 cargo fuzz run <target> fuzz/artifacts/<target>/<file>
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
shift || true
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz.sh: installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi
export RUSTC_BOOTSTRAP=1
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cargo fuzz list)
fi
# Seeds: the shipped example config and a few real answers, so the fuzzer starts from the
# shapes that matter.
mkdir -p fuzz/corpus/config fuzz/corpus/answers fuzz/corpus/code_input fuzz/corpus/sanitize
for f in packaging/*.toml conf/*.toml; do if [ -f "$f" ]; then cp "$f" fuzz/corpus/config/; fi; done
printf '[api]\nregion = "eu"\nclient_id = "c"\nclient_secret = "s"\n[login]\nfailmode = "safe"\ntries = 3\n[users]\nalice = "5995afaf-f5d1-47ab-b586-50ad46904eec"\n' > fuzz/corpus/config/minimal.toml
printf '%s' '{"challenge_id":"c-1","status":"VERIFIED"}' > fuzz/corpus/answers/challenge
printf '%s' '{"title":"Bad Request","detail":"invalid code","status":400}' > fuzz/corpus/answers/problem
printf '%s' '{"_embedded":{"factors":[{"factor_id":"5995afaf-f5d1-47ab-b586-50ad46904eec","status":"ACTIVE","type":"TOTP","external_user_id":"alice"}]}}' > fuzz/corpus/answers/factors
printf '\x01123456' > fuzz/corpus/code_input/right
printf '\x03abc\n12345\n123456' > fuzz/corpus/code_input/tries
printf '\x80hunter2123456' > fuzz/corpus/code_input/combined
printf '\x80hunter2ab2c-def3-ghjk' > fuzz/corpus/code_input/combined_recovery
printf '\x40a\x1b[2J"\\\xe2\x80\xae' > fuzz/corpus/sanitize/escapes
started=$(date +%s)
for t in "${targets[@]}"; do
  echo "fuzz.sh: $t for ${seconds} s"
  log="$(mktemp)"
  if ! cargo fuzz run "$t" -- -max_total_time="$seconds" -rss_limit_mb=2048 -max_len=65536 >"$log" 2>&1; then
    tail -n 80 "$log" >&2
    echo "fuzz.sh: $t crashed; the input is in fuzz/artifacts/$t/" >&2
    exit 1
  fi
  grep -E "^Done [0-9]+ runs|^#[0-9]+\s+DONE" "$log" | tail -n 1
  rm -f "$log"
done
echo "fuzz.sh: ${#targets[@]} targets, ${seconds} s each, no crash ($(( $(date +%s) - started )) s)"
