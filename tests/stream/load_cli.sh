#!/usr/bin/env bash
# quiver load from the command line: --json keys and values, every --io mode,
# --verify on a good and on a damaged store (exit 3, no success line), the
# CUDA device without a GPU (exit 1, a clear message), bad option values
# (exit 2) and --help.
. "$QV_SRC/tests/cli/lib.sh"
qv_setup

M=org/loadcli
gen m.safetensors --hidden 256 --layers 4 --seed 7
gen hf --hidden 128 --layers 2 --shards 3 --seed 8
expect_ok q publish "$M" m.safetensors --version v1
expect_ok q publish "$M" hf --version v2 --no-activate

# distinct_shard_bytes REF: sum of the sizes of the distinct shard files that
# hold REF's tensors (from 'show --json'; shards found by digest under shards/)
distinct_shard_bytes() {
	expect_ok q show "$M@$1" --json
	local d total=0 f
	for d in $(jget "$OUT_FILE" '" ".join(sorted({t["shard"].split(":")[-1] for t in d["tensors"]}))'); do
		f=$(find "$ROOT/shards" -type f -name "$d*" | head -1)
		[ -n "$f" ] || fail "shard $d of $M@$1 not found under $ROOT/shards"
		total=$((total + $(stat -c %s "$f")))
	done
	echo "$total"
}

load_json() { # REF ARGS...: load --json, check keys and bytes
	local ref=$1
	shift
	local want
	want=$(distinct_shard_bytes "$ref") || exit 1
	local tensors
	tensors=$(jget "$OUT_FILE" 'len(d["tensors"])')
	expect_ok q load "$M@$ref" --json "$@"
	for k in bytes tensors seconds gbps first_tensor_seconds device io cold_io cpu_seconds host_pages; do
		jcheck "$OUT_FILE" "'$k' in d" "load --json $* lacks key '$k'"
	done
	jcheck "$OUT_FILE" "d['bytes'] == $want" "load $* reports bytes $(jget "$OUT_FILE" 'd["bytes"]'), the distinct shards hold $want"
	jcheck "$OUT_FILE" "d['tensors'] == $tensors" "load $* reports $(jget "$OUT_FILE" 'd["tensors"]') tensors, show lists $tensors"
	jcheck "$OUT_FILE" 'd["device"] == "cpu"' "device is not cpu"
	jcheck "$OUT_FILE" 'd["io"] in ("direct", "buffered")' "io is not direct or buffered"
	jcheck "$OUT_FILE" 'd["cold_io"] == "none"' "cold_io is not none for a store without a cold tier"
	jcheck "$OUT_FILE" 'd["host_pages"] in ("small", "huge")' "host_pages of a cpu load is not small or huge"
	jcheck "$OUT_FILE" 'd["seconds"] > 0 and d["gbps"] > 0' "seconds or gbps not positive"
	jcheck "$OUT_FILE" '0 < d["cpu_seconds"] < 2 * d["seconds"] * 64 + 1' "cpu_seconds not positive, or absurd"
	jcheck "$OUT_FILE" '0 <= d["first_tensor_seconds"] <= d["seconds"]' \
		"first_tensor_seconds not within [0, seconds]"
	note "load $M@$ref $*: $(jget "$OUT_FILE" 'd["bytes"]') bytes, $(jget "$OUT_FILE" 'd["io"]')/$(jget "$OUT_FILE" 'd["engine"]')"
}

# --json, the single-file version and the folder version (config.json etc.
# are blob shards: not tensors, not loaded)
soft load_json v1
soft load_json v2
soft load_json v1 --io direct --qd 1 --chunk 64K
soft load_json v2 --io buffered --qd 64 --chunk 4M
soft load_json v1 --host-pages huge
soft load_json v2 --host-pages small --io direct

# --host-pages: what was asked for is what the arena got; auto picks one
host_pages() {
	local p
	for p in small huge; do
		expect_ok q load "$M" --host-pages "$p" --json
		jcheck "$OUT_FILE" "d['host_pages'] == '$p'" "--host-pages $p reports $(jget "$OUT_FILE" 'd["host_pages"]')"
	done
	expect_ok q load "$M" --host-pages auto
	out_has 'host memory: '
}
soft host_pages

# every --io mode exits 0; direct on this file system really is direct
for io in direct buffered auto; do
	soft expect_ok q load "$M" --io "$io"
done
io_direct() {
	expect_ok q load "$M" --io direct --json
	jcheck "$OUT_FILE" 'd["io"] == "direct" and d["engine"] == "io_uring"' \
		"--io direct used $(jget "$OUT_FILE" 'd["io"]')/$(jget "$OUT_FILE" 'd["engine"]')"
}
soft io_direct
io_buffered() {
	expect_ok q load "$M" --io buffered --json
	jcheck "$OUT_FILE" 'd["io"] == "buffered" and d["engine"] == "pread"' \
		"--io buffered used $(jget "$OUT_FILE" 'd["io"]')/$(jget "$OUT_FILE" 'd["engine"]')"
}
soft io_buffered

# the plain output: one success line starting with "loaded"
plain() {
	expect_ok q load "$M"
	out_has '^loaded '
}
soft plain

# --verify on a good store
verify_good() {
	expect_ok q load "$M" --verify
	out_has '^loaded '
	expect_ok q load "$M" --verify --json
	jcheck "$OUT_FILE" 'd.get("verified") is True' "--verify --json does not say verified"
}
soft verify_good

# --device cuda:0 without a GPU: exit 1 and a clear one-line message
cuda_missing() {
	local n
	n=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU') || n=0
	if [ "$n" -gt 0 ]; then
		note "a GPU is present: cuda:0 load must work"
		expect_ok q load "$M" --device cuda:0 --json
		jcheck "$OUT_FILE" 'd["device"] == "cuda:0"' "device is not cuda:0"
		return 0
	fi
	expect_rc 1 q load "$M" --device cuda:0
	err_has 'cuda:0'
	err_has 'no device|no cuda|without cuda|no gpu|not found|0 found'
	err_one_line
	[ ! -s "$OUT_FILE" ] || fail "a failed cuda load printed on stdout: $(head -c 200 "$OUT_FILE")"
	note "cuda:0 without a GPU: $(cat "$ERR_FILE")"
}
soft cuda_missing

# bad values: usage errors, exit 2, nothing loaded
bad_values() {
	local a
	for a in "--qd 0" "--qd 257" "--qd -1" "--qd x" "--qd 16x" \
		"--chunk 0" "--chunk 4K" "--chunk 65537" "--chunk 100000" "--chunk 128M" "--chunk 1Q" "--chunk -64K" \
		"--device gpu" "--device cuda:" "--device cuda:-1" "--device cuda:x" "--device cpu0" "--device CUDA:0" \
		"--io sync" "--io" "--io ''" "--host-pages big" "--host-pages" "--host-pages ''" "--host-pages HUGE"; do
		# shellcheck disable=SC2086
		eval "expect_rc 2 q load $M $a"
		[ ! -s "$OUT_FILE" ] || fail "load $a printed on stdout"
	done
	expect_rc 2 q load
	expect_rc 2 q load "$M" extra
	expect_rc 2 q load "$M" --bogus
}
soft bad_values

help() {
	expect_ok q load --help
	out_has 'quiver load MODEL'
	out_has '--verify'
}
soft help

# damage: flip one byte in a shard of the current version
damage() {
	expect_ok q show "$M@v1" --json
	local d f sz
	d=$(jget "$OUT_FILE" 'max(d["tensors"], key=lambda t: t["bytes"])["shard"].split(":")[-1]')
	f=$(find "$ROOT/shards" -type f -name "$d*" | head -1)
	[ -n "$f" ] || fail "shard $d not found"
	sz=$(stat -c %s "$f")
	"$QV_PYTHON" - "$f" $((sz / 2 + 3)) <<'PY' || fail "cannot flip a byte"
import os, sys
p, off = sys.argv[1], int(sys.argv[2])
os.chmod(p, 0o644)
with open(p, "r+b") as f:
    f.seek(off); b = f.read(1); f.seek(off); f.write(bytes([b[0] ^ 0x10]))
    f.flush(); os.fsync(f.fileno())
PY
	local io
	for io in auto direct buffered; do
		expect_rc 3 q load "$M" --verify --io "$io"
		grep -q '^loaded ' "$OUT_FILE" && fail "damaged load --verify --io $io printed a success line"
		[ ! -s "$OUT_FILE" ] || fail "damaged load --verify --io $io printed on stdout: $(head -c 200 "$OUT_FILE")"
		err_has 'checksum|damage|corrupt'
		expect_rc 3 q load "$M" --verify --io "$io" --json
		[ ! -s "$OUT_FILE" ] || fail "damaged load --verify --json printed on stdout"
	done
	note "damaged shard, --verify: $(cat "$ERR_FILE")"
	# without --verify the damage is not seen: documents what --verify is for
	expect_ok q load "$M"
	# v2 (another seed) shares no shard with v1: still verifies and loads
	expect_ok q load "$M@v2" --verify
}
soft damage

qv_finish
