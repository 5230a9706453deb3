#!/usr/bin/env bash
# Cold-tier load throughput against the cold disk's raw read rate, in one run.
#
# Publishes a generated bf16 model whose values are shaped like trained
# weights (gen_model.py --values normal), demotes it to the cold tier (same
# disk, another folder), then REPS times, in an order that turns by one each
# repetition, caches dropped before each:
#   (a) fio: raw O_DIRECT read rate of the cold tier's files (stored bytes/s),
#       the best of 1 MiB reads FIO_QDS deep (default 16, 4 and 2: some disks,
#       the 2-vCPU box's among them, read faster with fewer in flight), each
#       into buffers of 4 KiB pages and of huge pages (--iomem=shmhuge;
#       bench/common.sh says why);
#   (b) quiver load --device cpu of the cold version, in raw (decoded) bytes/s,
#       into fresh memory that the kernel faults in as the decoders write it;
#   (c) the same load into a host buffer already resident (bench/cold_into's
#       second pass): an engine reloading into its own buffers, or the pinned
#       ring of a GPU load. (b) - (c) is the price of first-touch page faults.
#   (f) bench/fault_in: first touch alone, as much fresh memory as (b) fills,
#       in 4 KiB and in huge pages, after a drop as (b) has.
# The CPU ceiling of (b): N cores, all busy, load at most N / (b)'s CPU-seconds
# per GB raw, whatever the disk does; (b)'s CPU minus (c)'s is what its first
# touch costs inside the load, and (f) the same cost alone.
# Target: (b) >= 0.9 x (a) / (stored/raw): decoding never the bottleneck with
# the default workers. Prints the ratios (b) / ((a) / (stored/raw)) and (c) / ...
# of the medians, and paired: each repetition's load against its own fio run.
#
#   bench/cold_load.sh [WORKDIR]   (QUIVER=path, COLD_INTO=path, FAULT_IN=path, REPS=3,
#                                   HIDDEN/LAYERS/VOCAB, DTYPE=BF16,
#                                   FIO_QDS="16 4 2", COLD_BPS=bytes/s)
# COLD_BPS caps the disk's read rate for fio and quiver alike (a block-I/O
# cgroup, root only): how a slower cold disk, such as a hard disk at
# 150-250 MB/s, would fare on this machine's cores.
set -euo pipefail
SRC=$(cd "$(dirname "$0")/.." && pwd)
Q=${QUIVER:-$SRC/build/cli/quiver}
CI=${COLD_INTO:-$(dirname "$(dirname "$Q")")/bench/cold_into}
W=${1:-$SRC/build/bench-cold}
REPS=${REPS:-3} FIO_QDS=${FIO_QDS:-16 4 2}
HIDDEN=${HIDDEN:-2048} LAYERS=${LAYERS:-6} VOCAB=${VOCAB:-32000} DTYPE=${DTYPE:-BF16}
command -v fio >/dev/null || { echo "fio is not installed (./dev.sh deps)" >&2; exit 1; }
[ -x "$CI" ] || { echo "no $CI: build the bench/ targets (COLD_INTO=path)" >&2; exit 1; }
FAULT_IN=${FAULT_IN:-$(dirname "$CI")/fault_in}
[ -x "$FAULT_IN" ] || { echo "no $FAULT_IN: build the bench/ targets (FAULT_IN=path)" >&2; exit 1; }
source "$SRC/bench/common.sh"
cold_fixture "$Q" "$W" 2 "$HIDDEN" "$LAYERS" "$VOCAB" "$DTYPE" >/dev/null
SHARDS=$R/cold/shards   # fio reads every file below it (opendir)
eval "$("$Q" --root "$R" status --json | python3 -c '
import json,sys; d=json.load(sys.stdin); c=[t for t in d["tiers"] if t["tier"]=="cold"][0]
print("STORED=%d RAW=%d" % (c["used_bytes"], c["raw_bytes"]))')"
bench_hugepages
if [ -n "${COLD_BPS:-}" ]; then bench_throttle_reads "$SHARDS" "$COLD_BPS"; fi
fio_runs=(); q_r=(); c_r=(); ccpu_r=(); cpu_r=()
FIO=$(mktemp)   # one line per fio run: setting, GB/s
PAIR=$(mktemp)  # one line per run: repetition, job (fio setting, b or c), GB/s
TOUCH=$(mktemp) # one line per fault_in run: pages, core-seconds per GB
BENCH_UNDO+="rm -f $FIO $PAIR $TOUCH;"
# One repetition runs fio's settings, (b), (c) and (f) once each. Their order
# turns by one each repetition, so that no job always runs first: a shared
# virtual disk's rate drifts within seconds, and on this box a fixed order
# once showed a 16% effect of a change that vanished with the order turned.
job_fio() {
  local runs="" qd
  for qd in $FIO_QDS; do
    fio_best "$SHARDS" --iodepth="$qd" || exit 1
    echo "qd$qd-4k $F4" >>"$FIO"
    echo "$r qd$qd-4k $F4" >>"$PAIR"
    if [ -n "$FH" ]; then echo "qd$qd-huge $FH" >>"$FIO"; echo "$r qd$qd-huge $FH" >>"$PAIR"; fi
    runs="$runs qd$qd:$(printf '%.3f/%.3f' "$F4" "${FH:-0}")"
  done
  fio_runs+=("[$runs ]")
}
job_b() {
  drop
  local st0 out
  st0=$(head -1 /proc/stat)
  out=$("$Q" --root "$R" load bench/cold@v1 --device cpu --io direct --json |
    python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["cold_bytes"]/d["seconds"]/1e9, d["decode_threads"], d["cpu_seconds"]/(d["cold_bytes"]/1e9), d["cold_reads"], d["host_pages"])')
  q_r+=("$out")
  echo "$r b ${out%% *}" >>"$PAIR"
  # the machine's CPU time over the load's process, by kind: on a VM the
  # hypervisor's steal takes cores from a CPU-bound load
  cpu_r+=("$(printf '%s\n%s\n' "$st0" "$(head -1 /proc/stat)" | awk '
    {for (i = 2; i <= 9; i++) v[NR, i] = $i}
    END {for (i = 2; i <= 9; i++) {d[i] = v[2, i] - v[1, i]; t += d[i]}
         printf "%.0f/%.0f/%.0f", 100 * (d[2] + d[3] + d[4] + d[7] + d[8]) / t, 100 * (d[5] + d[6]) / t, 100 * d[9] / t}')")
}
job_c() {
  local out
  out=$(QV_IO=direct "$CI" "$R" bench/cold@v1 2 | tail -1 |
    python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["cold_bytes"]/d["seconds"]/1e9, d["cpu_seconds"]/(d["cold_bytes"]/1e9))')
  c_r+=("${out%% *}")
  ccpu_r+=("${out##* }")
  echo "$r c ${out%% *}" >>"$PAIR"
}
# First touch alone: the kernel's price for faulting in as much fresh memory
# as (b) writes, after a drop as (b) has, in 4 KiB and in huge pages (the
# summary takes the kind (b)'s arena had). One thread, so its wall time is
# its CPU time (and any time the hypervisor steals).
job_f() {
  local flag
  for flag in "" --huge; do
    drop
    "$FAULT_IN" --size $((((RAW + (2 << 20) - 1) >> 21) * 2)) $flag |
      python3 -c '
import json,sys; d=json.load(sys.stdin)
if d["mode"] == "huge" and d["anon_huge_bytes"] <= 0:
    print("note: fault_in --huge got no huge pages", file=sys.stderr)
print(d["mode"], d["seconds"]/(d["bytes"]/1e9))' >>"$TOUCH"
  done
}
JOBS=(job_fio job_b job_c job_f)
for r in $(seq "$REPS"); do
  for i in 0 1 2 3; do "${JOBS[$(((i + r - 1) % 4))]}"; done
done
# (a): each fio setting's median over the repetitions, the best setting's
best=$(best_median "$FIO") # (a plain assignment: set -e sees a failure)
read -r mf fbest <<<"$best"
# Paired: each repetition's (b) and (c) against that repetition's run of the
# best setting, the median over repetitions (follows the disk's drift).
paired=$(python3 -c '
import statistics, sys
best, ratio = sys.argv[2], float(sys.argv[3])
reps = {}
for line in open(sys.argv[1]):
    rep, k, v = line.split()
    reps.setdefault(rep, {})[k] = float(v)
for rep, d in reps.items():
    if best not in d:
        sys.exit("repetition %s has no %s run to pair with" % (rep, best))
pb = [d["b"] / (d[best] / ratio) for d in reps.values()]
pc = [d["c"] / (d[best] / ratio) for d in reps.values()]
print("%.3f %.3f" % (statistics.median(pb), statistics.median(pc)))' "$PAIR" "$fbest" "$(awk -v s="$STORED" -v r="$RAW" 'BEGIN {print s / r}')")
read -r pb pc <<<"$paired"
mq=$(median "$(printf '%s\n' "${q_r[@]}" | cut -d' ' -f1)")
mc=$(median "${c_r[@]}")
threads=$(echo "${q_r[0]}" | cut -d' ' -f2) reads=$(echo "${q_r[0]}" | cut -d' ' -f4)
mcpu=$(median "$(printf '%s\n' "${q_r[@]}" | cut -d' ' -f3)")
pages=$(echo "${q_r[0]}" | cut -d' ' -f5)
mccpu=$(median "${ccpu_r[@]}")
touch_of() { awk -v m="$1" '$1 == m {print $2}' "$TOUCH"; }
t_pages=$(touch_of "$pages") # (plain assignments: set -e sees a failure)
[ -n "$t_pages" ] || { echo "no fault_in run with '$pages' pages, the kind (b)'s arena had" >&2; exit 1; }
mtouch=$(median $t_pages)
t_small=$(touch_of small) t_huge=$(touch_of huge)
echo "machine: $(nproc) cores, $(df -T "$W" | awk 'NR==2 {print $2}') on $(df "$W" | awk 'NR==2 {print $1}'), kernel $(uname -r); caches dropped: $DROPPED; fio on huge pages: $FIO_HUGE; reads throttled: $THROTTLED"
awk -v s="$STORED" -v r="$RAW" -v pb="$pb" -v pc="$pc" -v f="$mf" -v q="$mq" -v c="$mc" -v t="$threads" -v u="$mcpu" -v n="$reads" -v qds="$FIO_QDS" -v fb="$fbest" \
    -v cc="$mccpu" -v ft="$mtouch" -v pg="$pages" -v nc="$(nproc)" 'BEGIN {
  ratio = s / r; limit = f / ratio
  printf "cold tier: %.0f raw bytes stored in %.0f (stored/raw %.3f)\n", r, s, ratio
  printf "(a) raw O_DIRECT read of the cold files (fio, 1 MiB reads %s deep; best median: %s): %.3f GB/s stored -> %.3f GB/s raw equivalent\n", qds, fb, f, limit
  printf "(b) quiver load of the cold version, fresh memory: %.3f GB/s raw (%d decode threads, %d frames read at once, %.3f CPU-seconds per GB raw)\n", q, t, n, u
  printf "(c) the same load into a resident buffer: %.3f GB/s raw (%.3f CPU-seconds per GB raw)\n", c, cc
  printf "first touch alone (bench/fault_in, %s pages like (b)'"'"'s arena, after a drop): %.3f core-seconds per GB\n", pg, ft
  printf "CPU ceiling of (b): %d cores / %.3f CPU-seconds per GB = %.3f GB/s raw = %.3f of the limit, however fast the disk (0.90 of the limit allows %.3f CPU-seconds per GB); of (b)'"'"'s CPU time, %.3f is (c)'"'"'s, and (b) - (c), the first touch inside the load, %.3f (medians)\n", nc, u, nc / u, nc / u / limit, nc / (0.9 * limit), cc, u - cc
  printf "ratio (b) / ((a) / (stored/raw)): %.3f (target >= 0.90)\n", q / limit
  printf "ratio (c) / ((a) / (stored/raw)): %.3f\n", c / limit
  printf "paired by repetition (each load against its own repetition'"'"'s %s run), medians: (b) %.3f, (c) %.3f\n", fb, pb, pc
  printf "summary: a_stored=%.3f b_raw=%.3f b_cpu=%.3f b_ratio=%.3f c_raw=%.3f c_ratio=%.3f b_paired=%.3f c_paired=%.3f c_cpu=%.3f touch=%.3f cpu_ceiling_ratio=%.3f\n", f, q, u, q / limit, c, c / limit, pb, pc, cc, ft, nc / u / limit }'
echo "machine CPU during each (b) load, % busy/idle+iowait/stolen by the hypervisor: ${cpu_r[*]}"
echo "runs: fio (4 KiB/huge-page buffers) ${fio_runs[*]} / quiver ${q_r[*]} / resident ${c_r[*]}, CPU-s per GB ${ccpu_r[*]}"
echo "first touch alone, core-seconds per GB: 4 KiB pages $(echo $t_small), huge pages $(echo $t_huge)"
