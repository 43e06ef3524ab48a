#!/usr/bin/env bash
# The whole test suite: formatting and lints, unit and property tests, the
# CLI tests, fuzzing of the receive path (a stable mutation run, then
# libFuzzer through cargo-fuzz), and the e2e tests against real BIRD, FRR,
# GoBGP and ExaBGP in network namespaces.
# Needs root (network namespaces); installs the peers and cargo-fuzz if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
bash e2e/install.sh
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
cargo fmt --check
cargo clippy --all-targets -- -D warnings
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# Every test binary runs even after one fails; the closing line counts them all.
status=0
# Each API stand-in appends what vipd asked of it; the RBAC audit below
# reads the whole suite's record.
rm -f target/tmp/rbac-used.log
VIPD_FUZZ_SECS="${VIPD_FUZZ_SECS:-20}" cargo test --release --no-fail-fast 2>&1 | tee "$log" || status=1
cargo test --release --test manifests -- --ignored --exact rbac_grants_exactly_what_the_suite_used 2>&1 | tee -a "$log" || status=1
passed=$(grep -Eo '[0-9]+ passed' "$log" | awk '{s+=$1} END {print s+0}')
failed=$(grep -Eo '[0-9]+ failed' "$log" | awk '{s+=$1} END {print s+0}')
# Coverage-guided: the stable toolchain accepts cargo-fuzz's nightly flags
# with RUSTC_BOOTSTRAP=1. Any crash, hang (-timeout) or zettabgp panic on
# checked input fails a run; each target counts as one test.
libfuzz() {
  if RUSTC_BOOTSTRAP=1 cargo fuzz run --fuzz-dir e2e/libfuzzer "$1" -- \
    -max_total_time="$2" -timeout=2 -rss_limit_mb=2048; then
    passed=$((passed + 1))
  else
    failed=$((failed + 1))
    status=1
  fi
}
libfuzz receive "${VIPD_LIBFUZZER_SECS:-60}"
# The UPDATE encoder: every message at most 4,096 bytes, passing our own
# receive checks, whatever the attributes a tenant or the TOML asks for.
libfuzz encode "${VIPD_LIBFUZZER_ENCODE_SECS:-20}"
# The BFD Control packet parser: a shorter run (24 bytes, a dozen checks).
libfuzz bfd "${VIPD_LIBFUZZER_BFD_SECS:-20}"
# A failing binary whose harness never printed its summary still fails.
if [ "$status" -ne 0 ] && [ "$failed" -eq 0 ]; then
  failed=1
fi
# CI keeps only the tail of the output: name each failure and its panic
# there, so a red run says what broke without the whole log.
if grep -qE '^test .* FAILED$' "$log"; then
  echo "failed tests:"
  grep -E '^test .* FAILED$' "$log" | sed 's/^test /  /; s/ \.\.\. FAILED$//'
  grep -A3 -E "panicked at" "$log" | cut -c1-300 | head -60
fi
echo "vipd suite: $passed passed, $failed failed"
exit "$status"
