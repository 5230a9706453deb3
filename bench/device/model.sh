# Shared set-up of the H200 benchmarks (sourced): the ~8 GB 7B-shaped bf16
# model, published as bench/7b@v1 into $W/store and exported to $W/export,
# and $W/st.py, the safetensors reference loader.
HIDDEN=${HIDDEN:-4096} LAYERS=${LAYERS:-14} VOCAB=${VOCAB:-32000}
if [ ! -f "$W/model/model.safetensors.index.json" ]; then
  t0=$(t); python3 "$QV_SRC/python/tools/gen_model.py" "$W/model" --shards 4 --hidden "$HIDDEN" \
    --layers "$LAYERS" --vocab "$VOCAB" >/dev/null
  echo "generated $(du -sb "$W/model" | cut -f1) bytes in $(awk -v a="$t0" -v b="$(t)" 'BEGIN {printf "%.1f", b - a}') s"
fi
if ! "$Q" --root "$W/store" show bench/7b >/dev/null 2>&1; then
  "$Q" --root "$W/store" publish bench/7b "$W/model"
  "$Q" --root "$W/store" export bench/7b "$W/export"
  cmp -s "$W/model/model-00001-of-00004.safetensors" "$W/export/model-00001-of-00004.safetensors"
fi
cat > "$W/st.py" <<'PY'
import glob, sys, time, torch
from safetensors.torch import load_file
torch.cuda.init(); torch.empty(1, device="cuda"); torch.cuda.synchronize()
files = sorted(glob.glob(sys.argv[1] + "/*.safetensors"))
t0 = time.perf_counter(); n = 0
for f in files:
    sd = load_file(f, device="cuda")
    n += sum(v.numel() * v.element_size() for v in sd.values())
    del sd
torch.cuda.synchronize()
dt = time.perf_counter() - t0
print(f"{sys.argv[2]} {n / dt / 1e9:.3f} GB/s {dt:.3f} s ({n} bytes)")
PY
