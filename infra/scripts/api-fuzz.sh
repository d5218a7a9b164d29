#!/usr/bin/env bash
# Fuzzes running services against their own OpenAPI documents with schemathesis, every check on: each
# answer documented (status, content type, headers, schema), schema-valid requests accepted, schema-invalid
# ones refused, no 5xx, authentication enforced, 405s that say what is allowed. Settings and the rules JSON
# Schema cannot state are in infra/fuzz/. Schemathesis is pinned and installed in a virtualenv of its own
# under ${CARGO_TARGET_DIR:-target}.
#   bash infra/scripts/api-fuzz.sh --install                      # install only
#   FUZZ_TOKEN=<admin token> bash infra/scripts/api-fuzz.sh URL... # fuzz the service at each URL
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"

target_dir="${CARGO_TARGET_DIR:-$root/target}"
mkdir -p "$target_dir" && target_dir="$(cd "$target_dir" && pwd)"
venv="$target_dir/fuzz-tools"
if ! "$venv/bin/schemathesis" --version 2>/dev/null | grep -q '4.32.5'; then
  echo "--- installing schemathesis"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check schemathesis==4.32.5
fi
[ "${1:-}" = "--install" ] && exit 0

: "${FUZZ_TOKEN:?FUZZ_TOKEN must hold a token with every scope (the admin client)}"
[ $# -gt 0 ] || { echo "usage: FUZZ_TOKEN=... $0 URL..." >&2; exit 2; }
export FUZZ_TOKEN
# Schemathesis keeps a cache in its working directory: keep it out of the source tree.
mkdir -p "$target_dir/fuzz-run"
cd "$target_dir/fuzz-run"
status=0
for url in "$@"; do
  echo "--- schemathesis: $url/openapi.json"
  # The hooks module is imported by name, from infra/fuzz.
  PYTHONPATH="$root/infra/fuzz" SCHEMATHESIS_HOOKS=hooks \
    "$venv/bin/schemathesis" --config-file "$root/infra/fuzz/schemathesis.toml" \
    run "$url/openapi.json" --seed "${FUZZ_SEED:-20261204}" --no-color || status=1
done
exit $status
