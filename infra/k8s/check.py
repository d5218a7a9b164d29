"""Checks the Kubernetes manifests against the services they run (run by infra/scripts/k8s-check.sh).

- Renders each overlay the way kustomize does for the features they use (resources, namespace,
  replicas, images, strategic-merge patches by kind and name) into a file for kubernetes-validate; a
  patch whose target the base lacks is an error.
- Every environment variable a binary reads (its `--help`) is set for the Deployment that runs it, by
  its ConfigMaps and Secret, and nothing else is (a misspelt key would silently do nothing).
- The probes and the Prometheus scrape path answer 200 on the running services (`orderflow dev`).
- The prod overlay runs 3 Sales and 2 Delivery replicas, and the autoscalers start there.

Usage: check.py RENDER_DIR BIN_DIR
"""

import copy
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import yaml

K8S = os.path.dirname(os.path.abspath(__file__))


def load(path):
    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d]


def key(obj):
    return (obj["kind"], obj["metadata"]["name"])


def merge(base, patch):
    """A strategic merge as kustomize does it for these manifests: maps key by key, lists of named
    items (containers, ports) item by name, anything else replaced."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for k, v in patch.items():
            out[k] = merge(base[k], v) if k in base else v
        return out
    named = lambda items: isinstance(items, list) and all(isinstance(i, dict) and "name" in i for i in items)
    if named(base) and named(patch):
        out = [dict(i) for i in base]
        for item in patch:
            same = [n for n, i in enumerate(out) if i["name"] == item["name"]]
            if same:
                out[same[0]] = merge(out[same[0]], item)
            else:
                out.append(item)
        return out
    return patch


def render(directory):
    """The objects of a kustomization directory, in order."""
    spec = load(os.path.join(directory, "kustomization.yaml"))[0]
    objects = []
    for resource in spec.get("resources", []):
        path = os.path.join(directory, resource)
        objects.extend(render(path) if os.path.isdir(path) else load(path))
    by_key = {key(o): n for n, o in enumerate(objects)}
    for patch in spec.get("patches", []):
        for change in load(os.path.join(directory, patch["path"])):
            target = by_key.get(key(change))
            if target is None:
                sys.exit(f"{directory}: patch {patch['path']} targets {key(change)}, which the base does not have")
            objects[target] = merge(objects[target], change)
    for replicas in spec.get("replicas", []):
        target = by_key.get(("Deployment", replicas["name"]))
        if target is None:
            sys.exit(f"{directory}: replicas for a Deployment the base does not have: {replicas['name']}")
        objects[target]["spec"]["replicas"] = replicas["count"]
    for image in spec.get("images", []):
        for obj in objects:
            for container in obj.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
                name, _, _ = container["image"].partition(":")
                if name == image["name"]:
                    container["image"] = f"{name}:{image['newTag']}"
    if "namespace" in spec:
        for obj in objects:
            obj["metadata"]["namespace"] = spec["namespace"]
    for label in spec.get("labels", []):
        for obj in objects:
            obj["metadata"].setdefault("labels", {}).update(label["pairs"])
    return copy.deepcopy(objects)


def variables_read(binary):
    help_text = subprocess.run([binary, "--help"], check=True, capture_output=True, text=True).stdout
    return set(re.findall(r"\[env: ([A-Z0-9_]+)", help_text))


def variables_set(deployment, objects):
    by_key = {key(o): o for o in objects}
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    names = {e["name"] for e in container.get("env", [])}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            names |= set(by_key[("ConfigMap", source["configMapRef"]["name"])]["data"])
        if "secretRef" in source:
            secret = by_key[("Secret", source["secretRef"]["name"])]
            names |= set(secret.get("stringData", {})) | set(secret.get("data", {}))
    return names


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url):
    """The status of a GET, or None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return None


def main(render_dir, bin_dir):
    os.makedirs(render_dir, exist_ok=True)
    rendered = {}
    for overlay in ("dev", "prod"):
        objects = render(os.path.join(K8S, "overlays", overlay))
        with open(os.path.join(render_dir, f"{overlay}.yaml"), "w", encoding="utf-8") as f:
            yaml.safe_dump_all(objects, f, sort_keys=False)
        rendered[overlay] = objects

    deployments = {o["metadata"]["name"]: o for o in rendered["prod"] if o["kind"] == "Deployment"}
    for name, deployment in deployments.items():
        read, written = variables_read(os.path.join(bin_dir, name)), variables_set(deployment, rendered["prod"])
        if read - written:
            sys.exit(f"{name} reads {sorted(read - written)}, which its ConfigMaps and Secret do not set")
        if written - read:
            sys.exit(f"{name}'s ConfigMaps and Secret set {sorted(written - read)}, which it does not read")
    replicas = {name: d["spec"]["replicas"] for name, d in deployments.items()}
    if replicas != {"sales-api": 3, "delivery-api": 2}:
        sys.exit(f"the prod overlay runs {replicas}, not 3 Sales and 2 Delivery replicas")
    autoscalers = {o["metadata"]["name"]: o["spec"]["minReplicas"] for o in rendered["prod"] if o["kind"] == "HorizontalPodAutoscaler"}
    if autoscalers != replicas:
        sys.exit(f"the prod autoscalers start at {autoscalers}, not at the replicas {replicas}")

    ports = {"sales-api": free_port(), "delivery-api": free_port()}
    dev = subprocess.Popen(
        [os.path.join(bin_dir, "orderflow"), "dev", "--sales-addr", f"127.0.0.1:{ports['sales-api']}",
         "--delivery-addr", f"127.0.0.1:{ports['delivery-api']}", "--issuer-addr", f"127.0.0.1:{free_port()}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while any(get(f"http://127.0.0.1:{p}/health/live") != 200 for p in ports.values()):
            if time.monotonic() > deadline or dev.poll() is not None:
                sys.exit("orderflow dev did not come up")
            time.sleep(0.2)
        for name, deployment in deployments.items():
            pod = deployment["spec"]["template"]
            (container,) = pod["spec"]["containers"]
            paths = [container[p]["httpGet"]["path"] for p in ("livenessProbe", "readinessProbe", "startupProbe")]
            paths.append(pod["metadata"]["annotations"]["prometheus.io/path"])
            for path in paths:
                status = get(f"http://127.0.0.1:{ports[name]}{path}")
                if status != 200:
                    sys.exit(f"{name}: {path} (a probe or the scrape path) answers {status}, not 200")
    finally:
        dev.terminate()
        dev.wait(timeout=30)
    print("manifests: every variable set, probes and scrape paths answer, prod runs 3 + 2 replicas")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
