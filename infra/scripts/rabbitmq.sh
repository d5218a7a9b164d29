#!/usr/bin/env bash
# Makes sure RabbitMQ answers on 127.0.0.1:5672 (guest/guest), installing and starting Debian's package
# when it does not. Idempotent.
set -euo pipefail

ready() { rabbitmq-diagnostics -q check_port_connectivity >/dev/null 2>&1; }

if ! command -v rabbitmq-server >/dev/null 2>&1; then
  echo "--- installing RabbitMQ"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rabbitmq-server >/dev/null
fi
if ! ready; then
  echo "--- starting RabbitMQ"
  rabbitmq-server -detached || true
  for _ in $(seq 1 60); do ready && break; sleep 1; done
fi
ready || { echo "RabbitMQ is not answering on 127.0.0.1:5672" >&2; exit 1; }
echo "--- RabbitMQ is up"
