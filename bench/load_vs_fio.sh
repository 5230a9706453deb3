#!/usr/bin/env bash
# Cold load throughput against the disk's own limit, in one run.
#
# Publishes a generated ~2 GB bf16 model, then REPS times each, with the page
# cache dropped before every measurement (when the machine permits):
#   (a) fio reading the same shard files: io_uring, O_DIRECT, fixed buffers and
#       files, the same queue depth and block size as quiver; the better of
#       4 KiB and huge-page buffers (bench/common.sh);
#   (b) quiver load --device cpu --io direct.
# Prints each run and the ratio of the medians (b)/(a) (target >= 0.95).
# QD and CHUNK sweep: QDS="4 16 64" CHUNKS="256K 1M 4M" prints one line each.
# Then the disk's limit, as bench/cold_load.sh takes it: fio's 1 MiB reads
# FIO_QDS deep (default 16, 4 and 2), each into 4 KiB and huge-page buffers,
# REPS times; the best setting's median. Each quiver median is also printed
# against it: some disks read faster with fewer reads in flight than quiver
# keeps.
#
#   bench/load_vs_fio.sh [WORKDIR]   (QUIVER=path, REPS=3, HIDDEN/LAYERS/VOCAB,
#                                     QDS may include "auto": the load's default qd,
#                                     FIO_QDS="16 4 2")
set -euo pipefail
SRC=$(cd "$(dirname "$0")/.." && pwd)
Q=${QUIVER:-$SRC/build/cli/quiver}
W=${1:-$SRC/build/bench-load}
REPS=${REPS:-3}
QDS=${QDS:-16} CHUNKS=${CHUNKS:-1M} FIO_QDS=${FIO_QDS:-16 4 2}
HIDDEN=${HIDDEN:-2048} LAYERS=${LAYERS:-12} VOCAB=${VOCAB:-32000}
command -v fio >/dev/null || { echo "fio is not installed (./dev.sh deps)" >&2; exit 1; }
[ -x "$Q" ] || { echo "no quiver binary at $Q (build first)" >&2; exit 1; }
mkdir -p "$W"
if [ ! -f "$W/model/model.safetensors.index.json" ]; then
  echo "generating model (hidden $HIDDEN, layers $LAYERS, vocab $VOCAB)..."
  python3 "$SRC/python/tools/gen_model.py" "$W/model" --shards 4 --hidden "$HIDDEN" \
    --layers "$LAYERS" --vocab "$VOCAB" >/dev/null
fi
if ! "$Q" --root "$W/store" show bench/model >/dev/null 2>&1; then
  "$Q" --root "$W/store" publish bench/model "$W/model" >/dev/null
fi
SHARDS=$W/store/shards   # fio reads every file below it (opendir)
source "$SRC/bench/common.sh"
bench_hugepages
tobytes() { case $1 in *K) echo $(( ${1%K} << 10 ));; *M) echo $(( ${1%M} << 20 ));; *) echo "$1";; esac; }

echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(df -T "$W" | awk 'NR==2 {print $2}') on $(df "$W" | awk 'NR==2 {print $1}'), kernel $(uname -r)"
results=()   # "qd chunk quiver-median" per setting
for qd in $QDS; do
  for chunk in $CHUNKS; do
    fio_r=(); fio_4k=(); fio_huge=(); q_r=(); first=()
    for r in $(seq "$REPS"); do
      # qd "auto": the load's own default (no fio at the same setting; the
      # limit below is the measure)
      qdopt=(--qd "$qd")
      if [ "$qd" = auto ]; then
        qdopt=()
      else
        fio_best "$SHARDS" --bs="$(tobytes "$chunk")" --iodepth="$qd" --fixedbufs=1 \
          --registerfiles=1 || exit 1
        fio_r+=("$FB") fio_4k+=("$F4") fio_huge+=("${FH:-0}")
      fi
      drop
      out=$("$Q" --root "$W/store" load bench/model --device cpu --io direct \
        ${qdopt[@]+"${qdopt[@]}"} --chunk "$chunk" --json)
      [ "$qd" = auto ] && echo "  auto: the load chose qd $(echo "$out" | python3 -c 'import json,sys; print(json.load(sys.stdin)["qd"])')"
      q_r+=("$(echo "$out" | python3 -c 'import json,sys; print(json.load(sys.stdin)["gbps"])')")
      first+=("$(echo "$out" | python3 -c 'import json,sys; print(json.load(sys.stdin)["first_tensor_seconds"])')")
    done
    mq=$(median "${q_r[@]}")
    if [ "$qd" = auto ]; then
      printf 'qd auto chunk %4s: quiver load %.3f GB/s  (first tensor %.3f s; runs %s)\n' "$chunk" "$mq" \
        "$(median "${first[@]}")" "$(printf '%.2f,' "${q_r[@]}")"
      results+=("$qd $chunk $mq")
      continue
    fi
    mf=$(median "${fio_r[@]}")
    printf 'qd %3s chunk %4s: fio %.3f GB/s  quiver load %.3f GB/s  ratio %.3f  (first tensor %.3f s; runs fio %s / quiver %s)\n' \
      "$qd" "$chunk" "$mf" "$mq" "$(echo "$mq / $mf" | bc -l)" "$(median "${first[@]}")" \
      "$(printf '%.2f,' "${fio_r[@]}")" "$(printf '%.2f,' "${q_r[@]}")"
    echo "  fio 4 KiB buffers: $(printf '%.2f,' "${fio_4k[@]}") huge-page buffers: $(printf '%.2f,' "${fio_huge[@]}")"
    results+=("$qd $chunk $mq")
  done
done
FIO=$(mktemp)   # one line per fio run: setting, GB/s
for r in $(seq "$REPS"); do
  for qd in $FIO_QDS; do
    fio_best "$SHARDS" --iodepth="$qd" || exit 1
    echo "qd$qd-4k $F4" >>"$FIO"
    if [ -n "$FH" ]; then echo "qd$qd-huge $FH" >>"$FIO"; fi
  done
done
read -r limit lbest <<<"$(best_median "$FIO")"
rm -f "$FIO"
printf 'limit: fio 1 MiB reads %s deep, best median %s: %.3f GB/s\n' "$FIO_QDS" "$lbest" "$limit"
for res in "${results[@]}"; do
  read -r qd chunk mq <<<"$res"
  printf 'qd %3s chunk %4s: quiver load %.3f GB/s = %.3f of the limit\n' "$qd" "$chunk" "$mq" \
    "$(echo "$mq / $limit" | bc -l)"
done
echo "caches dropped before each run: $DROPPED; fio on huge pages: $FIO_HUGE; bytes: $(du -sb "$W/store/shards" | cut -f1)"
