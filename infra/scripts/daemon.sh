# Sourced by the scripts that run a background service of their own (kafka.sh, oauth.sh): the pid file,
# waiting until it answers, stopping it and reporting on it. The sourcing script sets `name` (for
# messages), `where` (where it answers), `pid_file` and `log_file`, and defines `answers` and `start`.

running_pid() {
  local pid
  pid="$(cat "$pid_file" 2>/dev/null)" || return 1
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && echo "$pid"
}

# Waits up to 30 s for the process just started to answer; on failure prints the end of this run's log.
wait_until_up() {
  for _ in $(seq 1 60); do
    answers && break
    if ! running_pid >/dev/null; then
      echo "$name exited; the end of $log_file:" >&2
      awk '/^=== /{run=""} {run=run $0 "\n"} END{printf "%s", run}' "$log_file" | tail -n 20 >&2
      rm -f "$pid_file"
      exit 1
    fi
    sleep 0.5
  done
  answers || { echo "$name does not answer on $where after 30 s; see $log_file" >&2; exit 1; }
  echo "--- $name is up (pid $(cat "$pid_file")) on $where"
}

stop() {
  if pid="$(running_pid)"; then
    kill "$pid"
    for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
    echo "--- $name stopped (pid $pid)"
  else
    echo "--- $name is not running"
  fi
  rm -f "$pid_file"
}

status() {
  if pid="$(running_pid)" && answers; then
    echo "running (pid $pid) on $where"
  elif pid="$(running_pid)"; then
    echo "started (pid $pid) but not answering on $where; see $log_file"
    exit 1
  else
    echo "not running"
    exit 1
  fi
}

dispatch() {
  case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *)
      echo "usage: $0 start|stop|status" >&2
      exit 2
      ;;
  esac
}
