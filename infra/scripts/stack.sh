#!/usr/bin/env bash
# The whole system on one machine with the Debian services: PostgreSQL, RabbitMQ and Redis (Debian
# packages, started if down), Kafka (tansu) and the OAuth2 server (oidc-provider), then the sales-api and
# delivery-api binaries built from this checkout, as separate processes.
#
#   bash infra/scripts/stack.sh start     # build, start everything, wait until both services are ready
#   bash infra/scripts/stack.sh status
#   bash infra/scripts/stack.sh stop      # stops the two services; the backing services keep running
#                                         # (infra/scripts/kafka.sh stop, oauth.sh stop for those two)
#
# Variables of .env.example are honoured (e.g. AUTOPILOT_SHIP_AFTER=2s AUTOPILOT_DELIVER_AFTER=3s);
# logs and pid files go to ${ORDERFLOW_STATE_DIR:-~/.cache/orderflow}/run.
set -euo pipefail
cd "$(dirname "$0")/../.."
state="${ORDERFLOW_STATE_DIR:-$HOME/.cache/orderflow}/run"
mkdir -p "$state"

export DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/orderflow}"
export AMQP_URL="${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}"
export KAFKA_BROKERS="${KAFKA_BROKERS:-127.0.0.1:9092}"
export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379}"
export OAUTH_ISSUER="${OAUTH_ISSUER:-http://127.0.0.1:9000}"
export LOG_FORMAT="${LOG_FORMAT:-json}"
# The console's client at the oidc-provider dev server, which knows http://127.0.0.1:8081/console/callback.
export CONSOLE_CLIENT_SECRET="${CONSOLE_CLIENT_SECRET:-dev-secret-console}"

running() { [ -f "$state/$1.pid" ] && kill -0 "$(cat "$state/$1.pid")" 2>/dev/null; }

start_service() {
  local name=$1 addr=$2
  if running "$name"; then echo "--- $name already running"; return; fi
  HTTP_ADDR="$addr" nohup "${CARGO_TARGET_DIR:-target}/debug/$name" >>"$state/$name.log" 2>&1 &
  echo $! >"$state/$name.pid"
  for _ in $(seq 1 60); do
    curl -fsS "http://$addr/health/ready" >/dev/null 2>&1 && { echo "--- $name ready on http://$addr"; return; }
    running "$name" || { echo "$name exited; last lines of $state/$name.log:" >&2; tail -20 "$state/$name.log" >&2; exit 1; }
    sleep 1
  done
  echo "$name is not ready after 60 s; see $state/$name.log" >&2
  exit 1
}

stop_service() {
  if running "$1"; then kill "$(cat "$state/$1.pid")" && echo "--- $1 stopped"; fi
  rm -f "$state/$1.pid"
}

case "${1:-start}" in
  start)
    bash infra/scripts/postgres.sh
    bash infra/scripts/rabbitmq.sh
    bash infra/scripts/redis.sh
    bash infra/scripts/kafka.sh start
    bash infra/scripts/oauth.sh start
    db="${DATABASE_URL##*/}"
    db="${db%%\?*}"
    psql "${DATABASE_URL%/*}/postgres" -tAc "SELECT 1 FROM pg_database WHERE datname = '$db'" | grep -q 1 \
      || psql "${DATABASE_URL%/*}/postgres" -qc "CREATE DATABASE \"$db\""
    echo "--- building the services"
    cargo build -q -p sales-api -p delivery-api
    start_service sales-api "${SALES_ADDR:-127.0.0.1:8080}"
    start_service delivery-api "${DELIVERY_ADDR:-127.0.0.1:8081}"
    cat <<TXT

orderflow is running: Sales http://${SALES_ADDR:-127.0.0.1:8080}, Delivery http://${DELIVERY_ADDR:-127.0.0.1:8081}, tokens from $OAUTH_ISSUER
  console: http://${DELIVERY_ADDR:-127.0.0.1:8081}/console (staff / dev-password-staff, viewer / dev-password-viewer)
  TOKEN=\$(cargo run -q -p orderflow -- token --issuer $OAUTH_ISSUER --client-id sales-client --client-secret dev-secret-sales)
TXT
    ;;
  stop)
    stop_service delivery-api
    stop_service sales-api
    ;;
  status)
    for name in sales-api delivery-api; do
      if running "$name"; then echo "$name: running (pid $(cat "$state/$name.pid"))"; else echo "$name: stopped"; fi
    done
    bash infra/scripts/kafka.sh status || true
    bash infra/scripts/oauth.sh status || true
    ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
