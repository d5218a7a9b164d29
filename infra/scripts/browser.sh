#!/usr/bin/env bash
# A real browser for the web console's end-to-end tests (tests/tests/console_in_a_browser.rs): Debian's
# `chromium` and `chromium-driver` (chromedriver, the WebDriver server). Each test starts its own
# chromedriver on a free port, which drives a headless Chromium.
#   bash infra/scripts/browser.sh --install       # install both when either is missing, print their versions
set -euo pipefail

[ "${1:-}" = "--install" ] || { echo "usage: $0 --install" >&2; exit 2; }

if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  echo "--- installing Debian's chromium and chromium-driver packages"
  sudo=()
  [ "$(id -u)" -eq 0 ] || sudo=(sudo)
  # A fresh machine's package lists may be empty or old; update only then, it is slow.
  if ! "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium chromium-driver; then
    "${sudo[@]}" apt-get update
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium chromium-driver
  fi
fi

chromium --version
chromedriver --version
