#!/usr/bin/env bash
# A real SMTP server for the notification tests: aiosmtpd (pinned), installed in a virtualenv of its own
# under ${CARGO_TARGET_DIR:-target}. Each test starts its own on a free port; every message it accepts
# is written to a Maildir (one file per message under MAILDIR/new), where the test reads it.
#   bash infra/scripts/smtp.sh --install          # install only
#   bash infra/scripts/smtp.sh PORT MAILDIR        # serve on 127.0.0.1:PORT in the foreground until killed
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"

target_dir="${CARGO_TARGET_DIR:-$root/target}"
mkdir -p "$target_dir" && target_dir="$(cd "$target_dir" && pwd)"
venv="$target_dir/smtp-tools"
if ! "$venv/bin/python" -c 'import aiosmtpd; assert aiosmtpd.__version__ == "1.4.6"' 2>/dev/null; then
  echo "--- installing aiosmtpd (pinned in infra/smtp/requirements.txt)"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check --require-hashes --only-binary :all: \
    -r "$root/infra/smtp/requirements.txt"
fi
[ "${1:-}" = "--install" ] && exit 0

[ $# -eq 2 ] || { echo "usage: $0 PORT MAILDIR" >&2; exit 2; }
mkdir -p "$2/tmp" "$2/new" "$2/cur"
exec "$venv/bin/python" -m aiosmtpd --nosetuid --listen "127.0.0.1:$1" --class aiosmtpd.handlers.Mailbox "$2"
