#!/usr/bin/env bash
# The whole test suite: formatting, lints, then every test of every crate.
# It installs and starts what the tests need; today that is only the Rust tools (every adapter the tests
# use so far runs in memory). Run it from anywhere: bash infra/scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/../.."

if ! cargo nextest --version >/dev/null 2>&1; then
  echo "--- installing cargo-nextest"
  cargo install cargo-nextest --locked
fi
rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy

echo "--- cargo fmt --check"
cargo fmt --all -- --check

echo "--- cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "--- cargo nextest"
profile=default
[ "${CI:-}" = "true" ] && profile=ci
cargo nextest run --workspace --locked --profile "$profile"
