#!/usr/bin/env bash
# The whole test suite: formatting, lints, then every test of every crate.
# It installs and starts what the tests need: the Rust tools, PostgreSQL, RabbitMQ, Redis, Kafka (tansu),
# the OAuth2 server (oidc-provider), schemathesis (API fuzzing), aiosmtpd (an SMTP server for the
# notification tests) and Chromium with chromedriver (the console's browser tests). Adapter and end-to-end
# tests run against the real servers, each test in a schema, vhost, key prefix or topic of its own. Run it
# from anywhere:
#   bash infra/scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/../.."

if ! cargo nextest --version >/dev/null 2>&1; then
  echo "--- installing cargo-nextest"
  cargo install cargo-nextest --locked
fi
if ! cargo deny --version 2>/dev/null | grep -q '0.20.2'; then
  echo "--- installing cargo-deny"
  cargo install cargo-deny --version 0.20.2 --locked
fi
rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy

bash infra/scripts/postgres.sh
bash infra/scripts/rabbitmq.sh
bash infra/scripts/redis.sh
bash infra/scripts/kafka.sh start
bash infra/scripts/oauth.sh start
echo "--- the OAuth2 server's own tests (infra/oauth: client credentials, the console's sign-in)"
(cd infra/oauth && npm test)

echo "--- cargo fmt --check"
cargo fmt --all -- --check

echo "--- cargo deny: licences, banned duplicates, sources (deny.toml)"
cargo deny --locked check licenses bans sources
if [ -d "${RUSTSEC_ADVISORY_DBS:-}" ]; then
  echo "--- cargo deny: advisories, from the RustSec database in $RUSTSEC_ADVISORY_DBS"
  cargo deny --locked check --disable-fetch advisories
else
  echo "--- cargo deny: advisories SKIPPED: no local RustSec database. This machine cannot fetch it; set"
  echo "    RUSTSEC_ADVISORY_DBS to a copy of \$CARGO_HOME/advisory-dbs from a machine that ran 'cargo deny fetch'."
fi

echo "--- cargo clippy"
cargo clippy --workspace --all-targets --all-features --locked -- -D warnings

echo "--- cargo check of each service alone (as the Dockerfile builds them: no features unified with the CLI)"
cargo check --locked -p sales-api -p delivery-api

echo "--- cargo build (the end-to-end tests run the service binaries as processes)"
cargo build --workspace --bins --all-features --locked

echo "--- Kubernetes manifests (infra/k8s)"
bash infra/scripts/k8s-check.sh

echo "--- alert rules and their unit tests (infra/prometheus; installs Debian's prometheus if missing)"
bash infra/scripts/prometheus-check.sh

echo "--- schemathesis for the API fuzzing test (infra/scripts/api-fuzz.sh; pinned, in a virtualenv)"
bash infra/scripts/api-fuzz.sh --install

echo "--- aiosmtpd for the notification tests (infra/scripts/smtp.sh; pinned, in a virtualenv)"
bash infra/scripts/smtp.sh --install

echo "--- Chromium and chromedriver for the console's browser tests (infra/scripts/browser.sh; Debian's packages)"
bash infra/scripts/browser.sh --install

echo "--- cargo nextest"
profile=default
[ "${CI:-}" = "true" ] && profile=ci
cargo nextest run --workspace --all-features --locked --profile "$profile"
