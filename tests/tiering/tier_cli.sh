# The tier commands end to end: init with a hot and a cold tier, publish,
# demote, promote, pin/unpin, tier --apply, status/list/show --json with their
# tier fields, rollback and load --promote of a cold version, damage in a cold
# frame (load --verify and verify exit 3), the policy run by publish, init
# refusing to move a tier that holds shards, usage errors and --help.
. "$QV_SRC/tests/cli/lib.sh"
qv_setup

HOT="$QV_SCRATCH/hot"
COLD="$QV_SCRATCH/cold"
M=org/tiers

# A safetensors file of normally distributed BF16 values (compressible) plus
# random bytes (not): mk_st OUT SEED
mk_st() {
	"$QV_PYTHON" - "$1" "$2" <<'PY' || fail "cannot write $1"
import json, random, struct, sys
out, seed = sys.argv[1], int(sys.argv[2])
r = random.Random(seed)
n = 1536 * 1024  # 3 MiB of BF16: two cold frames
vals = bytearray()
for _ in range(n):
    f = struct.pack("<f", r.gauss(0.0, 0.02))
    vals += f[2:4]
rnd = bytes(r.getrandbits(8) for _ in range(1 << 20))
small = bytes(vals[:8192])
tensors = [("w.bf16", "BF16", [n], bytes(vals)), ("w.rand", "U8", [1 << 20], rnd),
           ("norm", "BF16", [4096], small)]
hdr, off, data = {}, 0, bytearray()
for name, dt, shape, b in tensors:
    hdr[name] = {"dtype": dt, "shape": shape, "data_offsets": [off, off + len(b)]}
    data += b
    off += len(b)
h = json.dumps(hdr).encode()
h += b" " * (-len(h) % 8)
open(out, "wb").write(struct.pack("<Q", len(h)) + h + data)
PY
}

mk_st a.safetensors 1
mk_st b.safetensors 2
mk_st c.safetensors 3

# ---- --help of every tier command exits 0 --------------------------------------------------
t_help() {
	local c
	for c in init demote promote pin unpin tier status; do
		expect_ok "$QUIVER" $c --help
		out_has "usage: quiver $c"
	done
	expect_ok "$QUIVER" load --help
	out_has -- "--promote"
	expect_ok "$QUIVER" --help
	out_has "demote"
}
soft t_help

# ---- init ------------------------------------------------------------------------------------
expect_ok q init --hot "$HOT" --cold "$COLD" --hot-capacity 1G
out_has "cold tier $COLD"
[ -f "$ROOT/config.ini" ] || fail "init wrote no config.ini"

t_publish_demote() {
	expect_ok q publish $M a.safetensors --version v1
	expect_ok q publish $M b.safetensors --version v2
	expect_ok q publish $M c.safetensors --version v3 --no-activate
	expect_ok q list $M --json
	jcheck "$OUT_FILE" 'all(v["tier"] == "hot" for v in d["versions"])' "fresh versions not all hot"
	expect_ok q demote $M@v1
	out_has "demoted $M@v1"
	if grep -qi "note:" "$ERR_FILE"; then fail "demote of v1 (not protected) printed a note: $(cat "$ERR_FILE")"; fi
	expect_ok q demote $M@v3 --json
	jcheck "$OUT_FILE" 'd["action"] == "demoted" and d["shards"] == 3 and d["stored_bytes"] < d["raw_bytes"] + 3 * 4096' "demote --json of v3"
	jcheck "$OUT_FILE" 'd["kept_hot"] == 0' "demote v3 kept shards hot"
	expect_ok q list $M --json
	jcheck "$OUT_FILE" '{v["version"]: v["tier"] for v in d["versions"]} == {"v1": "cold", "v2": "hot", "v3": "cold"}' "list --json tiers after demote"
	expect_ok q show $M@v3 --json
	jcheck "$OUT_FILE" 'd["tier"] == "cold"' "show --json tier of v3"
	jcheck "$OUT_FILE" 'all(t["tier"] == "cold" for t in d["tensors"])' "show --json: a tensor of v3 not cold"
	expect_ok q show $M@v2 --json
	jcheck "$OUT_FILE" 'all(t["tier"] == "hot" for t in d["tensors"])' "show --json: a tensor of v2 not hot"
	[ -n "$(find "$COLD/shards" -type f)" ] || fail "no files under $COLD/shards"
	expect_ok q status --json
	jcheck "$OUT_FILE" 'd["tiers"][1]["tier"] == "cold" and d["tiers"][1]["shards"] == 6 and d["tiers"][1]["versions"] == 2' "status --json cold tier"
	jcheck "$OUT_FILE" 'd["tiers"][0]["versions"] == 1 and d["mixed_versions"] == 0' "status --json hot versions"
	jcheck "$OUT_FILE" 'd["saved_by_compression"] > 1000000' "status: saved_by_compression after demoting BF16 data"
	jcheck "$OUT_FILE" 'd["tiers"][1]["used_bytes"] < d["tiers"][1]["raw_bytes"]' "status: cold used >= raw"
	jcheck "$OUT_FILE" 'd["tiers"][0]["dir"] == "'"$HOT"'" and d["tiers"][1]["dir"] == "'"$COLD"'"' "status dirs"
	expect_ok q status
	out_has "cold"
	out_has "saved by compression"
	# the cold version loads and exports byte for byte
	expect_ok q load $M@v3
	out_has "cold frames: io"
	out_has "decoded on"
	out_lacks "hot shards:" # v3 is all cold: the hot engine did not run
	expect_ok q load $M@v3 --io buffered --json
	jcheck "$OUT_FILE" 'd["cold_io"] == "buffered"' "load --io buffered of a cold version: cold_io"
	expect_ok q export $M@v3 exp3
	cmp -s c.safetensors exp3/c.safetensors || fail "export of cold v3 differs from its source"
	expect_ok q verify $M@v3
	# promote
	expect_ok q promote $M@v3
	out_has "promoted $M@v3"
	expect_ok q show $M@v3 --json
	jcheck "$OUT_FILE" 'd["tier"] == "hot" and all(t["tier"] == "hot" for t in d["tensors"])' "v3 not hot after promote"
	expect_ok q load $M@v3 --json --verify
	jcheck "$OUT_FILE" 'd["cold_bytes"] == 0' "load of promoted v3 still reads cold bytes"
	expect_ok q demote $M@v3
}
t_publish_demote

# load --json of an entirely cold version prints its numbers
t_cold_load_json() {
	expect_ok q demote $M@v3
	expect_ok q load $M@v3 --json
	jcheck "$OUT_FILE" 'd["cold_bytes"] > 0 and d["tensors"] == 3 and d["engine"] in ("io_uring", "pread", "none")' "load --json of cold v3"
	expect_ok q load $M@v3
	if grep -q "(null)" "$OUT_FILE"; then fail "load of cold v3 prints '(null)': $(grep '(null)' "$OUT_FILE")"; fi
	expect_ok q load $M@v3 --json --decode-threads 3
	jcheck "$OUT_FILE" 'd["decode_threads"] == 3' "load --decode-threads 3"
	expect_rc 2 q load $M@v3 --decode-threads 0
	expect_rc 2 q load $M@v3 --decode-threads 17
	expect_rc 2 q load $M@v3 --decode-threads two
	expect_ok q load $M@v3 --json --cold-reads 1
	jcheck "$OUT_FILE" 'd["cold_reads"] == 1' "load --cold-reads 1"
	expect_ok q load $M@v3 --json
	jcheck "$OUT_FILE" 'd["cold_reads"] in (2, 16)' "load's default cold_reads"
	expect_rc 2 q load $M@v3 --cold-reads 0
	expect_rc 2 q load $M@v3 --cold-reads 65
	expect_rc 2 q load $M@v3 --cold-reads two
}
soft t_cold_load_json

# ---- rollback to a cold version: promoted, with the time taken -------------------------------
t_rollback() {
	expect_ok q rollback $M --to v1
	out_has "v1 was cold: promoted [0-9]+ shards"
	out_has "in [0-9.]+ s"
	expect_ok q list $M --json
	jcheck "$OUT_FILE" '[v["tier"] for v in d["versions"] if v["version"] == "v1"] == ["hot"]' "v1 not hot after rollback"
	jcheck "$OUT_FILE" '[v["current"] for v in d["versions"] if v["version"] == "v1"] == [True]' "v1 not current after rollback"
	expect_ok q rollback $M --to v2 --json
	jcheck "$OUT_FILE" 'd["to"] == "v2" and "promote_seconds" in d' "rollback --json"
}
soft t_rollback

# ---- load --promote --------------------------------------------------------------------------
t_load_promote() {
	expect_ok q load $M@v3
	out_has "decoded on"
	expect_ok q show $M@v3 --json
	jcheck "$OUT_FILE" 'd["tier"] == "cold"' "a plain load changed the tier of v3"
	expect_ok q load $M@v3 --promote
	out_has "promoted [0-9]+ shards"
	expect_ok q show $M@v3 --json
	jcheck "$OUT_FILE" 'd["tier"] == "hot"' "v3 not hot after load --promote"
	expect_ok q load $M@v3 --json
	jcheck "$OUT_FILE" 'd["cold_bytes"] == 0' "v3 still cold after load --promote"
}
soft t_load_promote

# ---- pin / unpin; tier --apply ---------------------------------------------------------------
t_pin() {
	expect_ok q pin $M@v3
	out_has "pinned"
	# a demote by hand moves a pinned version (the policy never does), and says so
	expect_ok q demote $M@v3
	err_has "note: $M@v3 is pinned; it stays cold until"
	expect_ok q show $M@v3 --json
	jcheck "$OUT_FILE" 'd["tier"] == "cold"' "demote by hand of pinned v3"
	expect_ok q promote $M@v3
	expect_ok q unpin $M@v3
	out_has "unpinned"
	expect_rc 1 q pin $M@nope
	expect_rc 1 q pin org/none@v1
}
soft t_pin

t_tier() {
	expect_ok q tier
	out_has "hot tier"
	expect_ok q tier --json
	"$QV_PYTHON" -c 'import json,sys; json.load(open(sys.argv[1]))' "$OUT_FILE" 2>/dev/null ||
		fail "quiver tier --json does not print JSON: $(head -c 200 "$OUT_FILE")"
}
soft t_tier

t_apply() {
	expect_ok q tier --apply --json
	jcheck "$OUT_FILE" 'd["versions_demoted"] == 0' "apply under the watermark demoted something"
	expect_ok q tier --apply
	out_has "demoted 0 versions"
}
soft t_apply

# ---- damage in a cold frame ------------------------------------------------------------------
t_damage() {
	expect_ok q demote $M@v3
	expect_ok q show $M@v3 --json
	local sh
	sh=$(jget "$OUT_FILE" '[t["shard"] for t in d["tensors"] if t["name"] == "w.bf16"][0]')
	sh=${sh#sha256:}
	local f="$COLD/shards/${sh:0:2}/${sh:2:2}/$sh"
	[ -f "$f" ] || fail "cold shard file $f not found"
	"$QV_PYTHON" - "$f" <<'PY' || fail "cannot flip a frame byte"
import struct, sys
p = sys.argv[1]
b = bytearray(open(p, "rb").read())
assert b[:8] == b"QVCOLD\r\n", b[:8]
count = struct.unpack_from("<I", b, 36)[0]
assert count >= 2, count
off, stored = struct.unpack_from("<QI", b, 64 + 32 * 1)
b[off + stored // 2] ^= 0x5A
open(p, "wb").write(b)
PY
	expect_rc 3 q load $M@v3 --verify
	[ -s "$OUT_FILE" ] && fail "load --verify of a damaged cold version printed on stdout"
	err_has "corrupt|damag|checksum"
	expect_rc 3 q load $M@v3
	[ -s "$OUT_FILE" ] && fail "load of a damaged cold version printed on stdout"
	expect_rc 3 q verify $M@v3
	cat "$OUT_FILE" "$ERR_FILE" >both.txt
	grep -q "${sh:0:12}" both.txt || fail "verify does not name the damaged shard ${sh:0:12}"
	expect_rc 3 q verify
	expect_ok q verify $M@v2
	expect_rc 3 q export $M@v3 exp3bad
	local before after
	before=$(sha256sum "$f" | cut -d' ' -f1)
	run_cmd q promote $M@v3
	[ "$RC" -ne 0 ] || fail "promote of a damaged cold version succeeded"
	[ "$RC" -eq 3 ] || note "promote of a damaged shard exits $RC (not 3)"
	after=$(sha256sum "$f" 2>/dev/null | cut -d' ' -f1)
	[ "$before" = "$after" ] || fail "failed promote changed or removed the cold file"
	[ ! -e "$HOT/shards/${sh:0:2}/${sh:2:2}/$sh" ] || fail "failed promote left a hot copy"
	expect_ok q show $M@v3 --json
	jcheck "$OUT_FILE" '[t["tier"] for t in d["tensors"] if t["name"] == "w.bf16"] == ["cold"]' "damaged shard not cold after a failed promote"
	# a cold file cut short is named as such by every reader, in its
	# frames or in its header
	local cut
	for cut in -1000 0; do
		truncate -s "$cut" "$f"
		expect_rc 3 q verify $M@v3
		cat "$OUT_FILE" "$ERR_FILE" >both.txt
		grep -q "truncated" both.txt || fail "verify of a cold shard cut to $cut: $(cat both.txt)"
		expect_rc 3 q load $M@v3
		grep -q truncated "$ERR_FILE" || fail "load of a cold shard cut to $cut: $(err)"
		expect_rc 3 q export $M@v3 exp3trunc
		grep -q truncated "$ERR_FILE" || fail "export of a cold shard cut to $cut: $(err)"
		expect_rc 3 q promote $M@v3
		grep -q truncated "$ERR_FILE" || fail "promote of a cold shard cut to $cut: $(err)"
	done
	# gone: remove the damaged version
	expect_ok q rm $M@v3
	expect_ok q verify
}
soft t_damage

# ---- init refuses to move a tier that holds shards --------------------------------------------
t_init_refuses() {
	local before
	expect_ok q demote $M@v1 # the cold tier holds shards
	before=$(cat "$ROOT/config.ini")
	expect_rc 1 q init --hot "$HOT" --cold "$QV_SCRATCH/new/a/cold2/"
	err_has "cold tier .* holds [0-9]+ shards"
	[ ! -e "$QV_SCRATCH/new" ] || fail "a refused init left the folders it made: $(find "$QV_SCRATCH/new")"
	mkdir -p "$QV_SCRATCH/kept/x"
	expect_rc 1 q init --hot "$QV_SCRATCH/kept/x/y/hot" --cold "$COLD"
	[ -d "$QV_SCRATCH/kept/x" ] && [ ! -e "$QV_SCRATCH/kept/x/y" ] ||
		fail "a refused init removed a folder it did not make, or left one it made"
	rm -rf "$QV_SCRATCH/kept"
	# what it made, not what the path names: ".." leads back to a folder
	# that was there, and a cold tier inside the hot one goes too
	mkdir -p "$QV_SCRATCH/keep_me"
	expect_rc 1 q init --hot "$QV_SCRATCH/n1/../keep_me" --cold "$COLD"
	[ -d "$QV_SCRATCH/keep_me" ] || fail "a refused init removed keep_me, which it did not make"
	[ ! -e "$QV_SCRATCH/n1" ] || fail "a refused init left n1, which it made"
	expect_rc 1 q init --hot "$QV_SCRATCH/n2" --cold "$QV_SCRATCH/n2/c"
	[ ! -e "$QV_SCRATCH/n2" ] || fail "a refused init left n2 (hot) with n2/c (cold) in it"
	rmdir "$QV_SCRATCH/keep_me"
	err_one_line
	expect_rc 1 q init --hot "$QV_SCRATCH/hot2" --cold "$COLD"
	err_has "hot tier"
	# one folder for both tiers: a demotion would delete what it moved
	expect_rc 1 q init --cold "$HOT"
	err_has "different folders"
	expect_rc 1 q init --hot "$QV_SCRATCH/hot;x"
	err_has "comment"
	expect_rc 1 q init --hot "$QV_SCRATCH/$(printf 'd%.0s' $(seq 200))"
	err_has "too long"
	[ "$(cat "$ROOT/config.ini")" = "$before" ] || fail "a refused init changed config.ini"
	# settings not given keep their values
	expect_ok q init --hot-capacity 2G --high 0.8 --low 0.5
	out_has "hot tier $HOT, cold tier $COLD"
	expect_ok q init --low 0.6
	expect_ok q status --json
	jcheck "$OUT_FILE" 'd["tiers"][0]["capacity"] == 2 << 30 and d["high"] == 0.8 and d["low"] == 0.6' "re-init with one setting"
	jcheck "$OUT_FILE" 'd["tiers"][0]["dir"] == "'"$HOT"'" and d["tiers"][1]["dir"] == "'"$COLD"'"' "re-init kept the tiers"
	expect_rc 2 q init --high 0.55
	err_has "0.6, kept from before"
	# a watermark with many digits reads back as given
	expect_ok q init --low 0.00001
	expect_ok q status --json
	jcheck "$OUT_FILE" 'd["low"] == 0.00001' "a small low watermark read back"
	expect_ok q init --low 0.5
	# a writer that finds the lock held says it waits, then goes on
	command -v flock >/dev/null || { echo "SKIP part: no flock(1)"; return 0; }
	rm -f "$QV_SCRATCH/release"
	flock -x "$ROOT/lock" bash -c 'while [ ! -e "$1" ]; do sleep 0.05; done' _ "$QV_SCRATCH/release" &
	local holder=$! i waiter
	for i in $(seq 200); do flock -n "$ROOT/lock" true || break; sleep 0.05; done
	q init --low 0.55 >waited.out 2>waited.err &
	waiter=$!
	for i in $(seq 200); do grep -q "waiting for" waited.err && break; sleep 0.05; done
	touch "$QV_SCRATCH/release"
	wait $holder
	wait $waiter || fail "init after a wait for the lock: $(cat waited.err)"
	grep -q "waiting for the store's lock" waited.err || fail "init did not say it waited: $(cat waited.err)"
	expect_ok q status --json
	jcheck "$OUT_FILE" 'd["low"] == 0.55' "init after the wait"
	expect_ok q init --low 0.5
}
soft t_init_refuses

# ---- usage errors exit 2 ---------------------------------------------------------------------
t_usage() {
	local a
	expect_rc 2 q demote
	expect_rc 2 q demote $M
	expect_rc 2 q promote $M
	expect_rc 2 q promote $M@v1 extra
	expect_rc 2 q pin $M
	expect_rc 2 q unpin
	expect_rc 2 q demote $M@v1 --bogus
	expect_rc 2 q tier extra
	expect_rc 2 q tier --bogus
	expect_rc 2 q status extra
	expect_rc 2 q load $M@v1 --promote=yes
	for a in "--hot-capacity abc" "--hot-capacity -5" "--hot-capacity 10X" "--high 2" "--high 0" "--low abc" "--high 0.5 --low 0.6" "--bogus"; do
		# shellcheck disable=SC2086
		expect_rc 2 q init $a
		err_has "usage|must|unrecognized|invalid|unknown"
	done
}
soft t_usage

# ---- publish with a tiny hot capacity runs the policy -----------------------------------------
t_policy_publish() {
	ROOT="$QV_SCRATCH/root2"
	local h="$QV_SCRATCH/hot-p" c="$QV_SCRATCH/cold-p"
	# each version ~4.1 MB hot; capacity 6M: high 5.4M, low 4.5M
	expect_ok q init --hot "$h" --cold "$c" --hot-capacity 6M --high 0.9 --low 0.75
	expect_ok q publish org/p a.safetensors --version v1
	if grep -qi "demoted" "$OUT_FILE"; then fail "first publish under capacity demoted something"; fi
	expect_ok q publish org/p b.safetensors --version v2
	out_has "tier policy: demoted 1 version"
	expect_ok q list org/p --json
	jcheck "$OUT_FILE" '{v["version"]: v["tier"] for v in d["versions"]} == {"v1": "cold", "v2": "hot"}' "policy after publish v2"
	# a pinned and an aliased version stay hot; v2 goes (least recently loaded)
	expect_ok q pin org/p@v1
	expect_ok q promote org/p@v1
	expect_ok q publish org/p c.safetensors --version v3 --alias keep
	out_has "tier policy: demoted 1 version"
	expect_ok q list org/p --json
	jcheck "$OUT_FILE" '{v["version"]: v["tier"] for v in d["versions"]} == {"v1": "hot", "v2": "cold", "v3": "hot"}' "policy never demotes pinned/current"
	expect_ok q tier --apply --json
	jcheck "$OUT_FILE" 'd["versions_demoted"] == 0 and d["hot_after"] == d["hot_before"]' "apply with only protected versions hot"
	expect_ok q unpin org/p@v1
	expect_ok q tier --apply
	out_has "demoted 1 version"
	expect_ok q list org/p --json
	jcheck "$OUT_FILE" '{v["version"]: v["tier"] for v in d["versions"]} == {"v1": "cold", "v2": "cold", "v3": "hot"}' "apply after unpin"
	expect_ok q publish org/p a.safetensors --version v4 --json
	"$QV_PYTHON" -c 'import json,sys; json.load(open(sys.argv[1]))' "$OUT_FILE" 2>/dev/null ||
		fail "publish --json with the policy running is not one JSON document"
	expect_ok q verify
}
soft t_policy_publish

# ---- config.ini: folders stay absolute; a bad hand edit is named, not ignored -------------------
t_config() {
	local d="$QV_SCRATCH/cfg"
	mkdir -p "$d"
	run_cmd sh -c "cd '$d' && '$QUIVER' --root rel init --cold cold-rel"
	[ "$RC" = 0 ] || fail "init with a relative --root: exit $RC: $(cat "$ERR_FILE")"
	grep -qx "hot = $d/rel" "$d/rel/config.ini" || fail "relative --root: config.ini says $(grep '^hot' "$d/rel/config.ini")"
	mkdir -p "$d/typo"
	printf '[tiers]\nhot_capcity = 5G\n' >"$d/typo/config.ini"
	expect_rc 1 "$QUIVER" --root "$d/typo" tier
	err_has "line 2: unknown setting hot_capcity"
	printf '[tiers]\nhot_capacity = -1\n' >"$d/typo/config.ini"
	expect_rc 1 "$QUIVER" --root "$d/typo" tier
	err_has "not a byte count"
	printf '[Tiers]\nhot = /x\n' >"$d/typo/config.ini"
	expect_rc 1 "$QUIVER" --root "$d/typo" tier
	err_has "unknown section"
}
soft t_config

# ---- the policy: a failure does not fail the publish; counts; dedup in status ------------------
t_policy_edges() {
	ROOT="$QV_SCRATCH/root5"
	local h="$QV_SCRATCH/hot-5" c="$QV_SCRATCH/cold-5" x
	expect_ok q init --hot "$h" --cold "$c" --hot-capacity 6M
	expect_ok q publish org/e a.safetensors --version v1
	# no demotion can write: a file where each fan-out folder would go
	for x in $(seq 0 255); do : >"$c/shards/$(printf %02x "$x")"; done
	expect_ok q publish org/e b.safetensors --version v2
	err_has "warning: the tier policy after this publish failed"
	expect_ok q list org/e --json
	jcheck "$OUT_FILE" 'sorted(v["version"] for v in d["versions"]) == ["v1", "v2"]' "versions after a publish whose policy failed"
	expect_rc 1 q tier --apply
	rm -f "$c"/shards/??
	expect_ok q tier --apply --json
	jcheck "$OUT_FILE" 'd["versions_demoted"] == 1' "tier --apply once the cold tier is writable"
	# a version whose shards all stay hot (shared with current) is not counted
	ROOT="$QV_SCRATCH/root6"
	expect_ok q init --hot "$QV_SCRATCH/hot-6" --cold "$QV_SCRATCH/cold-6" --hot-capacity 1M
	expect_ok q publish org/s a.safetensors --version v1
	expect_ok q publish org/s a.safetensors --version v2
	expect_ok q tier --apply --json
	jcheck "$OUT_FILE" 'd["versions_demoted"] == 0 and d["shards"] == 0' "apply with every shard shared with current"
	# two equal tensors in one file are stored once: saved by dedup
	"$QV_PYTHON" - tied.safetensors <<'PY' || fail "cannot write tied.safetensors"
import json, os, struct, sys
b = os.urandom(1 << 20)
h = json.dumps({"a": {"dtype": "U8", "shape": [1 << 20], "data_offsets": [0, 1 << 20]},
                "b": {"dtype": "U8", "shape": [1 << 20], "data_offsets": [1 << 20, 2 << 20]}}).encode()
h += b" " * (-len(h) % 8)
open(sys.argv[1], "wb").write(struct.pack("<Q", len(h)) + h + b + b)
PY
	ROOT="$QV_SCRATCH/root7"
	expect_ok q publish org/t tied.safetensors
	expect_ok q status --json
	jcheck "$OUT_FILE" 'd["saved_by_dedup"] == 1 << 20' "saved_by_dedup of a tied tensor"
}
soft t_policy_edges

# ---- a store without a cold tier ---------------------------------------------------------------
t_no_cold() {
	ROOT="$QV_SCRATCH/root3"
	expect_ok q publish org/n a.safetensors --version v1
	expect_ok q publish org/n b.safetensors --version v2
	expect_rc 1 q demote org/n@v1
	err_has "cold tier"
	err_one_line
	expect_ok q status --json
	jcheck "$OUT_FILE" 'd["tiers"][0]["used_bytes"] > 0' "status of a one-tier store"
	expect_ok q tier
	out_has "no cold tier, so nothing is demoted"
	expect_ok q tier --json
	jcheck "$OUT_FILE" 'd["policy_active"] is False' "tier --json of a one-tier store"
	expect_ok q tier --apply
}
soft t_no_cold

qv_finish
