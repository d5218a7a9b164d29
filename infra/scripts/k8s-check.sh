#!/usr/bin/env bash
# Validates infra/k8s offline: yamllint, then each overlay rendered and checked against the Kubernetes
# 1.33 schemas (kubernetes-validate, strict), then against the service binaries (infra/k8s/check.py).
# docker-compose.yml is checked against the same binaries (infra/scripts/compose_check.py): no Docker
# engine is needed for either.
# Needs the binaries built (cargo build --workspace --bins). The Python tools are pinned and installed in
# a virtualenv of their own under ${CARGO_TARGET_DIR:-target}.
set -euo pipefail
cd "$(dirname "$0")/../.."

target_dir="${CARGO_TARGET_DIR:-target}"
venv="$target_dir/k8s-tools"
if ! "$venv/bin/kubernetes-validate" --version 2>/dev/null | grep -q '1.33.1'; then
  echo "--- installing yamllint and kubernetes-validate"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check yamllint==1.38.0 kubernetes-validate==1.33.1
fi

"$venv/bin/yamllint" --strict -d "{extends: default, rules: {line-length: {max: 120}, document-start: disable}}" infra/k8s
rendered="$target_dir/k8s-rendered"
"$venv/bin/python" infra/k8s/check.py "$rendered" "$target_dir/debug"
"$venv/bin/kubernetes-validate" --kubernetes-version 1.33.0 --strict --quiet "$rendered/dev.yaml" "$rendered/prod.yaml"
echo "--- infra/k8s: valid against Kubernetes 1.33"
"$venv/bin/python" infra/scripts/compose_check.py "$target_dir/debug"
