#!/usr/bin/env bash
# The whole test suite: formatting, lints, then every test in the workspace
# (unit, integration against a real server on 127.0.0.1:0, the `ferry` binary
# end to end, and the crash tests, which need the test-only `crash-points`
# feature: hence --all-features), then the Python grpcio clients (health,
# reflection, the classic services, ferry's Python package, the tutorial
# examples) against the binaries just built. It installs what those need: a virtualenv under target/
# with the pinned packages of tests/python/requirements.txt, from PyPI
# (grpcio clients, and moto: the S3 server the S3 backend's tests run against).
# `.ci/run` calls exactly this script.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets --all-features --locked -- -D warnings

echo "== Python packages (grpcio clients; moto, the S3 server the S3 tests start)"
venv=target/py-test-env
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check -r tests/python/requirements.txt

echo "== cargo test"
# The S3 backend's tests start target/py-test-env/bin/moto_server; here its
# absence is a failure, not a skip.
FERRY_REQUIRE_S3=1 cargo test --workspace --all-features --locked

echo "== Python tests (grpcio clients against the ferry binary and the example servers just built)"
cargo build --workspace --all-features --locked --bins --examples
FERRY_BIN="$PWD/target/debug/ferry" FERRY_EXAMPLES_DIR="$PWD/target/debug/examples" \
    "$venv/bin/python" -m pytest -q tests/python
