# Lifecycle of a model through the CLI: publish, list, show, activate,
# rollback, alias, history, export, verify, --help and usage errors.
. "$(dirname "$0")/lib.sh"
qv_setup

M=org/llama-tiny
gen m1.safetensors --hidden 128 --layers 2 --vocab 1024 --seed 1
gen m2.safetensors --hidden 128 --layers 2 --vocab 1024 --seed 2
cmp -s m1.safetensors m2.safetensors && fail "generator wrote two equal models"

# ---- --help on every command, usage errors ----------------------------------
expect_ok "$QUIVER" --help
out_has 'usage: quiver'
for c in publish list show activate rollback alias history export verify rm gc; do
	expect_ok "$QUIVER" "$c" --help
	out_has "usage: quiver $c"
	expect_ok "$QUIVER" "$c" -h
	out_has "usage: quiver $c"
done
expect_rc 2 q frobnicate
[ -s "$ERR_FILE" ] || fail "unknown command: nothing on stderr"
expect_rc 2 q list --bogus-option
[ -s "$ERR_FILE" ] || fail "unknown option: nothing on stderr"
expect_rc 2 q publish $M m1.safetensors --bogus-option
expect_rc 2 q publish $M                       # PATH missing
expect_rc 2 q show                             # MODEL missing
expect_rc 2 q activate                         # MODEL@REF missing
expect_rc 2 q export $M                        # OUTDIR missing
expect_rc 2 q publish $M m1.safetensors --version   # option without value
expect_rc 2 "$QUIVER"                          # no command at all
[ ! -e "$ROOT/index" ] || note "usage errors created $ROOT (tolerated)"

# ---- publish v1, v2 ---------------------------------------------------------
expect_ok q publish $M m1.safetensors --json
jcheck "$OUT_FILE" 'd["model"] == "org/llama-tiny" and d["version"] == "v1"' "publish v1 json"
jcheck "$OUT_FILE" 'd["digest"].startswith("sha256:") and len(d["digest"]) == 71' "publish digest"
jcheck "$OUT_FILE" 'd["activated"] is True' "v1 activated"
D1=$(jget "$OUT_FILE" 'd["digest"]')
expect_ok q publish $M m2.safetensors --message "second cut" --alias prod
out_has 'v2'
D2=$(q show $M@v2 --json | "$QV_PYTHON" -c 'import json,sys; print(json.load(sys.stdin)["digest"])') ||
	fail "show v2 --json"
[ "$D1" != "$D2" ] || fail "v1 and v2 have the same digest"

# ---- list --------------------------------------------------------------------
expect_ok q list
out_has "^$M[[:space:]]+2[[:space:]]+v2"
expect_ok q list --json
jcheck "$OUT_FILE" '[m["model"] for m in d["models"]] == ["org/llama-tiny"]' "list --json models"
jcheck "$OUT_FILE" 'd["models"][0]["versions"] == 2 and d["models"][0]["current"] == "v2"' "list --json counts"
expect_ok q list $M
out_has '^v1 '
out_has '^v2 .*current'
out_has '^v2 .*prod'
expect_ok q list $M --json
jcheck "$OUT_FILE" '[v["version"] for v in d["versions"]] == ["v1", "v2"]' "list MODEL --json versions"
jcheck "$OUT_FILE" 'd["versions"][1]["current"] is True and d["versions"][0]["current"] is False' "list current flag"
jcheck "$OUT_FILE" '"prod" in d["versions"][1]["aliases"] and d["versions"][1]["message"] == "second cut"' "list alias/message"
expect_rc 1 q list org/nope
err_one_line

# ---- show ---------------------------------------------------------------------
S1=$(stat -c %s m1.safetensors)
expect_ok q show $M@v1 --json
cp "$OUT_FILE" show1.json
jcheck show1.json 'all(k in d for k in ("model","version","digest","bytes","aliases","files","tensors"))' "show --json keys"
jcheck show1.json 'd["model"] == "org/llama-tiny" and d["version"] == "v1"' "show model/version"
[ "$(jget show1.json 'd["digest"]')" = "$D1" ] || fail "show v1 digest differs from publish's"
jcheck show1.json "d['bytes'] == $S1" "show bytes = file size $S1"
jcheck show1.json 'len(d["files"]) == 1 and d["files"][0]["name"] == "m1.safetensors"' "show files"
jcheck show1.json 'all(set(("name","dtype","shape","bytes")) <= set(t) for t in d["tensors"])' "show tensor keys"
jcheck show1.json "len(d['tensors']) == $(jget m1.safetensors.json 'd["tensors"]')" "show tensor count"
# every tensor's dtype/shape/bytes agree with the file's own header
"$QV_PYTHON" - show1.json m1.safetensors <<'PY' || fail "show tensors disagree with the safetensors header"
import json, struct, sys
d = json.load(open(sys.argv[1]))
with open(sys.argv[2], "rb") as f:
    n = struct.unpack("<Q", f.read(8))[0]
    h = json.loads(f.read(n))
h.pop("__metadata__", None)
got = {t["name"]: t for t in d["tensors"]}
assert set(got) == set(h), (sorted(set(got) ^ set(h)))
for k, v in h.items():
    t = got[k]
    assert t["dtype"] == v["dtype"], k
    assert t["shape"] == v["shape"], k
    assert t["bytes"] == v["data_offsets"][1] - v["data_offsets"][0], k
PY
expect_ok q show $M                    # default: current
out_has 'v2'
out_has 'second cut'
expect_ok q show $M --json
jcheck "$OUT_FILE" 'd["version"] == "v2" and "prod" in d["aliases"]' "show current = v2 with alias prod"
expect_ok q show $M@prod --json
jcheck "$OUT_FILE" 'd["version"] == "v2"' "show by alias"

# ---- resolution by digest prefix ----------------------------------------------
P1=${D1#sha256:}
expect_ok q show "$M@${P1:0:12}" --json
jcheck "$OUT_FILE" 'd["version"] == "v1"' "show by digest prefix"
expect_ok q show "$M@sha256:${P1:0:16}" --json
[ "$(jget "$OUT_FILE" 'd["version"]')" = v1 ] || note "sha256:-prefixed ref resolved differently"
expect_ok q show "$M@$P1" --json
jcheck "$OUT_FILE" 'd["version"] == "v1"' "show by full digest"
expect_rc 1 q show "$M@ffffffffffffffff0000"
err_one_line

# ---- activate / rollback / history -------------------------------------------
expect_ok q activate $M@v1
expect_ok q show $M --json
jcheck "$OUT_FILE" 'd["version"] == "v1"' "activate v1"
expect_ok q rollback $M --json           # back to the previous current: v2
jcheck "$OUT_FILE" 'd["to"] == "v2" and d["from"] == "v1"' "rollback json from/to"
expect_ok q show $M --json
jcheck "$OUT_FILE" 'd["version"] == "v2"' "rollback to v2"
expect_ok q rollback $M --to v1
expect_ok q show $M --json
jcheck "$OUT_FILE" 'd["version"] == "v1"' "rollback --to v1"
expect_ok q activate "$M@${D2#sha256:}"
expect_ok q show $M --json
jcheck "$OUT_FILE" 'd["version"] == "v2"' "activate by digest"
expect_rc 1 q activate $M@v9
err_one_line
expect_rc 1 q rollback $M --to v9
expect_ok q history $M
out_has 'publish'
out_has 'rollback'
expect_ok q history $M --json
cp "$OUT_FILE" hist.json
"$QV_PYTHON" - hist.json <<'PY' || fail "history --json wrong"
import json, sys
h = json.load(open(sys.argv[1]))["history"]
got = [(e["action"], e["from"], e["to"]) for e in h]
want = [("publish", "", "v1"), ("publish", "v1", "v2"), ("activate", "v2", "v1"),
        ("rollback", "v1", "v2"), ("rollback", "v2", "v1"), ("activate", "v1", "v2")]
# a "from" of None/"-" for the first publish is also fine
got = [(a, f or "", t) for a, f, t in got]
assert got == want, got
PY

# ---- alias set / rm ------------------------------------------------------------
expect_ok q alias $M canary v1
expect_ok q show $M@canary --json
jcheck "$OUT_FILE" 'd["version"] == "v1"' "alias canary -> v1"
expect_ok q show $M@v1 --json
jcheck "$OUT_FILE" '"canary" in d["aliases"]' "v1 lists alias canary"
expect_ok q alias $M canary v2           # move it
expect_ok q show $M@canary --json
jcheck "$OUT_FILE" 'd["version"] == "v2"' "alias moved to v2"
expect_ok q alias --rm $M canary
expect_rc 1 q show $M@canary
expect_rc 1 q alias --rm $M canary       # already gone
err_one_line
expect_rc 1 q alias $M canary v9         # unknown target
# 'current' is not an ordinary alias: removing it must not leave the model
# without a current version (activate/rollback are the way to move it)
chk_rm_current() {
	run_cmd q alias --rm $M current
	[ "$RC" -ne 0 ] || fail "'alias --rm MODEL current' succeeded: the model lost its current version"
	expect_ok q show $M --json
	jcheck "$OUT_FILE" 'd["version"] == "v2"' "current still v2 after refused 'alias --rm current'"
}
soft chk_rm_current
if ! q show $M >/dev/null 2>&1; then q activate $M@v2 >/dev/null 2>&1 || fail "cannot restore current"; fi
expect_ok q show $M@v2 --json
jcheck "$OUT_FILE" '"canary" not in d["aliases"]' "canary removed"

# ---- export byte for byte ---------------------------------------------------------
expect_ok q export $M@v1 ex1
cmp m1.safetensors ex1/m1.safetensors || fail "export v1 differs from the input"
[ "$(ls ex1)" = m1.safetensors ] || fail "export wrote extra files: $(ls ex1)"
expect_ok q export $M ex2 --json       # current = v2
cmp m2.safetensors ex2/m2.safetensors || fail "export v2 differs"

# ---- publish options --------------------------------------------------------------
expect_ok q publish $M m1.safetensors --version rc-1 --no-activate --alias staging --alias blue --message "a note" --json
jcheck "$OUT_FILE" 'd["version"] == "rc-1" and d["activated"] is False' "publish --version/--no-activate json"
jcheck "$OUT_FILE" 'd["new_bytes"] == 0 and d["new_shards"] == 0' "republishing identical data stores nothing new"
expect_ok q show $M --json
jcheck "$OUT_FILE" 'd["version"] == "v2"' "--no-activate kept v2 current"
expect_ok q show $M@rc-1 --json
jcheck "$OUT_FILE" 'd["message"] == "a note" and "staging" in d["aliases"] and "blue" in d["aliases"]' "--alias/--message"
jcheck "$OUT_FILE" 'd["current"] is False' "rc-1 not current"
expect_ok q show $M@blue --json
jcheck "$OUT_FILE" 'd["version"] == "rc-1"' "alias blue resolves"
# next default label continues the sequence (v3, or v4 when the numbering
# counts every publish, rc-1 included); never a clash with an existing label
expect_ok q publish $M m2.safetensors --json
jcheck "$OUT_FILE" 'd["version"] in ("v3", "v4")' "default label after v2 and rc-1 is v3 or v4"

# ---- HF-style folder ------------------------------------------------------------
gen hf --shards 3 --hidden 128 --layers 3 --vocab 1024 --seed 5
[ -f hf/model.safetensors.index.json ] || fail "generator made no HF folder"
expect_ok q publish acme/hf-model hf --json
jcheck "$OUT_FILE" 'd["model"] == "acme/hf-model"' "publish HF folder"
expect_ok q show acme/hf-model --json
jcheck "$OUT_FILE" "len(d['files']) == $(ls hf | wc -l)" "show lists every file of the folder"
jcheck "$OUT_FILE" "len(d['tensors']) == $(jget hf.json 'd["tensors"]')" "HF tensor count"
expect_ok q export acme/hf-model hfex
diff -r hf hfex >/dev/null || fail "export of the HF folder differs: $(diff -rq hf hfex | head -3)"
# names an export's temp file could clash with: a file of the model named
# like an old temp name, and one too long to take a prefix (in a store of
# their own: the counts below are this one's)
mkdir odd && cp m1.safetensors odd/ && echo a >odd/x && echo b >odd/.x.quiver-tmp &&
	echo c >"odd/$(printf 'n%.0s' $(seq 250))" || fail "cannot write odd/"
expect_ok "$QUIVER" --root "$QV_SCRATCH/root-odd" publish acme/odd odd
expect_ok "$QUIVER" --root "$QV_SCRATCH/root-odd" export acme/odd oddex
diff -r odd oddex >/dev/null || fail "export of odd/ differs: $(diff -rq odd oddex | head -3)"

# ---- verify ---------------------------------------------------------------------
expect_ok q verify
expect_ok q verify --json
jcheck "$OUT_FILE" 'd["ok"] is True and d["damaged"] == [] and d["versions"] == 5' "verify --json ok"
expect_ok q verify $M@v1
expect_ok q verify acme/hf-model

# ---- $QUIVER_ROOT instead of --root -----------------------------------------------
QUIVER_ROOT=$ROOT expect_ok "$QUIVER" list --json
jcheck "$OUT_FILE" 'len(d["models"]) == 2' "QUIVER_ROOT honoured"

qv_finish
