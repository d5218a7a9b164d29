#!/usr/bin/env bash
# Checks the alert rules and the Grafana dashboard (see infra/prometheus/README.md):
#   bash infra/scripts/prometheus-check.sh
#       promtool: alerts.yml is valid and its unit tests (alerts.test.yml) pass; both Prometheus
#       configurations (prometheus.yml, prometheus.compose.yml) are valid.
#   bash infra/scripts/prometheus-check.sh SALES_URL DELIVERY_URL    e.g. http://127.0.0.1:8080 http://127.0.0.1:8081
#       the same, then against running services: a throwaway Prometheus scrapes both every second with the
#       rules loaded, and after ~20 s every panel query of infra/grafana/orderflow.json must return data,
#       every metric the panels and alerts use must exist, and every alert rule must evaluate without
#       error. Have the services handle at least one order first (placed, read back, shipped), so the
#       metrics that appear only with traffic exist. CHECK_SCRAPE_SECONDS changes the ~20 s.
#   bash infra/scripts/prometheus-check.sh --list
#       print what would be queried (the dashboard's expressions, the metric names), without Prometheus.
# Installs Debian's `prometheus` package (promtool and prometheus) when either is missing. Where systemd
# runs, that package also starts a Prometheus service on :9090; this script does not use it.
set -euo pipefail
cd "$(dirname "$0")/../.."

dashboard=infra/grafana/orderflow.json
rules=infra/prometheus/alerts.yml
tests=infra/prometheus/alerts.test.yml

# The parsing and querying, in Python for its JSON and HTTP. Subcommands:
#   list                                   print the expressions and metric names
#   config OUT SALES_URL DELIVERY_URL      write the throwaway Prometheus' configuration to OUT
#   check API                              wait for the targets, then query everything against API
helper() {
  python3 - "$dashboard" "$rules" "$@" <<'PY'
import json, os, re, sys, time, urllib.error, urllib.parse, urllib.request

dashboard_path, rules_path, command, *args = sys.argv[1:]

# Grafana's built-in variables, as a panel on a 1 s scrape over a short range would see them.
BUILTINS = {"__rate_interval": "1m", "__interval": "5s", "__range": "5m", "__range_s": "300", "__range_ms": "300000"}
# Metrics that exist only after a particular event, so may be absent from healthy, lightly used services.
# A panel on them falls back to 0 (see the dashboard); a misspelled name is still caught, as it is not here.
EVENT_ONLY = {
    "orderflow_rate_limit_total": "a request is rate-limited, or the limiter is unavailable",
}


def substitute(expr, variables):
    """The expression with Grafana's variables replaced; a query variable matches anything (`.*`)."""
    def one(match):
        name = match.group(1) or match.group(2)
        if name in BUILTINS:
            return BUILTINS[name]
        if variables.get(name, "datasource") != "datasource":
            return ".*"
        raise SystemExit(f"{dashboard_path}: unknown variable ${name} in: {expr}")
    return re.sub(r"\$(?:\{(\w+)(?::\w+)?\}|(\w+))", one, expr)


def dashboard_queries():
    """(what, expression) for every panel target and every `label_values` variable of the dashboard."""
    with open(dashboard_path) as f:
        dashboard = json.load(f)
    templating = dashboard.get("templating", {}).get("list", [])
    variables = {v["name"]: v.get("type") for v in templating}
    queries = []
    for v in templating:
        query = v.get("query")
        query = query.get("query", "") if isinstance(query, dict) else query
        found = re.fullmatch(r"\s*label_values\((.*),\s*(\w+)\)\s*", query or "") if v.get("type") == "query" else None
        if found:
            queries.append((f"variable ${v['name']}", f"group by ({found.group(2)}) ({substitute(found.group(1), variables)})"))

    def walk(panels):
        for panel in panels:
            walk(panel.get("panels", []))  # a collapsed row holds its panels
            for target in panel.get("targets", []):
                if target.get("expr", "").strip() and not target.get("hide"):
                    what = f"{panel.get('title', '?')} [{target.get('refId', '?')}]"
                    queries.append((what, substitute(target["expr"], variables)))
    walk(dashboard.get("panels", []))
    return queries


def alert_rules():
    """(alert, expression) for every alert of alerts.yml. A line reader rather than a YAML parser, which
    the standard library lacks: it knows `- alert: NAME` and `expr:` inline or as a block scalar."""
    rules, alert, block = [], None, None
    with open(rules_path) as f:
        lines = f.read().splitlines()
    for line in lines + [""]:
        indent = len(line) - len(line.lstrip())
        if block is not None:
            if not line.strip() or indent > block[0]:
                block[1].append(line.strip())
                continue
            rules.append((alert, " ".join(part for part in block[1] if part)))
            block = None
        found = re.match(r"\s*-\s*alert:\s*(\S+)", line)
        if found:
            alert = found.group(1)
            continue
        found = re.match(r"(\s*)expr:\s*(.*?)\s*$", line)
        if found and alert:
            value = found.group(2)
            if value[:1] in "|>":
                block = (len(found.group(1)), [])
            else:
                rules.append((alert, value[1:-1] if value[:1] in "'\"" else value))
    return rules


KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "bool",
            "offset", "inf", "nan"}


def metric_names(expr):
    """The metric names an expression reads: identifiers that are not functions, keywords or labels."""
    rest = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)
    rest = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", rest)
    rest = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", rest)
    names = []
    for found in re.finditer(r"(?<![\w.])([A-Za-z_:][\w:]*)(\s*\()?", rest):
        name = found.group(1)
        if not found.group(2) and name.lower() not in KEYWORDS and name not in names:
            names.append(name)
    return names


def api(base, path, **params):
    url = f"{base}{path}?{urllib.parse.urlencode(params)}"
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return json.load(response)
    except urllib.error.HTTPError as error:  # a bad query answers 400 with a JSON body saying why
        return json.load(error)


def query(base, expr):
    """('OK'|'EMPTY'|'ERROR', detail)."""
    answer = api(base, "/api/v1/query", query=expr)
    if answer.get("status") != "success":
        return "ERROR", answer.get("error", "no error message")
    result = answer["data"]["result"]
    if not result:
        return "EMPTY", "no series"
    jobs = sorted({series["metric"].get("job", "") for series in result} - {""})
    return "OK", f"{len(result)} series" + (f" ({', '.join(jobs)})" if jobs else "")


def all_names():
    names = {}
    for what, expr in dashboard_queries():
        for name in metric_names(expr):
            names.setdefault(name, []).append(what)
    for alert, expr in alert_rules():
        for name in metric_names(expr):
            names.setdefault(name, []).append(f"alert {alert}")
    return names


def cmd_list():
    print(f"# {dashboard_path}")
    for what, expr in dashboard_queries():
        print(f"{what}: {expr}")
    print(f"# {rules_path}")
    for alert, expr in alert_rules():
        print(f"{alert}: {expr}")
    print("# metric names")
    for name, users in all_names().items():
        print(f"{name}: {len(users)} use(s)" + (" (event-only)" if name in EVENT_ONLY else ""))


def cmd_config(out, sales, delivery):
    def job(name, url):
        parts = urllib.parse.urlsplit(url)
        if not parts.scheme or not parts.netloc:
            raise SystemExit(f"not a URL: {url}")
        return {"job_name": name, "scheme": parts.scheme, "metrics_path": parts.path.rstrip("/") + "/metrics",
                "static_configs": [{"targets": [parts.netloc]}]}
    # JSON is YAML, so Prometheus reads this as it is.
    config = {"global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
              "rule_files": [os.path.abspath(rules_path)],
              "scrape_configs": [job("sales-api", sales), job("delivery-api", delivery)]}
    with open(out, "w") as f:
        json.dump(config, f, indent=2)


def wait(what, ready, seconds):
    deadline = time.monotonic() + seconds
    while True:
        try:
            if ready():
                return
        except (OSError, ValueError):
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"{what} after {seconds} s")
        time.sleep(0.5)


def cmd_check(base):
    scrape_seconds = int(os.environ.get("CHECK_SCRAPE_SECONDS", "20"))
    wait("Prometheus not ready", lambda: urllib.request.urlopen(f"{base}/-/ready", timeout=2).status == 200, 30)

    def targets_up():
        active = api(base, "/api/v1/targets", state="active")["data"]["activeTargets"]
        return {t["labels"]["job"] for t in active if t["health"] == "up"} >= {"sales-api", "delivery-api"}
    try:
        wait("targets not up", targets_up, 30)
    except SystemExit:
        for t in api(base, "/api/v1/targets", state="active")["data"]["activeTargets"]:
            print(f"target {t['labels']['job']} {t['scrapeUrl']}: {t['health']} {t.get('lastError', '')}")
        raise
    print(f"--- both targets up; scraping for {scrape_seconds} s")
    time.sleep(scrape_seconds)

    failures = []

    def report(status, what, detail, expr, fails):
        print(f"{status:<7} {what}: {detail} | {expr}")
        if fails:
            failures.append(f"{what}: {status} ({detail}) | {expr}")

    print(f"--- panel queries of {dashboard_path}")
    for what, expr in dashboard_queries():
        status, detail = query(base, expr)
        report(status, what, detail, expr, status != "OK")

    print("--- metrics the dashboard and the alerts read")
    for name, users in all_names().items():
        status, detail = query(base, f'count by (job) ({{__name__="{name}"}})')
        if status == "EMPTY" and name in EVENT_ONLY and not any(u.startswith("alert ") for u in users):
            status, detail = "ABSENT", f"allowed: appears only once {EVENT_ONLY[name]}"
        report(status, name, f"{detail}; used by {', '.join(sorted(set(users)))}", f"count({name})",
               status not in ("OK", "ABSENT"))

    # Quiet is the healthy answer for an alert, so only an error fails here; and Prometheus must have
    # loaded and evaluated each rule without error.
    print(f"--- alert rules of {rules_path}")
    loaded = {}
    for group in api(base, "/api/v1/rules", type="alert")["data"]["groups"]:
        for rule in group["rules"]:
            loaded[rule["name"]] = rule
    for alert, expr in alert_rules():
        status, detail = query(base, expr)
        rule = loaded.get(alert)
        if status == "ERROR":
            pass
        elif rule is None:
            status, detail = "ERROR", "not loaded by Prometheus"
        elif rule.get("health") != "ok":
            status, detail = "ERROR", f"rule health {rule.get('health')}: {rule.get('lastError', '')}"
        else:
            detail = f"{rule['state']}, {detail.replace('no series', 'no series: nothing wrong now')}"
            status = "OK"
        report(status, f"alert {alert}", detail, expr, status != "OK")

    if failures:
        print(f"--- {len(failures)} failed:")
        for failure in failures:
            print(f"  {failure}")
        sys.exit(1)
    print("--- every panel query returned data, every metric exists, every alert rule evaluates")


{"list": cmd_list, "config": cmd_config, "check": cmd_check}[command](*args)
PY
}

if [ "${1:-}" = "--list" ]; then
  helper list
  exit 0
fi
if [ $# -ne 0 ] && [ $# -ne 2 ]; then
  echo "usage: $0 [SALES_URL DELIVERY_URL | --list]" >&2
  exit 2
fi

if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null; then
  echo "--- installing Debian's prometheus package (promtool, prometheus)"
  sudo=()
  [ "$(id -u)" -eq 0 ] || sudo=(sudo)
  # A fresh machine's package lists may be empty or old; update only then, it is slow.
  if ! "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus; then
    "${sudo[@]}" apt-get update
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus
  fi
fi

promtool check rules "$rules"
promtool test rules "$tests"
# The configurations for a local run and for docker-compose.yml (each loads the rules too).
promtool check config infra/prometheus/prometheus.yml >/dev/null
promtool check config infra/prometheus/prometheus.compose.yml >/dev/null

[ $# -eq 2 ] || exit 0

tmp="$(mktemp -d)"
prometheus_pid=""
cleanup() {
  if [ -n "$prometheus_pid" ]; then
    kill "$prometheus_pid" 2>/dev/null || true
    wait "$prometheus_pid" 2>/dev/null || true
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT

port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
helper config "$tmp/prometheus.yml" "$1" "$2"
promtool check config "$tmp/prometheus.yml" >/dev/null
echo "--- starting Prometheus on 127.0.0.1:$port (log: $tmp/prometheus.log, removed on exit)"
prometheus --config.file="$tmp/prometheus.yml" --storage.tsdb.path="$tmp/data" \
  --web.listen-address="127.0.0.1:$port" >"$tmp/prometheus.log" 2>&1 &
prometheus_pid=$!

if ! helper check "http://127.0.0.1:$port"; then
  if ! kill -0 "$prometheus_pid" 2>/dev/null; then
    echo "Prometheus exited; the end of its log:" >&2
    tail -n 20 "$tmp/prometheus.log" >&2
  fi
  exit 1
fi
