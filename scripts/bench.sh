#!/usr/bin/env bash
# Builds ferry and ferry-bench in release mode, then runs the benchmark:
# ferry upload/download vs a raw TCP file copy over loopback, in one run.
# All arguments go to ferry-bench; see `scripts/bench.sh --help`.
#   scripts/bench.sh --size 1GiB --runs 3
#   scripts/bench.sh --size 256MiB --chunk-size 262144 --json
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

cargo build --release -p ferry -p ferry-bench
# ferry-bench finds the ferry binary next to itself.
exec "${CARGO_TARGET_DIR:-$repo/target}/release/ferry-bench" "$@"
