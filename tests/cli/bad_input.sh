# Bad input is rejected before the store is touched: non-zero exit (1 for bad
# input, 2 for usage errors), a one-line error on stderr, store unchanged.
. "$(dirname "$0")/lib.sh"
qv_setup

M=org/good
gen good.safetensors --hidden 64 --layers 1 --vocab 256
gen hf --shards 2 --hidden 64 --layers 2 --vocab 256
expect_ok q publish $M good.safetensors --version v1
BEFORE=$(store_digest)

# reject RC DESC CMD...: CMD exits RC with a one-line error; store unchanged.
reject() {
	local want=$1 desc=$2
	shift 2
	run_cmd "$@"
	[ "$RC" -eq "$want" ] || fail "$desc: expected exit $want, got $RC"
	same_store "$BEFORE" "$desc"
	tmp_empty
	err_one_line
	err_no_ctl
	note "rejected ($RC): $desc: $(head -c 200 "$ERR_FILE")"
}

# reject_named WORD RC DESC CMD...: reject, and the error names WORD
reject_named() {
	local w=$1
	shift
	reject "$@"
	err_has "$w"
}

# ---- malformed safetensors files --------------------------------------------
mkdir bad
"$QV_PYTHON" - bad good.safetensors <<'PY' || fail "cannot write the malformed files"
import json, os, struct, sys
out, good = sys.argv[1], sys.argv[2]

def raw(name, header_bytes, data=b"", length=None):
    n = len(header_bytes) if length is None else length
    with open(os.path.join(out, name), "wb") as f:
        f.write(struct.pack("<Q", n) + header_bytes + data)

def st(name, header, data_len, extra=b""):
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    raw(name, h, bytes(range(256)) * (data_len // 256) + bytes(data_len % 256) + extra)

def t(dtype, shape, a, b):
    return {"dtype": dtype, "shape": shape, "data_offsets": [a, b]}

g = open(good, "rb").read()
open(os.path.join(out, "truncated.safetensors"), "wb").write(g[: len(g) - len(g) // 3])
open(os.path.join(out, "tiny.safetensors"), "wb").write(b"\x10\0\0\0\0")
raw("hdr_beyond.safetensors", b'{"a":', length=4096)
raw("hdr_huge.safetensors", b"{}      ", length=200000000)
raw("bad_json.safetensors", b'{"a": {"dtype": "F32", "shape": [4], "data_of', b"\0" * 16)
raw("hdr_not_object.safetensors", b'[1, 2, 3]', b"\0" * 16)
st("oob.safetensors", {"a": t("F32", [4], 0, 16), "b": t("F32", [4], 16, 32)}, 24)
st("overlap.safetensors", {"a": t("F32", [4], 0, 16), "b": t("F32", [4], 8, 24)}, 24)
st("gap.safetensors", {"a": t("F32", [4], 0, 16), "b": t("F32", [4], 24, 40)}, 40)
st("trailing.safetensors", {"a": t("F32", [4], 0, 16), "b": t("F32", [4], 16, 32)}, 32, b"\1" * 8)
st("backwards.safetensors", {"a": t("F32", [4], 16, 0)}, 16)
st("dtype.safetensors", {"a": t("Q7", [4], 0, 16)}, 16)
st("size.safetensors", {"a": t("F32", [3], 0, 16)}, 16)
st("shape_neg.safetensors", {"a": t("F32", [-4], 0, 16)}, 16)
h = b'{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"a":{"dtype":"F32","shape":[4],"data_offsets":[16,32]}}'
h += b" " * (-len(h) % 8)
raw("dup.safetensors", h, b"\0" * 32)
PY

expect_rc 2 q publish $M                                    # no PATH at all: usage
err_one_line
same_store "$BEFORE" "publish without PATH"
soft reject_named does-not-exist 1 "missing PATH" q publish $M ./does-not-exist.safetensors

cp good.safetensors unreadable.safetensors
chmod 000 unreadable.safetensors
if [ "$(id -u)" -eq 0 ]; then
	note "SKIPPED sub-case 'unreadable PATH': running as root, which reads mode 000 files anyway"
else
	soft reject 1 "unreadable PATH" q publish $M unreadable.safetensors
fi
chmod 644 unreadable.safetensors

for c in truncated tiny hdr_beyond hdr_huge bad_json hdr_not_object oob overlap gap trailing \
	backwards dtype size shape_neg dup; do
	soft reject_named "$c" 1 "malformed file: $c" q publish $M bad/$c.safetensors
done

# an empty file and a directory with no safetensors at all
: >empty.safetensors
soft reject 1 "empty file" q publish $M empty.safetensors
mkdir emptydir
soft reject 1 "empty folder" q publish $M emptydir

# ---- bad MODEL names and labels ----------------------------------------------
LONG=$(printf 'm%.0s' $(seq 129))
for name in "org/../x" ".." "../x" "/abs" "/org/x" ".hidden" "org/.hidden" $'ctl\x01name' \
	$'new\nline' $'tab\tname' $'esc\x1b[31mred' "$LONG" "" "org/" "a//b"; do
	# (a name is echoed in the error: it must stay one line, no raw control chars)
	soft reject 1 "bad MODEL name $(printf %q "$name")" q publish "$name" good.safetensors
	# the store is not touched by other commands either
	run_cmd q show "$name"
	[ "$RC" -ne 0 ] || soft fail "show accepted bad MODEL $(printf %q "$name")"
done
LONGL=$(printf 'v%.0s' $(seq 129))
for label in ".." "../v9" "/v9" ".v9" $'v\x019' $'v\n9' "$LONGL" "a/b"; do
	soft reject 1 "bad label $(printf %q "$label")" q publish $M good.safetensors --version "$label"
	soft reject 1 "bad alias $(printf %q "$label")" q publish $M good.safetensors --alias "$label"
	soft reject 1 "bad alias name via alias command $(printf %q "$label")" q alias $M "$label" v1
done
# names right at the limit are fine (128 bytes)
OK128=$(printf 'n%.0s' $(seq 128))
expect_ok q publish "org/${OK128:4}" good.safetensors --version "${OK128}"
expect_ok q rm "org/${OK128:4}@${OK128}" --force
expect_ok q gc
BEFORE=$(store_digest)

# ---- existing label ------------------------------------------------------------
soft reject_named exist 1 "existing label" q publish $M good.safetensors --version v1
# names that clash are refused before any shard is written
soft reject_named shadow 1 "an alias named like a version" q publish $M good.safetensors --alias v1
soft reject_named current 1 "a version labelled current" q publish $M good.safetensors --version current
expect_ok q alias $M prod v1
BEFORE=$(store_digest)
soft reject_named alias 1 "a label that is an alias" q publish $M good.safetensors --version prod
# text that JSON cannot hold
soft reject_named UTF-8 1 "a message that is not UTF-8" q publish $M good.safetensors --message $'bad \xff byte'
mkdir -p badname && cp good.safetensors badname/ && printf x >badname/$'notes\xff.txt'
soft reject_named UTF-8 1 "a file name that is not UTF-8" q publish $M badname

# ---- bad HF folders ------------------------------------------------------------
cp -r hf hf_badjson
echo '{"weight_map": {"x": ' >hf_badjson/model.safetensors.index.json
soft reject 1 "HF folder with invalid index.json" q publish $M hf_badjson
cp -r hf hf_missing
"$QV_PYTHON" - hf_missing/model.safetensors.index.json <<'PY' || fail "cannot edit index.json"
import json, sys
p = sys.argv[1]
d = json.load(open(p))
k = next(iter(d["weight_map"]))
d["weight_map"][k] = "model-00009-of-00009.safetensors"
json.dump(d, open(p, "w"))
PY
soft reject_named model-00009-of-00009 1 "HF folder whose index names a missing file" q publish $M hf_missing
cp -r hf hf_badshard
cp bad/overlap.safetensors hf_badshard/model-00002-of-00002.safetensors
soft reject 1 "HF folder with one malformed safetensors file" q publish $M hf_badshard

# ---- usage errors never touch the store ----------------------------------------
soft reject 2 "unknown option" q publish $M good.safetensors --frobnicate
soft reject 2 "unknown command" q frobnicate
soft reject 2 "extra argument" q publish $M good.safetensors extra
soft reject 2 "--version without value" q publish $M good.safetensors --version

# the good publish still works after all that
expect_ok q publish $M good.safetensors
expect_ok q verify
# an alias named like the next automatic label: the label skips it
expect_ok q alias $M v3 v1
expect_ok q publish $M hf
out_has "published $M@v4"
qv_finish
