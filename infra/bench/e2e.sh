#!/usr/bin/env bash
# Benchmark, end to end: HTTP `POST /orders` in, order `delivered` out, with both services as release
# processes on the real servers (PostgreSQL, RabbitMQ, Kafka/tansu, Redis, oidc-provider). Not a test; see
# infra/bench/README.md.
#
#   infra/bench/e2e.sh [all|burst|rate|baseline]      (default: all)
#
#   burst     orderflow bench e2e --mode burst --concurrency 16 --duration 20s
#   rate      orderflow bench e2e --mode rate --rate 100 --duration 60s (open loop)
#   baseline  pgbench -n -M prepared -c 16 -j 2 -T 20 -f baseline/lifecycle.sql on a fresh database
#             orderflow_bench_lifecycle (one pgbench transaction = one order's 7 commits: the PostgreSQL
#             work of a whole lifecycle, alone on the machine)
#   all       burst, rate (same service processes), baseline, then `ratio end-to-end / baseline` (burst's
#             E2E_ORDERS_PER_SEC ÷ the baseline's tps)
#
# It builds the release binaries (`cargo build --release --locked -p sales-api -p delivery-api`, then
# `-p orderflow`, into ${CARGO_TARGET_DIR:-target}), starts the backing services with infra/scripts (they keep
# running afterwards), and gives the run a fresh database orderflow_bench_e2e, a fresh RabbitMQ vhost
# orderflow_bench_e2e and a Kafka topic of its own (orders.audit.bench.<timestamp>). sales-api and
# delivery-api run on 127.0.0.1:$SALES_PORT/$DELIVERY_PORT (18080/18081) with the autopilot at 50 ms/50 ms and
# rate limiting off; their logs go to a temporary directory (printed). On exit the two services are stopped and
# the scratch databases and vhost dropped.
#
# Environment: DATABASE_URL (the server; default postgres://postgres@127.0.0.1:5432/postgres — the scratch
# databases are created next to it), AMQP_HOST (127.0.0.1:5672, guest/guest; rabbitmqctl must work),
# KAFKA_PORT (9092), REDIS_URL (redis://127.0.0.1:6379), OAUTH_PORT (9000), SALES_PORT, DELIVERY_PORT,
# CARGO_TARGET_DIR, SKIP_BUILD=1 (use the release binaries already in the target directory), SALES_REPLICAS
# (1; more runs that many sales-api processes on the same database and spreads the POSTs over them),
# SALES_WORKER_THREADS (each sales-api's Tokio worker threads; default one per core), SALES_CPU (a CPU
# limit for each sales-api process, in cores, e.g. 0.25: each runs in a cgroup of its own with that CFS quota,
# as a Kubernetes CPU limit would run a replica; needs a writable cgroup cpu controller), and
# any OTEL_* variable, passed on to both services (OTEL_EXPORTER_OTLP_ENDPOINT measures tracing with an
# exporter; infra/bench/otlp-sink.py is a receiver that accepts and counts).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"

mode="${1:-all}"
case "$mode" in
  all | burst | rate | baseline) ;;
  *) echo "usage: $0 [all|burst|rate|baseline]" >&2; exit 2 ;;
esac

target_dir="${CARGO_TARGET_DIR:-target}"
[[ "$target_dir" == /* ]] || target_dir="$root/$target_dir"
bin="$target_dir/release"
baseline_dir="$root/infra/bench/baseline"

url="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
# The same server, other databases: swap the path component of the URL (any ?query is kept).
base="${url%%\?*}"
query=""
[[ "$url" == *\?* ]] && query="?${url#*\?}"
db_url() { echo "${base%/*}/$1${query}"; }

e2e_db=orderflow_bench_e2e
lifecycle_db=orderflow_bench_lifecycle
vhost=orderflow_bench_e2e
amqp_host="${AMQP_HOST:-127.0.0.1:5672}"
kafka_port="${KAFKA_PORT:-9092}"
redis_url="${REDIS_URL:-redis://127.0.0.1:6379}"
issuer="http://127.0.0.1:${OAUTH_PORT:-9000}"
sales_port="${SALES_PORT:-18080}"
delivery_port="${DELIVERY_PORT:-18081}"
topic="orders.audit.bench.$(date +%Y%m%d%H%M%S)"
logs="$(mktemp -d -t orderflow-bench-e2e.XXXXXX)"
sales_pid=""
delivery_pid=""
# SALES_REPLICAS=2 (or more) runs more sales-api processes on the next ports; the load is spread over them.
sales_replicas="${SALES_REPLICAS:-1}"
# SALES_WORKER_THREADS=n gives each sales-api process n Tokio worker threads (default: one per core), as a
# CPU limit of n cores would size it: replicas sharing the machine can each be given their share of it.
sales_threads=""
[ -n "${SALES_WORKER_THREADS:-}" ] && sales_threads="TOKIO_WORKER_THREADS=$SALES_WORKER_THREADS"
# SALES_CPU=0.25 runs each sales-api under a CPU limit of a quarter core, in a cgroup of its own: a replica
# is then a fixed share of the machine, as a pod with a CPU limit is, and a second replica adds capacity.
sales_cpu="${SALES_CPU:-}"
cgroups=""
replica_pids=""
sales_urls="http://127.0.0.1:$sales_port"
pid_flags=""
vhost_made=""
services_started=""

psql_admin() { PGOPTIONS="-c client_min_messages=warning" psql "$url" -X -qAt -v ON_ERROR_STOP=1 "$@"; }

stop_service() { # $1 = pid
  [ -n "$1" ] || return 0
  kill "$1" 2>/dev/null || true
  for _ in $(seq 1 40); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.25; done
  kill -9 "$1" 2>/dev/null || true
}

cleanup() {
  local rc=$?
  set +e
  stop_service "$delivery_pid"
  stop_service "$sales_pid"
  for pid in $replica_pids; do stop_service "$pid"; done
  if [ -n "$services_started" ]; then
    for name in sales-api delivery-api; do
      problems="$(grep -c '"level":"\(ERROR\|WARN\)"' "$logs/$name.log" 2>/dev/null)"
      [ "${problems:-0}" -gt 0 ] && echo "--- $name logged $problems warnings/errors (see $logs/$name.log)"
    done
  fi
  for cg in $cgroups; do
    [ -f "$cg/cpu.stat" ] && echo "--- $(basename "$cg"): $(tr '\n' ' ' <"$cg/cpu.stat")"
    rmdir "$cg" 2>/dev/null
  done
  psql_admin -c "DROP DATABASE IF EXISTS $e2e_db WITH (FORCE)" -c "DROP DATABASE IF EXISTS $lifecycle_db WITH (FORCE)" \
    >/dev/null 2>&1
  [ -n "$vhost_made" ] && rabbitmqctl -q delete_vhost "$vhost" >/dev/null 2>&1
  echo "--- service logs: $logs"
  exit "$rc"
}
trap cleanup EXIT

machine() {
  echo "--- machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), load $(cut -d' ' -f1-3 /proc/loadavg)"
}

build() {
  if [ "${SKIP_BUILD:-}" = 1 ]; then
    for name in sales-api delivery-api orderflow; do
      [ -x "$bin/$name" ] || { echo "SKIP_BUILD=1 but $bin/$name is not built" >&2; exit 1; }
    done
    echo "--- using the release binaries in $bin (SKIP_BUILD=1)"
    return
  fi
  echo "--- building release binaries into $target_dir"
  # Two invocations: built together, cargo would unify the CLI's features into the services' dependencies.
  cargo build --release --locked -p sales-api -p delivery-api
  cargo build --release --locked -p orderflow
}

backing_services() {
  bash infra/scripts/postgres.sh
  bash infra/scripts/rabbitmq.sh
  bash infra/scripts/redis.sh
  KAFKA_PORT="$kafka_port" bash infra/scripts/kafka.sh start
  bash infra/scripts/oauth.sh start
}

fresh_scratch() {
  echo "--- fresh database $e2e_db, vhost $vhost, topic $topic"
  psql_admin -c "DROP DATABASE IF EXISTS $e2e_db WITH (FORCE)" -c "CREATE DATABASE $e2e_db"
  rabbitmqctl -q delete_vhost "$vhost" >/dev/null 2>&1 || true
  rabbitmqctl -q add_vhost "$vhost" >/dev/null
  vhost_made=1
  rabbitmqctl -q set_permissions -p "$vhost" guest '.*' '.*' '.*' >/dev/null
}

# A cgroup with a CPU limit of $2 cores (cgroup v2's cpu.max, or v1's CFS quota); prints its directory.
cpu_cgroup() { # $1 = name, $2 = cores
  local name=$1 cores=$2 period=100000 quota dir
  quota="$(awk -v c="$cores" -v p="$period" 'BEGIN { q = int(c * p); if (q < 1000) exit 1; print q }')" ||
    { echo "SALES_CPU=$cores: not a CPU limit of at least 0.01 cores" >&2; return 1; }
  if [ -f /sys/fs/cgroup/cgroup.controllers ] && grep -qw cpu /sys/fs/cgroup/cgroup.controllers; then
    dir="/sys/fs/cgroup/$name"
    # A child gets cpu.max only once the root hands the cpu controller down.
    grep -qw cpu /sys/fs/cgroup/cgroup.subtree_control 2>/dev/null ||
      echo +cpu >/sys/fs/cgroup/cgroup.subtree_control 2>/dev/null || true
    mkdir -p "$dir" && echo "$quota $period" >"$dir/cpu.max"
  elif [ -w /sys/fs/cgroup/cpu ]; then
    dir="/sys/fs/cgroup/cpu/$name"
    mkdir -p "$dir" && echo "$period" >"$dir/cpu.cfs_period_us" && echo "$quota" >"$dir/cpu.cfs_quota_us"
  else
    echo "SALES_CPU needs a writable cgroup cpu controller (/sys/fs/cgroup with cpu, or /sys/fs/cgroup/cpu)" >&2
    return 1
  fi || { echo "cannot set a CPU limit in $dir" >&2; return 1; }
  echo "$dir"
}

start_service() { # $1 = name, $2 = port, then extra VAR=value; prints the pid
  local name=$1 port=$2
  shift 2
  local otel=() confine=()
  mapfile -t otel < <(env | grep -E '^OTEL_[A-Z_]+=' || true)
  # The process enters its cgroup before it starts, so every thread it makes is under the limit.
  [ -n "${CGROUP:-}" ] && confine=(bash -c 'echo $$ >"$0/cgroup.procs" && exec "$@"' "$CGROUP")
  "${confine[@]}" env -i PATH="$PATH" HOME="$HOME" "${otel[@]}" \
    DATABASE_URL="$(db_url "$e2e_db")" \
    AMQP_URL="amqp://guest:guest@$amqp_host/$vhost" \
    KAFKA_BROKERS="127.0.0.1:$kafka_port" AUDIT_TOPIC="$topic" \
    REDIS_URL="$redis_url" OAUTH_ISSUER="$issuer" \
    HTTP_ADDR="127.0.0.1:$port" RATE_LIMIT_PER_MINUTE=0 LOG_FORMAT=json RUST_LOG=warn \
    "$@" "$bin/$name" >>"$logs/$name.log" 2>&1 </dev/null &
  echo $!
}

wait_ready() { # $1 = name, $2 = port, $3 = pid
  for _ in $(seq 1 120); do
    curl -fsS -o /dev/null "http://127.0.0.1:$2/health/ready" 2>/dev/null && { echo "--- $1 ready (pid $3)"; return; }
    kill -0 "$3" 2>/dev/null || { echo "$1 exited; the end of $logs/$1.log:" >&2; tail -20 "$logs/$1.log" >&2; exit 1; }
    sleep 0.5
  done
  echo "$1 is not ready after 60 s; the end of $logs/$1.log:" >&2
  tail -20 "$logs/$1.log" >&2
  exit 1
}

start_services() {
  # One at a time, as stack.sh does.
  services_started=1
  local cg=""
  if [ -n "$sales_cpu" ]; then
    cg="$(cpu_cgroup orderflow-bench-sales-1 "$sales_cpu")"
    cgroups="$cg"
    echo "--- each sales-api limited to $sales_cpu cores ($(dirname "$cg"))"
  fi
  sales_pid="$(CGROUP="$cg" start_service sales-api "$sales_port" $sales_threads)"
  wait_ready sales-api "$sales_port" "$sales_pid"
  delivery_pid="$(start_service delivery-api "$delivery_port" AUTOPILOT_SHIP_AFTER=50ms AUTOPILOT_DELIVER_AFTER=50ms)"
  wait_ready delivery-api "$delivery_port" "$delivery_pid"
  pid_flags="--pid sales=$sales_pid --pid delivery=$delivery_pid"
  local n port pid
  for n in $(seq 2 "$sales_replicas"); do
    port=$((sales_port + 10 + n))
    if [ -n "$sales_cpu" ]; then
      cg="$(cpu_cgroup "orderflow-bench-sales-$n" "$sales_cpu")"
      cgroups="$cgroups $cg"
    fi
    pid="$(CGROUP="$cg" start_service sales-api "$port" $sales_threads)"
    wait_ready sales-api "$port" "$pid"
    replica_pids="$replica_pids $pid"
    sales_urls="$sales_urls,http://127.0.0.1:$port"
    pid_flags="$pid_flags --pid sales-$n=$pid"
  done
}

bench_e2e() { # $1 = output file, then the mode's options
  local out=$1
  shift
  machine
  RUST_LOG=warn "$bin/orderflow" bench e2e \
    --sales "$sales_urls" --issuer "$issuer" \
    --database-url "$(db_url "$e2e_db")" --sales-schema sales --delivery-schema delivery \
    $pid_flags "$@" | tee "$out"
  for pid in "$sales_pid" "$delivery_pid" $replica_pids; do
    kill -0 "$pid" 2>/dev/null || { echo "a service (pid $pid) died during the run; see $logs" >&2; exit 1; }
  done
}

baseline() {
  local lifecycle_url tps
  lifecycle_url="$(db_url "$lifecycle_db")"
  echo "=== baseline: pgbench lifecycle.sql (PostgreSQL only, one transaction = one order's 7 commits) ==="
  machine
  psql_admin -c "DROP DATABASE IF EXISTS $lifecycle_db WITH (FORCE)" -c "CREATE DATABASE $lifecycle_db"
  PGOPTIONS="-c client_min_messages=warning" psql "$lifecycle_url" -X -qAt -v ON_ERROR_STOP=1 \
    -f "$baseline_dir/lifecycle_schema.sql"
  psql "$lifecycle_url" -X -qAt -c "VACUUM ANALYZE" >/dev/null
  echo "server:  PostgreSQL $(psql_admin -c 'SHOW server_version')"
  echo "method:  pgbench -n -M prepared -c 16 -j 2 -T 20 -f lifecycle.sql (latency per whole lifecycle)"
  # -l writes one line per transaction (3rd field: latency in µs); the percentiles come from those.
  pgbench -n -M prepared -c 16 -j 2 -T 20 -l --log-prefix="$logs/tx" -f "$baseline_dir/lifecycle.sql" \
    "$lifecycle_url" >"$logs/pgbench.txt" 2>&1 || { cat "$logs/pgbench.txt" >&2; exit 1; }
  grep -E '^(number of (transactions|failed)|latency|tps|initial connection)' "$logs/pgbench.txt"
  cat "$logs"/tx* | awk '{print $3}' | sort -n | awk '
    { v[NR] = $1 }
    END {
      if (NR == 0) exit
      split("0.50 0.90 0.99", q, " "); split("p50 p90 p99", n, " ")
      for (i = 1; i <= 3; i++) { k = int(NR * q[i] + 0.5); if (k < 1) k = 1; printf "latency %s = %.3f ms\n", n[i], v[k] / 1000 }
      printf "latency max = %.3f ms\n", v[NR] / 1000
    }'
  rm -f "$logs"/tx*
  tps="$(sed -n 's/^tps = \([0-9.]*\) .*/\1/p' "$logs/pgbench.txt" | tail -1)"
  [ -n "$tps" ] || { echo "no tps in pgbench's output" >&2; exit 1; }
  psql_admin -c "DROP DATABASE IF EXISTS $lifecycle_db WITH (FORCE)"
  echo "BASELINE_LIFECYCLES_PER_SEC=$tps"
  baseline_tps="$tps"
}

baseline_tps=""
burst_rate=""
if [ "$mode" != baseline ]; then
  build
  backing_services
  fresh_scratch
  start_services
  if [ "$mode" = all ] || [ "$mode" = burst ]; then
    echo "=== burst: 16 clients back to back for 20 s ==="
    bench_e2e "$logs/burst.txt" --mode burst --concurrency 16 --duration 20s
    burst_rate="$(sed -n 's/^E2E_ORDERS_PER_SEC=//p' "$logs/burst.txt")"
    echo
  fi
  if [ "$mode" = all ] || [ "$mode" = rate ]; then
    echo "=== rate: 100 orders/s offered, open loop, for 60 s (same service processes) ==="
    bench_e2e "$logs/rate.txt" --mode rate --rate 100 --duration 60s
    echo
  fi
  # The baseline measures PostgreSQL alone: nothing of ours may run meanwhile.
  stop_service "$delivery_pid"
  stop_service "$sales_pid"
  for pid in $replica_pids; do stop_service "$pid"; done
  delivery_pid=""
  sales_pid=""
  replica_pids=""
fi
if [ "$mode" = all ] || [ "$mode" = baseline ]; then
  if [ "$mode" = baseline ]; then bash infra/scripts/postgres.sh; fi
  baseline
fi
if [ "$mode" = all ]; then
  echo
  echo "=== summary ==="
  echo "end to end (burst): $burst_rate orders/s; baseline: $baseline_tps lifecycles/s"
  awk -v e="$burst_rate" -v b="$baseline_tps" 'BEGIN { printf "ratio end-to-end / baseline: %.3f\n", (b > 0 ? e / b : 0) }'
fi
