#!/usr/bin/env bash
# Cold loads against cold disks of several speeds, on this machine's cores:
# bench/cold_load.sh once per rate in RATES (MB/s of stored bytes, the disk
# capped through a block-I/O cgroup; "max" leaves it as it is), then one
# table. Shows up to which disk speed decoding keeps up (target (b) >= 0.90).
#
#   bench/cold_sweep.sh [WORKDIR]   (RATES="150 300 600 1200 max", REPS=3,
#                                    and what cold_load.sh takes; root only)
set -euo pipefail
SRC=$(cd "$(dirname "$0")/.." && pwd)
RATES=${RATES:-150 300 600 1200 max}
rows=()
for r in $RATES; do
  if [ "$r" = max ]; then bps=; else bps=$((r * 1000000)); fi
  echo "== cold disk at ${r} MB/s stored" >&2
  out=$(COLD_BPS=$bps "$SRC/bench/cold_load.sh" "$@")
  echo "$out" >&2
  rows+=("$(echo "$out" | sed -n 's/^summary: //p' | tr ' ' '\n' | awk -F= -v r="$r" '
    {v[$1] = $2}
    END {printf "| %s | %s | %s | %s | **%s** | %s | %s | %s | %s | %s |", r, v["a_stored"], v["b_raw"], v["b_cpu"], v["b_ratio"], v["b_paired"], v["cpu_ceiling_ratio"], v["c_raw"], v["c_ratio"], v["c_paired"]}')")
done
echo "| cap, MB/s stored | (a) fio GB/s stored | (b) fresh GB/s raw | (b) CPU-s per GB | (b) ratio | (b) paired | (b) CPU ceiling | (c) resident GB/s raw | (c) ratio | (c) paired |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
printf '%s\n' "${rows[@]}"
