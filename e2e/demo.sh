#!/usr/bin/env bash
# The demo: a sample cluster in the Kubernetes API stand-in, BIRD as the
# router, vipd announcing what the cluster asks of this node, and BIRD's own
# view of the routes. Needs root; installs BIRD if missing; everything runs
# in network namespaces the demo creates and removes when it ends.
set -euo pipefail
cd "$(dirname "$0")/.."
bash e2e/install.sh
cargo build --release --bin vipd --example demo
./target/release/examples/demo
