#!/usr/bin/env bash
# Cold-tier loads on the lent H200 machine (issue: tiering). A generated bf16
# model with values shaped like trained weights (gen_model.py --values normal)
# is published and demoted to the cold tier; then, caches dropped before each:
#   raw O_DIRECT read rate of the cold files (dd, 4 and 16 streams, and
#   bench/direct_read into huge-page and 4 KiB-page buffers, with
#   STREAMS x block MiB settings in flight: some disks read faster with
#   fewer);
#   quiver load of the cold version to cuda:0 and to host memory, on every
#   core and pinned to 2 cores (taskset: one decoder per core it may use);
#   one cold load to cuda:0 with --verify. Ends with each load's median
#   against the limit, the best setting's median direct_read rate into huge
#   pages, in raw bytes (the tiering issue's target: >= 0.90), and beside
#   it the median of its ratios to that setting's direct_read in the same
#   repetition (the disk's rate drifts by 20% within a run), and its CPU
#   ceiling: the cores it may use, all busy, at its median CPU time per GB.
# Usage (on the device machine, from the repo root): bench/device/h200_cold.sh
#   (REPS=3, CPUSETS="all 0,1" for taskset -c, DEVICES="cuda:0 cpu",
#    THREADS="default" or --decode-threads values, e.g. "2 4 8 16",
#    READS="default" or --cold-reads values, PAGES="default" or --host-pages
#    values (host loads only), MERGE="default" or "cpu" (GPU loads only:
#    QV_SINK_MERGE=0, BF16 frames merged on the CPU), DR="16x16 4x4 2x4 2x1":
#    direct_read settings, streams x MiB)
set -euo pipefail
source "$(dirname "$0")/build.sh"
Q=$QV_BUILD/cli/quiver
W=${W:-/tmp/qvcold}
HIDDEN=${HIDDEN:-4096} LAYERS=${LAYERS:-4} VOCAB=${VOCAB:-32000} REPS=${REPS:-3}
CPUSETS=${CPUSETS:-all 0,1} DEVICES=${DEVICES:-cuda:0 cpu} THREADS=${THREADS:-default}
READS=${READS:-default} PAGES=${PAGES:-default} MERGE=${MERGE:-default}
DR=${DR:-16x16 4x4 2x4 2x1}
case " $PAGES " in *" default "*) ;; *) case " $DEVICES " in *cuda*)
  echo "note: PAGES has no 'default': GPU loads (which have no host pages) are skipped" ;; esac ;; esac
case " $MERGE " in *" default "*) ;; *) case " $DEVICES " in *" cpu "*)
  echo "note: MERGE has no 'default': host loads (merged on the CPU anyway) are skipped" ;; esac ;; esac
source "$QV_SRC/bench/common.sh" # cold_fixture; drop is this script's own, which fails loudly
t() { date +%s.%N; }
drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
cold_fixture "$Q" "$W" 4 "$HIDDEN" "$LAYERS" "$VOCAB" BF16
"$Q" --root "$R" status --json | python3 -c '
import json,sys; d=json.load(sys.stdin); c=[t for t in d["tiers"] if t["tier"]=="cold"][0]
print("== machine: %s cores; cold tier %d raw bytes stored in %d (stored/raw %.3f)" %
      (sys.argv[1], c["raw_bytes"], c["used_bytes"], c["used_bytes"] / c["raw_bytes"]))' "$(nproc)"
DISK=$(df "$R/cold" | awk 'NR==2 {print $1}')
echo "cold tier on $DISK, rotational: $(cat "/sys/class/block/$(basename "$DISK")/queue/rotational" 2>/dev/null ||
  cat "/sys/class/block/$(basename "$DISK")/../queue/rotational" 2>/dev/null || echo unknown)"
STORED=$(du -sb "$R/cold/shards" | cut -f1)
for p in 4 16; do
  drop; t0=$(t)
  find "$R/cold/shards" -type f -print0 | xargs -0 -P$p -I{} dd if={} of=/dev/null bs=16M iflag=direct status=none
  t1=$(t); echo "raw_dd_${p}streams_gbps_stored $(awk -v a="$t0" -v b="$t1" -v n="$STORED" 'BEGIN {printf "%.3f", n / (b - a) / 1e9}')"
done
# dd reads into 4 KiB pages; bench/direct_read (O_DIRECT reads, no fio
# here) reads into huge pages as well, as quiver's own read buffers are.
# Each repetition measures it (huge pages, the better here) in each DR
# setting among its loads, and the end prints each load's median against
# the best setting's median, in raw bytes: (load raw GB/s) / (limit /
# (stored/raw)).
RATIO=$(awk -v s="$STORED" -v r="$("$Q" --root "$R" status --json | python3 -c '
import json,sys; d=json.load(sys.stdin); print([t for t in d["tiers"] if t["tier"]=="cold"][0]["raw_bytes"])')" \
  'BEGIN {print s / r}')
drop
"$QV_BUILD/bench/direct_read" --small-pages "$R/cold/shards" |
  python3 -c 'import json,sys; print("raw_direct_read_small_pages_gbps_stored %.3f" % json.load(sys.stdin)["gb_per_s"])'
RES=$(mktemp)
BENCH_UNDO+="rm -f $RES;"
# One repetition runs every direct_read setting and every load once. The
# order turns by one each repetition, so that no setting always runs first
# after the previous repetition (this disk's rate drifts within seconds).
JOBS=()
for dr in $DR; do JOBS+=("dr $dr"); done
for cpus in $CPUSETS; do
 for dev in $DEVICES; do
  for th in $THREADS; do
   for rd in $READS; do
    for pg in $PAGES; do
     for mg in $MERGE; do
      [ "$pg" = default ] || [ "$dev" = cpu ] || continue
      [ "$mg" = default ] || [ "$dev" != cpu ] || continue
      JOBS+=("load $cpus $dev $th $rd $pg $mg")
     done
    done
   done
  done
 done
done
job() {
  local kind=$1; shift
  drop
  if [ "$kind" = dr ]; then
    "$QV_BUILD/bench/direct_read" --streams "${1%x*}" --block "${1#*x}" "$R/cold/shards" |
      python3 -c 'import json,sys; print("raw_direct_read_%s %.3f GB/s stored" % (sys.argv[1], json.load(sys.stdin)["gb_per_s"]))' \
        "$1" | tee -a "$RES"
    return
  fi
  local cpus=$1 dev=$2 th=$3 rd=$4 pg=$5 mg=$6
  local run=("$Q" --root "$R" load bench/cold@v1 --device "$dev" --io direct --json)
  [ "$mg" = default ] || run=(env QV_SINK_MERGE=0 "${run[@]}")
  [ "$th" = default ] || run+=(--decode-threads "$th")
  [ "$rd" = default ] || run+=(--cold-reads "$rd")
  [ "$pg" = default ] || run+=(--host-pages "$pg")
  [ "$cpus" = all ] || run=(taskset -c "$cpus" "${run[@]}")
  "${run[@]}" | python3 -c '
import json,sys; d=json.load(sys.stdin); s=d["seconds"]-d["device_init_seconds"]
print("cpus %-6s %-6s threads %-7s reads %-7s pages %-7s merge %-7s cold %.3f GB/s raw (%.3f s after device init), %d decode threads, %d read at once, %s host pages, %.3f CPU-s per GB raw, %.2f merged on the GPU" %
      (sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6], d["cold_bytes"]/s/1e9, s, d["decode_threads"], d["cold_reads"], d["host_pages"], d["cpu_seconds"]/(d["cold_bytes"]/1e9), d["cold_gpu_bytes"]/d["cold_bytes"]))' \
    "$cpus" "$dev" "$th" "$rd" "$pg" "$mg" | tee -a "$RES"
}
for r in $(seq "$REPS"); do
  for i in $(seq 0 $((${#JOBS[@]} - 1))); do
    # shellcheck disable=SC2086 # a job is its words
    job ${JOBS[$(((i + r - 1) % ${#JOBS[@]}))]}
  done
done
python3 - "$RES" "$RATIO" "${#JOBS[@]}" <<'PY'
import os, statistics, sys
lines = open(sys.argv[1]).read().splitlines()
ratio = float(sys.argv[2])
njobs = int(sys.argv[3])
dr = {}
for l in lines:
    if l.startswith("raw_direct_read_"):
        w = l.split()
        dr.setdefault(w[0][len("raw_direct_read_"):], []).append(float(w[1]))
for k, v in dr.items():
    print("direct_read %-6s (streams x MiB) median %.3f GB/s stored" % (k, statistics.median(v)))
best = max(dr, key=lambda k: statistics.median(dr[k]))
limit = statistics.median(dr[best])
print("limit: direct_read %s into huge pages, median %.3f GB/s stored = %.3f GB/s raw equivalent "
      "(stored/raw %.3f)" % (best, limit, limit / ratio, ratio))
runs, cpu = {}, {}
for l in lines:
    if l.startswith("cpus"):
        w = l.split()
        runs.setdefault((w[1], w[2], w[4], w[6], w[8], w[10]), []).append(float(w[12]))
        cpu.setdefault((w[1], w[2], w[4], w[6], w[8], w[10]), []).append(float(w[w.index("CPU-s") - 1]))
def ncores(cpus):
    """The cores a taskset -c list names (all: this process's)."""
    if cpus == "all":
        return len(os.sched_getaffinity(0))
    n = 0
    for part in filter(None, cpus.split(",")):
        span, _, step = part.partition(":")
        a, _, b = span.partition("-")
        n += len(range(int(a), int(b or a) + 1, int(step or 1)))
    return n
# Paired: each load against the limit's setting in its own repetition (its
# lines are contiguous), which follows the disk's drift across the run. (The
# better of several settings in each repetition would be the larger of noisy
# samples: 1-4% above either one on the H200 disks.)
paired = {}
for i in range(0, len(lines) - njobs + 1, njobs):
    rep = lines[i:i + njobs]
    lim = [float(l.split()[1]) for l in rep if l.startswith("raw_direct_read_%s " % best)][0] / ratio
    for l in rep:
        if l.startswith("cpus"):
            w = l.split()
            paired.setdefault((w[1], w[2], w[4], w[6], w[8], w[10]), []).append(float(w[12]) / lim)
# The CPU ceiling: the cores, all busy, at the load's median CPU time per
# GB: no disk makes the load faster than that. A GPU load's CPU time counts
# the CUDA start as well, which its rate leaves out: its ceiling is low.
for key, v in runs.items():
    m, c = statistics.median(v), statistics.median(cpu[key])
    print("cpus %-6s %-6s threads %-7s reads %-7s pages %-7s merge %-7s median %.3f GB/s raw = %.3f of the limit (target >= 0.90); paired by repetition: median %.3f; CPU ceiling %d cores / %.3f CPU-s per GB = %.3f of the limit" %
          (key + (m, m / (limit / ratio), statistics.median(paired[key]), ncores(key[0]), c, ncores(key[0]) / c / (limit / ratio))))
PY
drop
"$Q" --root "$R" load bench/cold@v1 --device cuda:0 --verify --json | python3 -c '
import json,sys; d=json.load(sys.stdin); print("verify: verified=%s cold_bytes=%d" % (d.get("verified"), d["cold_bytes"]))'
