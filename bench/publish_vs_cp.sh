#!/usr/bin/env bash
# Publish throughput against the machine's own copy rate, in one run.
#
# Generates a ~2 GB bf16 model (Hugging Face folder), then, REPS times each:
#   copy:    cp -r MODEL DST && sync            (same file system as the store)
#   publish: quiver publish (fsyncs its shards) && sync
# Page caches are dropped before each timing where the machine permits, so
# both read the source from disk the same way. Prints each timing and the
# ratio of the medians: publish throughput / copy throughput (target >= 0.7).
#
#   bench/publish_vs_cp.sh [WORKDIR]     (QUIVER=path/to/quiver, REPS=3,
#                                         HIDDEN=2048 LAYERS=12 VOCAB=32000)
set -euo pipefail
SRC=$(cd "$(dirname "$0")/.." && pwd)
Q=${QUIVER:-$SRC/build/cli/quiver}
W=${1:-$SRC/build/bench-publish}
REPS=${REPS:-3}
HIDDEN=${HIDDEN:-2048} LAYERS=${LAYERS:-12} VOCAB=${VOCAB:-32000}
[ -x "$Q" ] || { echo "no quiver binary at $Q (build first)" >&2; exit 1; }
mkdir -p "$W"
MODEL=$W/model
if [ ! -f "$MODEL/model.safetensors.index.json" ]; then
  echo "generating model (hidden $HIDDEN, layers $LAYERS, vocab $VOCAB)..."
  python3 "$SRC/python/tools/gen_model.py" "$MODEL" --shards 4 --hidden "$HIDDEN" \
    --layers "$LAYERS" --vocab "$VOCAB" >/dev/null
fi
BYTES=$(du -sb "$MODEL" | cut -f1)

drop() {
  sync
  if echo 3 > /proc/sys/vm/drop_caches 2>/dev/null; then DROPPED=yes; else DROPPED=no; fi
}
now() { date +%s.%N; }

cp_t=(); pub_t=()
for r in $(seq "$REPS"); do
  rm -rf "$W/copy" "$W/store"; sync
  drop; t0=$(now); cp -r "$MODEL" "$W/copy"; sync; t1=$(now)
  cp_t+=("$(echo "$t1 - $t0" | bc -l)")
  rm -rf "$W/copy"; sync
  drop; t0=$(now); "$Q" --root "$W/store" publish bench/model "$MODEL" >/dev/null; sync; t1=$(now)
  pub_t+=("$(echo "$t1 - $t0" | bc -l)")
  printf 'rep %d: cp+sync %.3f s   publish+sync %.3f s\n' "$r" "${cp_t[-1]}" "${pub_t[-1]}"
done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
mc=$(median "${cp_t[@]}"); mp=$(median "${pub_t[@]}")
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(df -T "$W" | awk 'NR==2 {print $2}') on $(df "$W" | awk 'NR==2 {print $1}'); caches dropped: $DROPPED"
printf 'model: %d bytes\n' "$BYTES"
printf 'copy    (cp -r + sync):  median %.3f s  %.3f GB/s\n' "$mc" "$(echo "$BYTES / $mc / 1000000000" | bc -l)"
printf 'publish (quiver + sync): median %.3f s  %.3f GB/s\n' "$mp" "$(echo "$BYTES / $mp / 1000000000" | bc -l)"
printf 'ratio publish/copy throughput: %.3f (target >= 0.70)\n' "$(echo "$mc / $mp" | bc -l)"
rm -rf "$W/store" "$W/copy"
