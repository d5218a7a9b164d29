#!/usr/bin/env bash
# The local OAuth2 authorization server (infra/oauth: oidc-provider, dev clients only) for runs and tests.
#   bash infra/scripts/oauth.sh start    install (npm ci, when needed) and start it in the background; idempotent
#                                        (installs this checkout's packages even when a server already runs)
#   bash infra/scripts/oauth.sh stop     stop it
#   bash infra/scripts/oauth.sh status   say whether it runs (exit 1 if not)
# Environment: OAUTH_PORT (default 9000), OAUTH_JWKS_FILE (signing keys; default: fresh keys at each start —
# restart to rotate), ORDERFLOW_STATE_DIR (pid file and log, per port; default ~/.cache/orderflow/run).
# It prints the issuer URL, which the APIs and tests take as OAUTH_ISSUER (audience `orderflow`).
set -euo pipefail

root="$(cd "$(dirname "$0")/../.." && pwd)"
app="$root/infra/oauth"
port="${OAUTH_PORT:-9000}"
issuer="http://127.0.0.1:$port"
state="${ORDERFLOW_STATE_DIR:-$HOME/.cache/orderflow/run}"
# Per port, so servers on different ports can run side by side.
pid_file="$state/oauth-$port.pid"
log_file="$state/oauth-$port.log"
name="the OAuth2 server"
where="$issuer"
# shellcheck source=daemon.sh
source "$(dirname "${BASH_SOURCE[0]}")/daemon.sh"
# The lockfile's hash when node_modules was last installed from it.
stamp="$app/node_modules/.orderflow-lock.sha256"

answers() { curl -fsS -o /dev/null --max-time 2 "$issuer/.well-known/openid-configuration" 2>/dev/null; }

ensure_node() {
  if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    echo "--- installing Node.js"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
  fi
  # oidc-provider 9 needs Node 20 or later (it recommends 22 LTS); Debian 12's own package is Node 18.
  local major
  major="$(node -p 'process.versions.node.split(".")[0]')"
  if [ "$major" -lt 20 ]; then
    echo "Node.js $(node --version) is too old for oidc-provider: install Node.js 22 LTS (or at least 20)" >&2
    exit 1
  fi
}

ensure_packages() {
  local want
  want="$(sha256sum "$app/package-lock.json" | cut -d' ' -f1)"
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "--- installing infra/oauth's npm packages (npm ci)"
    (cd "$app" && npm ci --no-audit --no-fund --loglevel=error)
    echo "$want" >"$stamp"
  fi
}

start() {
  command -v curl >/dev/null 2>&1 || {
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq curl >/dev/null
  }
  # Even when a server already runs (perhaps from another checkout), this checkout's packages are
  # installed: its own tests (npm test, the browser tests) run server.js from here.
  ensure_node
  ensure_packages
  if pid="$(running_pid)" && answers; then
    echo "--- OAuth2 server already running (pid $pid): issuer $issuer"
    return
  fi
  if answers; then
    echo "something else already answers on $issuer; stop it or set OAUTH_PORT" >&2
    exit 1
  fi
  mkdir -p "$state"
  # A process from an earlier start that no longer answers is of no use.
  if pid="$(running_pid)"; then kill "$pid" 2>/dev/null || true; fi
  echo "--- starting the OAuth2 server (log: $log_file)"
  echo "=== $(date -Is) start" >>"$log_file"
  # setsid: the server outlives this script and the terminal or CI step that ran it. `exec` all the way down, so
  # the pid recorded is node's own.
  (cd "$app" && OAUTH_PORT="$port" exec setsid node server.js >>"$log_file" 2>&1 </dev/null) &
  echo $! >"$pid_file"
  wait_until_up
}

dispatch "$@"
