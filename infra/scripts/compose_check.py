"""Checks docker-compose.yml against the services it runs (run by infra/scripts/k8s-check.sh): no Docker
engine is needed, so the file cannot drift unnoticed from the binaries on a machine without one.

- Every environment variable set for sales-api or delivery-api is one the binary reads (its `--help`,
  plus `RUST_LOG` and the standard `OTEL_*`): a misspelt key would silently do nothing. Every variable it
  needs (no default) is set.
- Each service publishes the port its `HTTP_ADDR` listens on; `orderflow dev` is given only flags it has.
- `depends_on` names services of the file; bind mounts name paths of the repository; Prometheus scrapes
  the services by their compose names and ports.

Usage: compose_check.py BIN_DIR
"""

import os
import re
import subprocess
import sys

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Read by the services outside their command line (the log filter and OpenTelemetry's standard set).
OUTSIDE_HELP = re.compile(r"^(RUST_LOG|OTEL_[A-Z_]+)$")


def help_text(binary, *args):
    return subprocess.run([binary, *args, "--help"], check=True, capture_output=True, text=True).stdout


def variables(text):
    """The variables a binary reads, and those of them it needs: no default and required in its usage."""
    usage = text.split("Options:")[0]
    read, needed = set(), set()
    for block in re.split(r"\n(?=\s+(?:-\w, )?--)", text):
        env = re.search(r"\[env: ([A-Z0-9_]+)[=\]]", block)
        if not env:
            continue
        read.add(env.group(1))
        flag = re.match(r"\s+(?:-\w, )?(--[a-z0-9-]+)", block)
        if flag and "[default:" not in block and f"{flag.group(1)} <" in usage:
            needed.add(env.group(1))
    return read, needed


def fail(message):
    sys.exit(f"docker-compose.yml: {message}")


def main(bin_dir):
    with open(os.path.join(ROOT, "docker-compose.yml"), encoding="utf-8") as f:
        compose = yaml.safe_load(f)
    services = compose["services"]
    published = {}
    for name, service in services.items():
        for dependency in service.get("depends_on", []):
            if dependency not in services:
                fail(f"{name} depends on {dependency}, which is not a service")
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith(".") and not os.path.exists(os.path.join(ROOT, source)):
                fail(f"{name} mounts {source}, which the repository does not have")
        published[name] = {int(p.split(":")[-1]) for p in service.get("ports", [])}

    with open(os.path.join(ROOT, "Dockerfile"), encoding="utf-8") as f:
        dockerfile = f.read()
    for name, service in services.items():
        command = service.get("command", [])
        binary = command[0] if command else None
        if binary not in ("sales-api", "delivery-api", "orderflow"):
            continue
        if binary not in dockerfile:
            fail(f"{name} runs {binary}, which the Dockerfile does not install")
        if binary == "orderflow":
            flags = set(re.findall(r"(--[a-z0-9-]+)", help_text(os.path.join(bin_dir, binary), command[1])))
            for argument in command[2:]:
                if argument.split("=")[0] not in flags:
                    fail(f"{name}: `orderflow {command[1]}` has no {argument.split('=')[0]}")
            continue
        read, needed = variables(help_text(os.path.join(bin_dir, binary)))
        environment = service.get("environment", {})
        unknown = sorted(v for v in environment if v not in read and not OUTSIDE_HELP.match(v))
        if unknown:
            fail(f"{name} sets {unknown}, which {binary} does not read")
        missing = sorted(needed - set(environment))
        if missing:
            fail(f"{name} does not set {missing}, which {binary} needs")
        port = int(str(environment["HTTP_ADDR"]).rsplit(":", 1)[1])
        if port not in published[name]:
            fail(f"{name} listens on {port} (HTTP_ADDR) but publishes {sorted(published[name])}")

    prometheus = next(s for s in services.values() if str(s.get("image", "")).startswith("prom/prometheus"))
    config = next(a.split("=", 1)[1] for a in prometheus["command"] if a.startswith("--config.file="))
    config = os.path.join(ROOT, "infra", "prometheus", os.path.basename(config))
    with open(config, encoding="utf-8") as f:
        jobs = yaml.safe_load(f)["scrape_configs"]
    for job in jobs:
        for target in (t for c in job["static_configs"] for t in c["targets"]):
            host, port = target.rsplit(":", 1)
            if host not in services:
                fail(f"Prometheus job {job['job_name']} scrapes {host}, which is not a service")
            listening = str(services[host].get("environment", {}).get("HTTP_ADDR", ""))
            if not listening.endswith(f":{port}"):
                fail(f"Prometheus job {job['job_name']} scrapes port {port}, but {host} listens on {listening}")
    print("docker-compose.yml: every variable read, needed ones set, ports, mounts and scrape targets agree")


if __name__ == "__main__":
    main(sys.argv[1])
