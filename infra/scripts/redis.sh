#!/usr/bin/env bash
# Makes sure Redis answers on 127.0.0.1:6379, installing and starting Debian's package when it does not.
# Idempotent.
set -euo pipefail

ready() { redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG; }

if ! command -v redis-server >/dev/null 2>&1; then
  echo "--- installing Redis"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
fi
if ! ready; then
  echo "--- starting Redis"
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
  for _ in $(seq 1 30); do ready && break; sleep 1; done
fi
ready || { echo "Redis is not answering on 127.0.0.1:6379" >&2; exit 1; }
echo "--- Redis is up"
