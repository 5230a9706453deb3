# Integrity damage: a flipped byte in a shard shared by two versions, then a
# deleted shard. verify exits 3 naming the shard and every version it breaks;
# export of a broken version exits 3 and leaves no partial file; versions not
# using the shard still verify.
. "$(dirname "$0")/lib.sh"
qv_setup

M=org/dmg
ARGS=(--hidden 256 --layers 2 --vocab 4096)   # embedding 2 MiB: a shard of its own
gen a.safetensors "${ARGS[@]}"
# v2 changes every large tensor except the embedding, which it shares with v1
gen b.safetensors "${ARGS[@]}" --mutate 1.0
jcheck b.safetensors.json '"model.embed_tokens.weight" in d["changed"]' "generator changed the embedding"
# so mutate again keeping the embedding: rewrite it from a.safetensors' bytes
"$QV_PYTHON" - a.safetensors b.safetensors <<'PY' || fail "cannot splice the embedding"
import json, struct, sys
def load(p):
    b = open(p, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    return b, json.loads(b[8:8 + n]), 8 + n
a, ha, da = load(sys.argv[1])
b, hb, db = load(sys.argv[2])
k = "model.embed_tokens.weight"
s, e = ha[k]["data_offsets"]
s2, e2 = hb[k]["data_offsets"]
b = bytearray(b)
b[db + s2: db + e2] = a[da + s: da + e]
open(sys.argv[2], "wb").write(b)
PY
gen other.safetensors --hidden 128 --layers 1 --vocab 512 --seed 77

expect_ok q publish $M a.safetensors --version v1
expect_ok q publish $M b.safetensors --version v2
expect_ok q publish org/other other.safetensors
expect_ok q verify

# the embedding's shard is used by both versions and by nothing else
expect_ok q show $M@v1 --json
SH1=$(jget "$OUT_FILE" '[t["shard"] for t in d["tensors"] if t["name"] == "model.embed_tokens.weight"][0]')
expect_ok q show $M@v2 --json
SH2=$(jget "$OUT_FILE" '[t["shard"] for t in d["tensors"] if t["name"] == "model.embed_tokens.weight"][0]')
[ "$SH1" = "$SH2" ] || fail "v1 and v2 do not share the embedding shard"
H=${SH1#sha256:}
F="$ROOT/shards/${H:0:2}/${H:2:2}/$H"
[ -f "$F" ] || fail "shard file not at $F"
[ "$(sha256sum "$F" | cut -d' ' -f1)" = "$H" ] || fail "shard file name is not its sha256"

# ---- flip one byte ------------------------------------------------------------
"$QV_PYTHON" - "$F" <<'PY' || fail "cannot flip a byte"
import os, sys
p = sys.argv[1]
with open(p, "r+b") as f:
    f.seek(os.path.getsize(p) // 2)
    b = f.read(1)
    f.seek(-1, 1)
    f.write(bytes([b[0] ^ 0x40]))
PY

expect_rc 3 q verify
out_has "$H"
grep -E "$H" "$OUT_FILE" | grep -q "$M@v1" || fail "verify does not name $M@v1 as broken"
grep -E "$H" "$OUT_FILE" | grep -q "$M@v2" || fail "verify does not name $M@v2 as broken"
grep -q "org/other" "$OUT_FILE" && fail "verify names org/other, which does not use the shard"
expect_rc 3 q verify --json
cp "$OUT_FILE" v.json
jcheck v.json 'd["ok"] is False and len(d["damaged"]) == 1' "verify --json: one damaged shard"
jcheck v.json "d['damaged'][0]['shard'].endswith('$H')" "verify --json names the shard"
jcheck v.json "sorted(d['damaged'][0]['versions']) == ['$M@v1', '$M@v2']" "verify --json names both versions"
jcheck v.json "'mismatch' in d['damaged'][0]['reason'] or 'corrupt' in d['damaged'][0]['reason']" "reason is a digest mismatch"

expect_rc 3 q verify $M@v1
expect_rc 3 q verify $M@v2
expect_ok q verify org/other
expect_ok q verify org/other@v1

# export of an affected version: exit 3, no partial output file
expect_rc 3 q export $M@v1 ex1
[ -z "$(find ex1 -type f 2>/dev/null)" ] || fail "export left a partial file: $(find ex1 -type f)"
expect_rc 3 q export $M@v2 ex2
[ -z "$(find ex2 -type f 2>/dev/null)" ] || fail "export left a partial file: $(find ex2 -type f)"
# an export into an existing folder with an old copy must not leave a half-written file either
mkdir ex3 && cp a.safetensors ex3/ && cp a.safetensors keep.safetensors
expect_rc 3 q export $M@v1 ex3
if [ -f ex3/a.safetensors ] && ! cmp -s ex3/a.safetensors keep.safetensors; then
	fail "failed export overwrote ex3/a.safetensors with partial data"
fi
expect_ok q export org/other exo
cmp other.safetensors exo/other.safetensors || fail "export of an unaffected model differs"

# ---- delete the shard -----------------------------------------------------------
rm -f "$F"
expect_rc 3 q verify
out_has "$H"
out_has 'missing'
expect_rc 3 q verify --json
jcheck "$OUT_FILE" "d['damaged'][0]['reason'] == 'missing'" "verify --json reason missing"
jcheck "$OUT_FILE" "sorted(d['damaged'][0]['versions']) == ['$M@v1', '$M@v2']" "missing shard breaks both versions"
expect_rc 3 q export $M@v2 ex4
[ -z "$(find ex4 -type f 2>/dev/null)" ] || fail "export with a missing shard left a file"
expect_ok q verify org/other

qv_finish
