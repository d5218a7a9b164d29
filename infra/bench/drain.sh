#!/usr/bin/env bash
# Benchmark: one Delivery consumer draining a preloaded orders.created queue (20,000 messages by default).
# Not a test; see README.md. Creates a vhost of its own (rabbitmqctl must work) and deletes it after.
#   COUNT (20000), PREFETCH (32), ORDERFLOW (target/release/orderflow), DATABASE_URL
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
orderflow="${ORDERFLOW:-$root/target/release/orderflow}"
vhost="bench_drain_$$"
rabbitmqctl -q add_vhost "$vhost"
trap 'rabbitmqctl -q delete_vhost "$vhost"' EXIT
rabbitmqctl -q set_permissions -p "$vhost" guest ".*" ".*" ".*"
"$orderflow" bench drain-orders-created --amqp-url "amqp://guest:guest@127.0.0.1:5672/$vhost" \
  --count "${COUNT:-20000}" --prefetch "${PREFETCH:-32}"
