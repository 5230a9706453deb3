#!/usr/bin/env bash
# GPU cold-start benchmark for the lent H200 machine (issue: streaming loads).
# In one run, on a generated ~8 GB bf16 model shaped like a 7B checkpoint:
#   (c) pinned host-to-device copy rate (torch, pinned 1 GiB buffer, events)
#   raw read rate of the store's shard files (dd iflag=direct, 1 and 4 streams)
#   (d) quiver load --device cuda:0, cold (caches dropped; REPS, default 3,
#       interleaved with bench/direct_read's settings DR, whose best median is
#       the limit the cold loads are held to) and warm
#   (e) safetensors load_file(f, device="cuda") on the exported files, cold and warm
# Usage (on the device machine, from the repo root): bench/device/h200_load.sh
set -euo pipefail
source "$(dirname "$0")/build.sh"
Q=$QV_BUILD/cli/quiver
W=${W:-/tmp/qvbench}
mkdir -p "$W"
HIDDEN=${HIDDEN:-4096} LAYERS=${LAYERS:-14} VOCAB=${VOCAB:-32000}
# the load's own defaults unless QD / CHUNK are given
LOADOPT=()
if [ -n "${QD:-}" ]; then LOADOPT+=(--qd "$QD"); fi
if [ -n "${CHUNK:-}" ]; then LOADOPT+=(--chunk "$CHUNK"); fi
t() { date +%s.%N; }
rate() { awk -v a="$1" -v b="$2" -v n="$BYTES" 'BEGIN {printf "%.3f", n / (b - a) / 1e9}'; }
drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
source "$(dirname "$0")/model.sh"
BYTES=$(du -sb "$W/store/shards" | cut -f1)
echo "== machine: $(nproc) cores; $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader); store $BYTES bytes in $(find "$W/store/shards" -type f | wc -l) shard files"

echo "== (c) pinned host-to-device copy rate"
python3 - <<'PY'
import torch
n = 1 << 30
h = torch.empty(n, dtype=torch.uint8).pin_memory()
h.random_(0, 255)
d = torch.empty(n, dtype=torch.uint8, device="cuda")
for _ in range(3):
    d.copy_(h, non_blocking=True)
torch.cuda.synchronize()
a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
rates = []
for _ in range(10):
    a.record(); d.copy_(h, non_blocking=True); b.record(); b.synchronize()
    rates.append(n / (a.elapsed_time(b) / 1e3) / 1e9)
rates.sort()
print(f"h2d_pinned_gbps {rates[len(rates)//2]:.2f} (median of 10 x 1 GiB; min {rates[0]:.2f} max {rates[-1]:.2f})")
PY

echo "== raw read rate of the shard files (O_DIRECT, caches dropped)"
drop; t0=$(t)
find "$W/store/shards" -type f -print0 | xargs -0 -I{} dd if={} of=/dev/null bs=64M iflag=direct status=none
t1=$(t); echo "raw_dd_1stream_gbps $(rate "$t0" "$t1")"
drop; t0=$(t)
find "$W/store/shards" -type f -print0 | xargs -0 -P4 -I{} dd if={} of=/dev/null bs=64M iflag=direct status=none
t1=$(t); echo "raw_dd_4streams_gbps $(rate "$t0" "$t1")"
drop; t0=$(t)
find "$W/store/shards" -type f -print0 | xargs -0 -P16 -I{} dd if={} of=/dev/null bs=16M iflag=direct status=none
t1=$(t); echo "raw_dd_16streams_gbps $(rate "$t0" "$t1")"

echo "== (d) quiver load --device cuda:0 (${LOADOPT[*]:-default qd and chunk})"
cat > "$W/q.py" <<'PY'
import json, sys
d = json.load(sys.stdin)
b, s, i = d["bytes"], d["seconds"], d["device_init_seconds"]
print(f"{sys.argv[1]} {b / s / 1e9:.3f} GB/s in {s:.3f} s; without CUDA context start ({i:.3f} s): "
      f"{b / (s - i) / 1e9:.3f} GB/s; first tensor {d['first_tensor_seconds']:.3f} s; {d['engine']} {d['io']}; "
      f"qd {d['qd']}, chunk {d['chunk_bytes']}")
PY
# (d) cold against the disk's limit, interleaved: per repetition each
# direct_read setting (O_DIRECT streams x MiB per read, into huge pages),
# then a cold load; the limit is the best setting's median, as on the CPU box
LOG=$W/cold_vs_limit.txt
: > "$LOG"
for r in $(seq "${REPS:-3}"); do
  for dr in ${DR:-16x16 4x4 2x4 2x1}; do
    drop
    "$QV_BUILD/bench/direct_read" --streams "${dr%x*}" --block "${dr#*x}" "$W/store/shards" |
      python3 -c 'import json,sys; d=json.load(sys.stdin); print("limit_%s %.4f (anon huge %d KiB)" % (sys.argv[1], d["gb_per_s"], d["anon_huge_kib"]))' "$dr" |
      tee -a "$LOG"
  done
  drop
  "$Q" --root "$W/store" load bench/7b --device cuda:0 --io direct ${LOADOPT[@]+"${LOADOPT[@]}"} --json |
    python3 "$W/q.py" quiver_cold | tee -a "$LOG"
done
python3 - "$LOG" <<'PY'
import statistics, sys
lim, q = {}, []
for line in open(sys.argv[1]):
    w = line.split()
    if w[0].startswith("limit_"):
        lim.setdefault(w[0][6:], []).append(float(w[1]))
    elif w[0] == "quiver_cold":
        q.append(float(w[1]))
best = max(lim, key=lambda k: statistics.median(lim[k]))
l, m = statistics.median(lim[best]), statistics.median(q)
print(f"limit: direct_read {best} (streams x MiB), median {l:.3f} GB/s; "
      + ", ".join(f"{k} {statistics.median(v):.3f}" for k, v in lim.items()))
print(f"(d) cold to cuda:0: median {m:.3f} GB/s of {len(q)} = {m / l:.3f} of the limit "
      f"(target >= 0.95: {'met' if m / l >= 0.95 else 'MISSED'})")
PY
cat "$W"/store/shards/*/*/* > /dev/null
for r in 1 2; do
  "$Q" --root "$W/store" load bench/7b --device cuda:0 --io auto ${LOADOPT[@]+"${LOADOPT[@]}"} --json |
    python3 "$W/q.py" quiver_warm
done
"$Q" --root "$W/store" load bench/7b --device cuda:0 --io auto ${LOADOPT[@]+"${LOADOPT[@]}"} --verify --json |
  python3 "$W/q.py" quiver_warm_verify

if [ -n "${SWEEP:-}" ]; then
  echo "== cold sweep (qd x chunk)"
  for qd in 4 16 64; do for ch in 1M 4M 16M; do
    drop
    "$Q" --root "$W/store" load bench/7b --device cuda:0 --io direct --qd $qd --chunk $ch --json |
      python3 "$W/q.py" "cold_qd${qd}_chunk${ch}"
  done; done
fi

echo "== (e) safetensors load_file(device=cuda) on the exported files"
for r in 1 2; do drop; python3 "$W/st.py" "$W/export" safetensors_cold; done
cat "$W"/export/*.safetensors > /dev/null
for r in 1 2; do python3 "$W/st.py" "$W/export" safetensors_warm; done
