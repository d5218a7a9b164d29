#!/usr/bin/env bash
# Benchmark: audit events through the Sales outbox relay into Kafka (tansu). Not a test; see README.md
# ("Audit stream: relay throughput and commit → Kafka lag").
#
# Runs one sales-api process (its relay is the system under test) on a schema, vhost, topic and private
# tansu broker of its own, and feeds its outbox straight from pgbench, so neither HTTP nor the order logic
# limits the rate. Every row is an audit-only row (as Sales writes for placed/paid/shipped/delivered), its
# CloudEvent `time` and `created_at` the time of the inserting transaction (≈ its commit: one statement).
# The relay marks a row (`published_at = now()`) only after Kafka's delivery acknowledgement, so
# `published_at - created_at` is the commit → acknowledged-by-Kafka lag of each event.
#
#   1. capacity: BACKLOG rows inserted while the relay is stopped, then the relay started; events/s =
#      rows / (last published_at - first published_at).
#   2. lag: pgbench -R RATE (orders/s) for DURATION seconds, each order EVENTS_PER_ORDER audit rows in one
#      transaction followed by a NOTIFY (as the service announces after commit); then wait until the outbox
#      is drained and report lag percentiles of those rows.
#
# Environment: DATABASE_URL (postgres://postgres@127.0.0.1:5432/postgres), AMQP_HOST (127.0.0.1:5672,
# guest/guest; rabbitmqctl must work), REDIS_URL, OAUTH_ISSUER (the dev OAuth2 server must run),
# SALES_BIN (target/release/sales-api), KAFKA_PORT (29092; a private tansu via infra/scripts/kafka.sh),
# RATE (1000), EVENTS_PER_ORDER (4), DURATION (20), BACKLOG (20000), CLIENTS (8), DRAIN_TIMEOUT (900).
set -euo pipefail

root="$(cd "$(dirname "$0")/../.." && pwd)"
database_url="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
amqp_host="${AMQP_HOST:-127.0.0.1:5672}"
sales_bin="${SALES_BIN:-$root/target/release/sales-api}"
kafka_port="${KAFKA_PORT:-29092}"
rate="${RATE:-1000}"
events="${EVENTS_PER_ORDER:-4}"
duration="${DURATION:-20}"
backlog="${BACKLOG:-20000}"
clients="${CLIENTS:-8}"
drain_timeout="${DRAIN_TIMEOUT:-900}"
schema=bench_audit
vhost=bench_audit
topic="bench-audit-$(date +%s)"
http_port="${HTTP_PORT:-18480}"
work="$(mktemp -d)"
log="$work/sales-api.log"
sales_pid=""

[ -x "$sales_bin" ] || { echo "$sales_bin is not built: cargo build --release -p sales-api" >&2; exit 1; }

sql() { psql "$database_url" -X -q -t -A -v ON_ERROR_STOP=1 -c "$1"; }

cleanup() {
  stop_sales
  KAFKA_PORT="$kafka_port" bash "$root/infra/scripts/kafka.sh" stop >/dev/null || true
  rabbitmqctl delete_vhost "$vhost" >/dev/null 2>&1 || true
  sql "DROP SCHEMA IF EXISTS $schema CASCADE" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

start_sales() {
  env -i PATH="$PATH" HOME="$HOME" \
    DATABASE_URL="$database_url" DATABASE_SCHEMA="$schema" DATABASE_POOL_SIZE=8 \
    AMQP_URL="amqp://guest:guest@$amqp_host/$vhost" \
    KAFKA_BROKERS="127.0.0.1:$kafka_port" AUDIT_TOPIC="$topic" \
    REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379}" OAUTH_ISSUER="${OAUTH_ISSUER:-http://127.0.0.1:9000}" \
    RATE_LIMIT_PER_MINUTE=0 HTTP_ADDR="127.0.0.1:$http_port" LOG_FORMAT=json RUST_LOG=warn \
    "$sales_bin" >>"$log" 2>&1 &
  sales_pid=$!
  for _ in $(seq 1 120); do
    curl -sf "http://127.0.0.1:$http_port/health/ready" >/dev/null && return
    kill -0 "$sales_pid" 2>/dev/null || { echo "sales-api exited:" >&2; tail -20 "$log" >&2; exit 1; }
    sleep 0.5
  done
  echo "sales-api not ready after 60 s:" >&2; tail -20 "$log" >&2; exit 1
}

stop_sales() {
  if [ -n "$sales_pid" ]; then
    kill "$sales_pid" 2>/dev/null || true
    wait "$sales_pid" 2>/dev/null || true
    sales_pid=""
  fi
}

wait_drained() {
  local waited=0 pending
  while :; do
    pending="$(sql "SELECT count(*) FROM $schema.outbox WHERE audit_pending")"
    [ "$pending" = 0 ] && return
    if [ "$waited" -ge "$((drain_timeout * 2))" ]; then
      echo "still $pending audit rows pending after ${drain_timeout}s" >&2; exit 1
    fi
    sleep 0.5; waited=$((waited + 1))
  done
}

# The audit-only outbox rows of one order: `n` CloudEvents with one subject, time = the transaction's time.
rows_sql() { # $1 = number of rows (literal or pgbench variable), $2 = phase
  cat <<SQL
INSERT INTO $schema.outbox (id, event, routing_key, command_pending, audit_pending)
SELECT e.id,
       jsonb_build_object('specversion', '1.0', 'id', e.id, 'source', 'sales-api',
                          'type', 'orderflow.order.placed.v1', 'subject', o.id, 'time', now(),
                          'datacontenttype', 'application/json', 'data', jsonb_build_object('phase', '$2')),
       NULL, false, true
FROM (SELECT gen_random_uuid() AS id) o, LATERAL (SELECT gen_random_uuid() AS id, o.id AS o FROM generate_series(1, $1)) e;
SQL
}

echo "--- machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), load $(cut -d' ' -f1-3 /proc/loadavg)"
KAFKA_PORT="$kafka_port" bash "$root/infra/scripts/kafka.sh" start
rabbitmqctl add_vhost "$vhost" >/dev/null 2>&1 || true
rabbitmqctl set_permissions -p "$vhost" guest '.*' '.*' '.*' >/dev/null
sql "DROP SCHEMA IF EXISTS $schema CASCADE" >/dev/null

echo "--- migrating $schema and creating topic $topic (sales-api start/stop)"
start_sales
stop_sales

echo "--- capacity: $backlog audit rows written while the relay is stopped, then drained"
# In chunks of EVENTS_PER_ORDER rows per subject, like orders.
sql "DO \$\$ BEGIN FOR i IN 1..($backlog / $events) LOOP $(rows_sql "$events" backlog | tr '\n' ' ') END LOOP; END \$\$"
start_sales
wait_drained
sql "SELECT format('capacity: %s events in %s s = %s events/s (first to last acknowledgement)',
               count(*), round(extract(epoch FROM max(published_at) - min(published_at))::numeric, 2),
               round(count(*) / extract(epoch FROM max(published_at) - min(published_at))::numeric))
     FROM $schema.outbox WHERE event->'data'->>'phase' = 'backlog'"

echo "--- lag: $rate orders/s x $events audit events for ${duration}s (pgbench -R, $clients clients)"
script="$work/order.sql"
{ rows_sql ":events" rate; echo "SELECT pg_notify('${schema}_outbox', '');"; } >"$script"
start_ns=$(date +%s%N)
pgbench "$database_url" -n -R "$rate" -T "$duration" -c "$clients" -j 2 -D events="$events" -f "$script" 2>&1 \
  | grep -E 'number of transactions actually processed|tps =|latency average|rate limit schedule lag|skipped' || true
wait_drained
drained_ns=$(date +%s%N)
echo "    drained $(( (drained_ns - start_ns) / 1000000 )) ms after pgbench started (run ${duration}s)"
sql "SELECT format('lag commit -> Kafka ack: %s events, offered %s events/s over the run, relay %s events/s; p50 %s ms, p90 %s ms, p99 %s ms, max %s ms',
               count(*),
               round(count(*) / extract(epoch FROM max(created_at) - min(created_at))::numeric),
               round(count(*) / extract(epoch FROM max(published_at) - min(created_at))::numeric),
               round(percentile_cont(0.5) WITHIN GROUP (ORDER BY lag)::numeric, 1),
               round(percentile_cont(0.9) WITHIN GROUP (ORDER BY lag)::numeric, 1),
               round(percentile_cont(0.99) WITHIN GROUP (ORDER BY lag)::numeric, 1),
               round(max(lag)::numeric, 1))
     FROM (SELECT created_at, published_at, extract(epoch FROM published_at - created_at) * 1000 AS lag
           FROM $schema.outbox WHERE event->'data'->>'phase' = 'rate') r"
if grep -q '"level":"ERROR"\|"level":"WARN"' "$log"; then
  echo "--- warnings/errors of sales-api (last 5):"
  grep '"level":"ERROR"\|"level":"WARN"' "$log" | tail -5
fi
