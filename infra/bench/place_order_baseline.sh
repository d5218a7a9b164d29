#!/usr/bin/env bash
# The plain pgbench baseline for placing a 2-line order: loads the baseline schema into a scratch database,
# runs place_order.sql with 16 clients for 20 s, prints tps and latency, and drops the database.
#
# Usage: infra/bench/place_order_baseline.sh [BENCH_DIR]
#   BENCH_DIR     holds place_order.sql and place_order_schema.sql (default: ../shared/bench from the repo root)
#   DATABASE_URL  the server to use (default postgres://postgres@127.0.0.1:5432/postgres); a database
#                 named $BENCH_DB (default orderflow_bench_baseline) is created next to it and dropped after.
#   CLIENTS, THREADS, DURATION  pgbench -c / -j / -T (default 16, 2, 20)
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
bench_dir="$(cd "${1:-$repo_root/../shared/bench}" && pwd)"
url="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
db="${BENCH_DB:-orderflow_bench_baseline}"
clients="${CLIENTS:-16}"
threads="${THREADS:-2}"
duration="${DURATION:-20}"

# The same server, another database: swap the path component of the URL (any ?query is kept).
base="${url%%\?*}"
query=""
[[ "$url" == *\?* ]] && query="?${url#*\?}"
bench_url="${base%/*}/${db}${query}"

for f in place_order.sql place_order_schema.sql; do
    [[ -f "$bench_dir/$f" ]] || { echo "missing $bench_dir/$f" >&2; exit 1; }
done

PGOPTIONS="-c client_min_messages=warning" psql "$url" -qAt -v ON_ERROR_STOP=1 -c "DROP DATABASE IF EXISTS ${db}" -c "CREATE DATABASE ${db}"
logs="$(mktemp -d)"
trap 'psql "$url" -qAt -c "DROP DATABASE IF EXISTS ${db} WITH (FORCE)" >/dev/null; rm -rf "$logs"' EXIT
psql "$bench_url" -qAt -v ON_ERROR_STOP=1 -f "$bench_dir/place_order_schema.sql"
psql "$bench_url" -qAt -c "VACUUM ANALYZE" >/dev/null

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
echo "server:  $(psql "$url" -qAt -c 'SHOW server_version')"
echo "method:  pgbench -n -M prepared -c $clients -j $threads -T $duration -f place_order.sql (latency per transaction)"
# -l writes one line per transaction (3rd field: latency in µs); the percentiles come from those.
pgbench -n -M prepared -c "$clients" -j "$threads" -T "$duration" -l --log-prefix="$logs/tx" \
    -f "$bench_dir/place_order.sql" "$bench_url" 2>&1 \
    | grep -E '^(number of (transactions|failed)|latency|tps|initial connection)'
cat "$logs"/tx* | awk '{print $3}' | sort -n | awk '
    { v[NR] = $1 }
    END {
        if (NR == 0) exit
        p = "p50 p90 p99"; split("0.50 0.90 0.99", q, " "); split(p, n, " ")
        for (i = 1; i <= 3; i++) { k = int(NR * q[i] + 0.5); if (k < 1) k = 1; printf "latency %s = %.3f ms\n", n[i], v[k] / 1000 }
        printf "latency max = %.3f ms\n", v[NR] / 1000
    }'
