# Dedup: v2 of a ~48 MB model with a third of its large tensors changed must
# store only the changed tensors' bytes.
#
# Why the bounds: a tensor of >= 1 MiB gets a shard of its own holding exactly
# its bytes; smaller tensors are packed together (4 KiB aligned). gen_model.py
# --mutate only changes large tensors, so v2's new data is exactly the changed
# tensors (changed_bytes) and the pack of small tensors is shared. We still
# allow for a rewritten pack (its size, measured from v1) plus 2 MiB of slack
# for folder entries (du counts 4 KiB per new shards/ab/cd folder) and any
# small bookkeeping files. The index (LMDB) is checked separately: the second
# version's manifest is a few KiB, so it may grow by at most 2 MiB as well.
. "$(dirname "$0")/lib.sh"
qv_setup

M=org/dedup
ARGS=(--hidden 512 --layers 4 --vocab 8192)
gen v1.safetensors "${ARGS[@]}"
gen v2.safetensors "${ARGS[@]}" --mutate 0.34
CHANGED=$(jget v2.safetensors.json 'd["changed_bytes"]')
NCHANGED=$(jget v2.safetensors.json 'len(d["changed"])')
TOTAL=$(jget v1.safetensors.json 'd["bytes"]')
[ "$CHANGED" -gt 0 ] || fail "generator changed nothing"
note "model $TOTAL bytes; v2 changes $NCHANGED tensors, $CHANGED bytes"
[ "$TOTAL" -ge $((30 << 20)) ] && [ "$TOTAL" -le $((64 << 20)) ] || fail "model size $TOTAL not ~30-60 MB"

SLACK=$((2 << 20))
BIG=$((1 << 20))

expect_ok q publish $M v1.safetensors --json
NEW1=$(jget "$OUT_FILE" 'd["new_bytes"]')
[ "$NEW1" -ge "$((TOTAL - 1000000))" ] || fail "v1 stored only $NEW1 of $TOTAL bytes"
S1=$(shards_bytes)
I1=$(du -sb "$ROOT/index" | cut -f1)

# size of the shards holding small tensors (the packs) in v1
expect_ok q show $M@v1 --json
PACK=$("$QV_PYTHON" - "$OUT_FILE" "$ROOT" "$BIG" <<'PY'
import json, os, sys
d = json.load(open(sys.argv[1]))
root, big = sys.argv[2], int(sys.argv[3])
packs = {t["shard"].split(":")[-1] for t in d["tensors"] if t["bytes"] < big}
total = 0
for h in packs:
    total += os.path.getsize(os.path.join(root, "shards", h[:2], h[2:4], h))
print(total)
PY
) || fail "cannot size the packs"
note "packs of small tensors: $PACK bytes"
[ "$PACK" -gt 0 ] || fail "v1 has no pack of small tensors?"

LO=$CHANGED
HI=$((CHANGED + PACK + SLACK))

expect_ok q publish $M v2.safetensors --json
cp "$OUT_FILE" pub2.json
NEW2=$(jget pub2.json 'd["new_bytes"]')
S2=$(shards_bytes)
I2=$(du -sb "$ROOT/index" | cut -f1)
GROW=$((S2 - S1))
note "shards grew $GROW bytes, publish reported new_bytes $NEW2, index grew $((I2 - I1)) bytes; allowed [$LO, $HI]"
[ "$GROW" -ge "$LO" ] || fail "shards grew $GROW < changed bytes $LO"
[ "$GROW" -le "$HI" ] || fail "shards grew $GROW > $HI (changed $CHANGED + pack $PACK + slack $SLACK): dedup failed"
[ "$NEW2" -ge "$LO" ] && [ "$NEW2" -le "$HI" ] || fail "publish --json new_bytes $NEW2 not in [$LO, $HI]"
jcheck pub2.json "d['new_shards'] <= $NCHANGED + 1" "new_shards at most the changed tensors (+1 pack)"
jcheck pub2.json "d['new_shards'] >= $NCHANGED" "new_shards at least the changed tensors"
[ $((I2 - I1)) -le "$SLACK" ] || fail "index grew $((I2 - I1)) bytes for one version"

# the unchanged tensors of v2 point at v1's shards
expect_ok q show $M@v1 --json
cp "$OUT_FILE" show1.json
expect_ok q show $M@v2 --json
cp "$OUT_FILE" show2.json
"$QV_PYTHON" - show1.json show2.json v2.safetensors.json <<'PY' || fail "v2's unchanged tensors do not share v1's shards"
import json, sys
a = {t["name"]: t["shard"] for t in json.load(open(sys.argv[1]))["tensors"]}
b = {t["name"]: t["shard"] for t in json.load(open(sys.argv[2]))["tensors"]}
changed = set(json.load(open(sys.argv[3]))["changed"])
for n in a:
    if n in changed:
        assert a[n] != b[n], "changed tensor %s kept its shard" % n
    else:
        assert a[n] == b[n], "unchanged tensor %s got a new shard" % n
PY

# a third publish of identical content stores nothing
expect_ok q publish $M v2.safetensors --version again --json
jcheck "$OUT_FILE" 'd["new_bytes"] == 0 and d["new_shards"] == 0' "identical republish stores nothing"
[ "$(shards_bytes)" -eq "$S2" ] || fail "identical republish grew the shards"

# and both versions are whole
expect_ok q verify
expect_ok q export $M@v1 e1
cmp v1.safetensors e1/v1.safetensors || fail "v1 export differs"
expect_ok q export $M@v2 e2
cmp v2.safetensors e2/v2.safetensors || fail "v2 export differs"

echo "dedup: ok"
