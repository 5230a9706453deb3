#!/usr/bin/env bash
# GPU cold-start benchmark for the lent H200 machine (issue: streaming loads).
# In one run, on a generated ~8 GB bf16 model shaped like a 7B checkpoint:
#   (c) pinned host-to-device copy rate (torch, pinned 1 GiB buffer, events)
#   raw read rate of the store's shard files (dd iflag=direct, 1 and 4 streams)
#   (d) quiver load --device cuda:0, cold (caches dropped) and warm
#   (e) safetensors load_file(f, device="cuda") on the exported files, cold and warm
# Usage (on the device machine, from the repo root): bench/device/h200_load.sh
set -euo pipefail
source "$(dirname "$0")/build.sh"
Q=$QV_BUILD/cli/quiver
W=${W:-/tmp/qvbench}
mkdir -p "$W"
HIDDEN=${HIDDEN:-4096} LAYERS=${LAYERS:-14} VOCAB=${VOCAB:-32000}
QD=${QD:-16} CHUNK=${CHUNK:-4M}
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

echo "== (d) quiver load --device cuda:0 (qd $QD, chunk $CHUNK)"
cat > "$W/q.py" <<'PY'
import json, sys
d = json.load(sys.stdin)
b, s, i = d["bytes"], d["seconds"], d["device_init_seconds"]
print(f"{sys.argv[1]} {b / s / 1e9:.3f} GB/s in {s:.3f} s; without CUDA context start ({i:.3f} s): "
      f"{b / (s - i) / 1e9:.3f} GB/s; first tensor {d['first_tensor_seconds']:.3f} s; {d['engine']} {d['io']}")
PY
for r in 1 2; do
  drop
  "$Q" --root "$W/store" load bench/7b --device cuda:0 --io direct --qd "$QD" --chunk "$CHUNK" --json |
    python3 "$W/q.py" quiver_cold
done
cat "$W"/store/shards/*/*/* > /dev/null
for r in 1 2; do
  "$Q" --root "$W/store" load bench/7b --device cuda:0 --io auto --qd "$QD" --chunk "$CHUNK" --json |
    python3 "$W/q.py" quiver_warm
done
"$Q" --root "$W/store" load bench/7b --device cuda:0 --io auto --qd "$QD" --chunk "$CHUNK" --verify --json |
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
