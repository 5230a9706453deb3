#!/usr/bin/env bash
# Interleaved A/B of migrations: two quiver builds demote and then promote
# the same version in turn, page cache dropped before each command (needs
# root). Prints each run, then the medians, and each median's rate against
# the limit a migration writes at: the destination tier's folder written
# with O_DIRECT (dd, 1 GiB in 2 MiB blocks, fsynced), measured in the run.
#   bench/migrate_ab.sh QUIVER_A QUIVER_B STORE_ROOT MODEL@REF [ROUNDS=5]
# The store must have a cold tier (quiver init --cold) and MODEL@REF hot.
set -euo pipefail
[ $# -ge 4 ] || { sed -n '2,8p' "$0"; exit 2; }
A=$1 B=$2 REF=$4 ROUNDS=${5:-5}
export QUIVER_ROOT=$3
LOG=$(mktemp)
trap 'rm -f "$LOG" "$LOG.t" "${HOT:-/nonexistent}/.qv-bench-write" "${COLD:-/nonexistent}/.qv-bench-write"' EXIT
drop() { sync; echo 3 >/proc/sys/vm/drop_caches; }
run() { # LABEL BIN OP: one timed command, appended to LOG
  local wall user sys
  drop
  TIMEFORMAT="%R %U %S"
  { time "$2" "$3" "$REF" >/dev/null 2>&1; } 2>"$LOG.t" || { echo "$1 $3 failed"; exit 1; }
  read -r wall user sys <"$LOG.t"
  printf '%s %-7s wall %6.2f s  user %5.2f s  sys %5.2f s\n' "$1" "$3" "$wall" "$user" "$sys" | tee -a "$LOG"
}
# an untimed round trip first: the bytes a migration moves (raw) and writes
# to the cold tier (stored)
read -r RAW STORED < <("$B" demote "$REF" --json 2>/dev/null | python3 -c '
import json, sys
m = json.load(sys.stdin)
print(m["raw_bytes"], m["stored_bytes"])')
"$B" promote "$REF" >/dev/null 2>&1
read -r HOT COLD < <("$B" status --json | python3 -c '
import json, sys
t = {x["tier"]: x["dir"] for x in json.load(sys.stdin)["tiers"]}
print(t["hot"], t["cold"])')
write_rate() { # DIR: GB/s of 1 GiB written with O_DIRECT and fsynced
  local f=$1/.qv-bench-write t0 t1
  drop
  t0=$(date +%s.%N)
  dd if=/dev/zero of="$f" bs=2M count=512 oflag=direct conv=fsync status=none
  t1=$(date +%s.%N)
  rm -f "$f"
  echo "$t0 $t1" | awk '{printf "%.3f", 1073741824 / ($2 - $1) / 1e9}'
}
W_HOT=$(write_rate "$HOT") W_COLD=$(write_rate "$COLD")
echo "$REF: moves $RAW bytes raw, $STORED stored cold; direct writes: hot tier $W_HOT GB/s, cold tier $W_COLD GB/s"
for i in $(seq "$ROUNDS"); do
  for x in A B; do
    bin=$A; [ $x = B ] && bin=$B
    run "$x" "$bin" demote
    run "$x" "$bin" promote
  done
done
rm -f "$LOG.t"
echo "medians of $ROUNDS (wall s, user s, sys s; bytes over wall time):"
for x in A B; do
  for op in demote promote; do
    grep "^$x $op " "$LOG" | awk -v x="$x" -v op="$op" -v raw="$RAW" -v stored="$STORED" -v wh="$W_HOT" -v wc="$W_COLD" '
      { w[NR] = $4; u[NR] = $7; s[NR] = $10 }
      function med(a, n,   i, j, t) {
        for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
        return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2 }
      END { m = med(w, NR); r = raw / m / 1e9
            if (op == "promote") { wr = r; lim = wh; t = "hot" } else { wr = stored / m / 1e9; lim = wc; t = "cold" }
            printf "%s %-7s %6.2f %5.2f %5.2f   %.3f GB/s raw, writes %.3f GB/s: %.2f of the %s tier'"'"'s rate\n",
                   x, op, m, med(u, NR), med(s, NR), r, wr, wr / lim, t }'
  done
done
