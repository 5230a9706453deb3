# rm and gc: rm refuses a current or aliased version without --force; rm of
# another version frees exactly the shards only it used; gc --dry-run changes
# nothing; gc removes an orphan shard file and a temp file and reports them.
. "$(dirname "$0")/lib.sh"
qv_setup

M=org/rmgc
ARGS=(--hidden 256 --layers 2 --vocab 4096)
gen v1.safetensors "${ARGS[@]}"
gen v2.safetensors "${ARGS[@]}" --mutate 0.34 --mutate-seed 100
gen v3.safetensors "${ARGS[@]}" --mutate 0.34 --mutate-seed 200
expect_ok q publish $M v1.safetensors --version v1
expect_ok q publish $M v2.safetensors --version v2 --alias prod
expect_ok q publish $M v3.safetensors --version v3
for v in v1 v2 v3; do
	expect_ok q show $M@$v --json
	cp "$OUT_FILE" show_$v.json
done
BEFORE=$(store_digest)

# ---- refusals -----------------------------------------------------------------
expect_rc 1 q rm $M@v3
err_has 'current'
err_has 'force'
same_store "$BEFORE" "refused rm of the current version"
expect_rc 1 q rm $M@v2
err_has 'prod|alias'
same_store "$BEFORE" "refused rm of an aliased version"
expect_rc 1 q rm $M@nope
same_store "$BEFORE" "rm of an unknown version"
expect_rc 2 q rm $M@v1 --bogus
same_store "$BEFORE" "rm with a bad option"

# ---- rm v1 frees only its unique shards ------------------------------------------
"$QV_PYTHON" - show_v1.json show_v2.json show_v3.json "$ROOT" >plan.txt <<'PY' || fail "cannot plan"
import json, os, sys
def shards(p):
    return {t["shard"].split(":")[-1] for t in json.load(open(p))["tensors"]}
s1, s2, s3 = (shards(p) for p in sys.argv[1:4])
root = sys.argv[4]
path = lambda h: os.path.join(root, "shards", h[:2], h[2:4], h)
uniq = s1 - s2 - s3
keep = s2 | s3
assert uniq, "v1 has no unique shard"
assert s1 & keep, "v1 shares nothing"
print(len(uniq), sum(os.path.getsize(path(h)) for h in uniq))
for h in sorted(uniq): print("gone", path(h))
for h in sorted(keep): print("keep", path(h))
PY
read -r NUNIQ UBYTES <plan.txt
note "v1 has $NUNIQ unique shards, $UBYTES bytes"
S0=$(shards_bytes)
expect_ok q rm $M@v1 --json
jcheck "$OUT_FILE" "d['shards'] == $NUNIQ and d['bytes'] == $UBYTES" "rm --json reports the unique shards and bytes"
grep '^gone ' plan.txt | cut -d' ' -f2 | while read -r f; do [ ! -e "$f" ] || fail "unique shard of v1 not freed: $f"; done || exit 1
grep '^keep ' plan.txt | cut -d' ' -f2 | while read -r f; do [ -f "$f" ] || fail "shared shard freed: $f"; done || exit 1
S1=$(shards_bytes)
[ $((S0 - S1)) -ge "$UBYTES" ] || fail "shards shrank by $((S0 - S1)) < $UBYTES"
expect_rc 1 q show $M@v1
expect_ok q list $M --json
jcheck "$OUT_FILE" 'sorted(v["version"] for v in d["versions"]) == ["v2", "v3"]' "v1 gone from list"
expect_ok q verify
for v in v2 v3; do
	rm -rf ex && expect_ok q export $M@$v ex
	cmp $v.safetensors ex/$v.safetensors || fail "export of $v differs after rm v1"
done
expect_ok q history $M --json          # history survives the removal
jcheck "$OUT_FILE" 'len(d["history"]) == 3' "history keeps 3 entries"

# ---- gc --dry-run with nothing to do, then with an orphan and a temp file -------
expect_ok q gc --dry-run --json
jcheck "$OUT_FILE" 'd["dry_run"] is True and d["shards"] == 0 and d["temp_files"] == 0' "nothing to collect"
head -c 300000 /dev/urandom >orphan.bin
OH=$(sha256sum orphan.bin | cut -d' ' -f1)
mkdir -p "$ROOT/shards/${OH:0:2}/${OH:2:2}"
cp orphan.bin "$ROOT/shards/${OH:0:2}/${OH:2:2}/$OH"
printf 'half a shard' >"$ROOT/tmp/publish.12345.tmp"
BEFORE=$(store_digest)
expect_ok q gc --dry-run --json
jcheck "$OUT_FILE" 'd["dry_run"] is True and d["shards"] == 1 and d["bytes"] == 300000 and d["temp_files"] == 1' "gc --dry-run reports the orphan and the temp file"
same_store "$BEFORE" "gc --dry-run"
expect_ok q gc --dry-run
out_has 'would'
same_store "$BEFORE" "gc --dry-run (text)"
expect_ok q gc --json
jcheck "$OUT_FILE" 'd["dry_run"] is False and d["shards"] == 1 and d["bytes"] == 300000 and d["temp_files"] == 1' "gc reports what it freed"
[ ! -e "$ROOT/shards/${OH:0:2}/${OH:2:2}/$OH" ] || fail "gc left the orphan shard"
tmp_empty
expect_ok q gc --json
jcheck "$OUT_FILE" 'd["shards"] == 0 and d["temp_files"] == 0' "second gc finds nothing"
expect_ok q verify
for v in v2 v3; do
	rm -rf ex && expect_ok q export $M@$v ex
	cmp $v.safetensors ex/$v.safetensors || fail "export of $v differs after gc"
done

# ---- --force --------------------------------------------------------------------
expect_ok q rm $M@v2 --force
expect_rc 1 q show $M@prod                     # the alias went with it
expect_ok q show $M --json
jcheck "$OUT_FILE" 'd["version"] == "v3"' "v3 still current"
rm -rf ex && expect_ok q export $M@v3 ex
cmp v3.safetensors ex/v3.safetensors || fail "export of v3 differs after rm --force v2"
expect_ok q rm $M@v3 --force
expect_rc 1 q show $M@v3
expect_ok q verify
# nothing referenced is left: only empty folders may remain
[ -z "$(find "$ROOT/shards" -type f)" ] || fail "shards left after removing every version: $(find "$ROOT/shards" -type f | head -3)"

qv_finish
