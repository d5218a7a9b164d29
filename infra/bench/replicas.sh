#!/usr/bin/env bash
# One Sales replica against two, end to end (issue #14): alternating bursts of `e2e.sh burst`, each
# sales-api under the same CPU limit, as pods with a CPU limit run them; prints every burst, the means and
# the ratio two ÷ one. Not a test; see infra/bench/README.md ("Replicas as pods run them").
#
#   infra/bench/replicas.sh [PAIRS]      (default 3)
#
# SALES_CPU (default 0.25 cores per sales-api; `none` runs them unconfined), SKIP_BUILD=1 and the rest of
# e2e.sh's environment pass through. The pairs alternate which goes first, so a machine whose speed drifts
# during the run favours neither.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
pairs="${1:-3}"
cpu="${SALES_CPU:-0.25}"
[ "$cpu" = none ] && cpu=""
logs="$(mktemp -d -t orderflow-bench-replicas.XXXXXX)"

burst() { # $1 = replicas, $2 = log; prints the end-to-end rate
  SALES_REPLICAS="$1" SALES_CPU="$cpu" bash "$root/infra/bench/e2e.sh" burst >"$2" 2>&1 ||
    { echo "the burst with $1 replica(s) failed; see $2" >&2; exit 1; }
  sed -n 's/^E2E_ORDERS_PER_SEC=//p' "$2"
}

# Build once, then reuse the binaries for every burst.
if [ "${SKIP_BUILD:-}" != 1 ]; then
  burst 1 "$logs/warm-up.log" >/dev/null
  export SKIP_BUILD=1
fi
echo "--- $pairs alternating pairs, each sales-api limited to ${cpu:-no limit} cores (logs: $logs)"
one=()
two=()
for i in $(seq 1 "$pairs"); do
  order=(1 2)
  [ $((i % 2)) = 0 ] && order=(2 1)
  for n in "${order[@]}"; do
    rate="$(burst "$n" "$logs/pair-$i-$n.log")"
    echo "pair $i: $n replica(s) $rate orders/s"
    if [ "$n" = 1 ]; then one+=("$rate"); else two+=("$rate"); fi
  done
done
awk -v one="${one[*]}" -v two="${two[*]}" 'BEGIN {
  n = split(one, a, " "); split(two, b, " ")
  for (i = 1; i <= n; i++) { s1 += a[i]; s2 += b[i] }
  printf "one replica %.1f, two replicas %.1f orders/s on the means: two ÷ one = %.2f\n", s1 / n, s2 / n, s2 / s1
}'
