#!/usr/bin/env bash
# The whole test suite: formatting and lints, unit and property tests, the
# CLI tests, a bounded fuzz run of the receive path, and the e2e tests
# against real BIRD, FRR, GoBGP and ExaBGP in network namespaces.
# Needs root (network namespaces); installs the peers if they are missing.
set -euo pipefail
cd "$(dirname "$0")/.."
bash e2e/install.sh
cargo fmt --check
cargo clippy --all-targets -- -D warnings
VIPD_FUZZ_SECS="${VIPD_FUZZ_SECS:-20}" cargo test --release
