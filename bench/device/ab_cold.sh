#!/usr/bin/env bash
# A against B: cold loads of one model by two builds of quiver, in turned
# order (A then B in odd repetitions, B then A in even ones), caches dropped
# before each, on the lent GPU machine or any other. For a change whose
# effect is smaller than the disk's drift between repetitions: each
# repetition's two loads run back to back, and the end prints, per build,
# the medians of the load's time and of its first tensor's, both counted
# after device init, and the median of B's time over A's in the same
# repetition.
#
#   bench/device/ab_cold.sh QUIVER_A QUIVER_B
#     (W=/tmp/qvab-HIDDEN-LAYERS-VOCAB, HIDDEN=1024 LAYERS=4 VOCAB=32000: a 0.27 GB BF16 model,
#      where a load's fixed costs show; REPS=10, DEVICE=cuda:0)
# Both builds read the same store: the first one publishes and demotes it.
set -euo pipefail
QA=${1:?usage: ab_cold.sh QUIVER_A QUIVER_B} QB=${2:?usage: ab_cold.sh QUIVER_A QUIVER_B}
SRC=$(cd "$(dirname "$0")/../.." && pwd)
REPS=${REPS:-10} DEVICE=${DEVICE:-cuda:0}
HIDDEN=${HIDDEN:-1024} LAYERS=${LAYERS:-4} VOCAB=${VOCAB:-32000}
W=${W:-/tmp/qvab-$HIDDEN-$LAYERS-$VOCAB} # a folder per model: an old one is reused as it is
source "$SRC/bench/common.sh" # cold_fixture
drop() { sync; echo 3 > /proc/sys/vm/drop_caches; } # fails loudly
cold_fixture "$QA" "$W" 4 "$HIDDEN" "$LAYERS" "$VOCAB" BF16
RES=$(mktemp)
BENCH_UNDO+="rm -f $RES;"
one() { # build-name binary rep
  drop
  "$2" --root "$R" load bench/cold@v1 --device "$DEVICE" --io direct --json | python3 -c '
import json,sys; d=json.load(sys.stdin)
if d["cold_bytes"] != d["bytes"]: sys.exit("not a cold load: %d of %d bytes cold" % (d["cold_bytes"], d["bytes"]))
i = d["device_init_seconds"]
print(sys.argv[1], sys.argv[2], "%.4f %.4f %d" % (d["seconds"] - i, d["first_tensor_seconds"] - i, d["bytes"]))' "$1" "$3" |
    tee -a "$RES"
}
for r in $(seq "$REPS"); do
  if [ $((r % 2)) = 1 ]; then one A "$QA" "$r"; one B "$QB" "$r"; else one B "$QB" "$r"; one A "$QA" "$r"; fi
done
python3 - "$RES" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
by = {}
for name, rep, secs, first, nbytes in rows:
    by.setdefault(name, {})[rep] = (float(secs), float(first), int(nbytes))
for name in ("A", "B"):
    v = list(by[name].values())
    s = statistics.median(x[0] for x in v)
    print("%s: median %.4f s after device init (%.3f GB/s raw), first tensor after device init median %.4f s, %d loads of %d bytes"
          % (name, s, v[0][2] / s / 1e9, statistics.median(x[1] for x in v), len(v), v[0][2]))
ratios = [by["B"][r][0] / by["A"][r][0] for r in by["A"] if r in by["B"]]
diffs = [by["B"][r][0] - by["A"][r][0] for r in by["A"] if r in by["B"]]
print("B / A by repetition: median %.3f (B faster in %d of %d); B - A median %+.4f s"
      % (statistics.median(ratios), sum(x < 1 for x in ratios), len(ratios), statistics.median(diffs)))
PY
