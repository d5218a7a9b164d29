#!/usr/bin/env bash
# Runs the pgbench baseline and `orderflow bench place-orders` alternately in one session
# (baseline, store, baseline, store, ...) so both see the same machine state.
#
# Usage: infra/bench/compare.sh [ROUNDS] [BENCH_DIR]
#   ROUNDS        pairs to run (default 2)
#   BENCH_DIR     passed to place_order_baseline.sh (default ../shared/bench from the repo root)
#   DATABASE_URL  the server (default postgres://postgres@127.0.0.1:5432/postgres)
#   ORDERFLOW     the orderflow binary (default target/release/orderflow; build it with
#                 `cargo build --release -p orderflow`)
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
rounds="${1:-2}"
bench_dir="${2:-$repo_root/../shared/bench}"
orderflow="${ORDERFLOW:-${CARGO_TARGET_DIR:-$repo_root/target}/release/orderflow}"
[[ -x "$orderflow" ]] || { echo "no $orderflow: run cargo build --release -p orderflow" >&2; exit 1; }

for round in $(seq 1 "$rounds"); do
    echo "=== round $round: baseline (pgbench) ==="
    "$repo_root/infra/bench/place_order_baseline.sh" "$bench_dir"
    echo
    echo "=== round $round: store (orderflow bench place-orders) ==="
    "$orderflow" bench place-orders --concurrency 16 --duration 20s --warmup 3s
    echo
done
