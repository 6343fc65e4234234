#!/usr/bin/env bash
# The whole test suite: formatting, lints, then every test in the workspace
# (unit, integration against a real server on 127.0.0.1:0, the `ferry` binary
# end to end, and the crash tests, which need the test-only `crash-points`
# feature: hence --all-features). Installs nothing today: the Rust toolchain
# is all the tests need. `.ci/run` calls exactly this script.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets --all-features --locked -- -D warnings

echo "== cargo test"
cargo test --workspace --all-features --locked
