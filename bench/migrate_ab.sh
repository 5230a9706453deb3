#!/usr/bin/env bash
# Interleaved A/B of migrations: two quiver builds demote and then promote
# the same version in turn, page cache dropped before each command (needs
# root). Prints each run, then the medians.
#   bench/migrate_ab.sh QUIVER_A QUIVER_B STORE_ROOT MODEL@REF [ROUNDS=5]
# The store must have a cold tier (quiver init --cold) and MODEL@REF hot.
set -euo pipefail
[ $# -ge 4 ] || { sed -n '2,6p' "$0"; exit 2; }
A=$1 B=$2 REF=$4 ROUNDS=${5:-5}
export QUIVER_ROOT=$3
LOG=$(mktemp)
trap 'rm -f "$LOG"' EXIT
drop() { sync; echo 3 >/proc/sys/vm/drop_caches; }
run() { # LABEL BIN OP: one timed command, appended to LOG
  local wall user sys
  drop
  TIMEFORMAT="%R %U %S"
  { time "$2" "$3" "$REF" >/dev/null 2>&1; } 2>"$LOG.t" || { echo "$1 $3 failed"; exit 1; }
  read -r wall user sys <"$LOG.t"
  printf '%s %-7s wall %6.2f s  user %5.2f s  sys %5.2f s\n' "$1" "$3" "$wall" "$user" "$sys" | tee -a "$LOG"
}
for i in $(seq "$ROUNDS"); do
  for x in A B; do
    bin=$A; [ $x = B ] && bin=$B
    run "$x" "$bin" demote
    run "$x" "$bin" promote
  done
done
rm -f "$LOG.t"
echo "medians of $ROUNDS (wall s, user s, sys s):"
for x in A B; do
  for op in demote promote; do
    grep "^$x $op " "$LOG" | awk -v x="$x" -v op="$op" '
      { w[NR] = $4; u[NR] = $7; s[NR] = $10 }
      function med(a, n,   i, j, t) {
        for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
        return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2 }
      END { printf "%s %-7s %6.2f %5.2f %5.2f\n", x, op, med(w, NR), med(u, NR), med(s, NR) }'
  done
done
