#!/usr/bin/env bash
# quiverd on the lent H200 (issue: the node daemon). Run after
# bench/device/h200_load.sh in the same call (it reuses its model and store):
#   (a) pinned host-to-device copy rate, (b) swap time from the DRAM tier into
#   an engine's allocation over CUDA IPC, (d) rollback of current to a version
#   held in DRAM, to the last byte on the GPU   -- bench/daemon_bench.c
#   (c) safetensors load_file(device="cuda"), warm page cache.
set -euo pipefail
source "$(dirname "$0")/build.sh"
Q=$QV_BUILD/cli/quiver
W=${W:-/tmp/qvbench}
R=$W/store
mkdir -p "$W"
t() { date +%s.%N; }
source "$(dirname "$0")/model.sh"
export PATH=$QV_BUILD/cli:$PATH
if [ ! -f "$W/model2/model.safetensors.index.json" ]; then
  python3 "$QV_SRC/python/tools/gen_model.py" "$W/model2" --shards 4 --hidden "${HIDDEN:-4096}" \
    --layers "${LAYERS:-14}" --vocab "${VOCAB:-32000}" --mutate 0.34 >/dev/null
fi
QUIVER_NO_DAEMON=1 "$Q" --root "$R" show bench/7b@v2 >/dev/null 2>&1 ||
  QUIVER_NO_DAEMON=1 "$Q" --root "$R" publish bench/7b "$W/model2" --version v2
"$QV_BUILD/cli/quiverd" --root "$R" --dram 40G --metrics-port 9464 > "$W/quiverd.log" 2>&1 &
DPID=$!
trap 'kill $DPID 2>/dev/null; wait $DPID 2>/dev/null || true' EXIT
for i in $(seq 100); do [ -S "$R/quiverd.sock" ] && break; sleep 0.1; done
echo "== (a), (b), (d): daemon_bench"
"$QV_BUILD/bench/daemon_bench" "$R" bench/7b v1 v2 --device cuda:0 --reps 8
echo "== (c) safetensors load_file(device=cuda), warm"
cat "$W"/export/*.safetensors > /dev/null
for r in 1 2; do python3 "$W/st.py" "$W/export" safetensors_warm; done
echo "== metrics"
curl -s 127.0.0.1:9464/metrics | grep -E '^quiver_(load_bytes_total|swaps_total|dram_hits_total|dram_misses_total|loads_total)' || true
echo "== daemon log"
tail -12 "$W/quiverd.log"
