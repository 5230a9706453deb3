# Migrations racing other commands, each race forced at one instant by an
# LD_PRELOAD shim (race_shim.c, QV_RACE_SHIM) that holds one call of the
# first command until the test releases it:
#   - two demotes of the same version (the second must not delete the
#     first's committed copy);
#   - a promote while a demote is about to unlink the hot copy;
#   - activate of the version the policy is demoting (it must stay hot);
#   - verify and export while a promote moves the shard they look at (no
#     false damage);
#   - pin and alias of a cold version promote it, and so does publishing a
#     current version whose shards are found on the cold tier.
# A promote whose O_DIRECT writes the file system refuses (EINVAL, the shim
# again) writes them through the page cache instead.
# And one race of the store's own: a source file written during its publish,
# its mtime set back, must fail the publish (ctime gives it away).
# After each, every version verifies and exports byte for byte.
. "$QV_SRC/tests/cli/lib.sh"
qv_setup

SHIM=${QV_RACE_SHIM:-}
[ -f "$SHIM" ] || fail "QV_RACE_SHIM does not name the shim library: '$SHIM'"
# an ASan build wants its runtime first among the preloaded libraries
export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}verify_asan_link_order=0"

M=org/race
N=0
expect_ok "$QV_PYTHON" "$GEN" m1 --layers 2 --hidden 256 --vocab 1000 --shards 1 --values normal --seed 1
expect_ok "$QV_PYTHON" "$GEN" m2 --layers 2 --hidden 256 --vocab 1000 --shards 1 --values normal --seed 2

# fresh_store NAME: a store of its own for one race (ROOT, HOT, COLD), with
# v1 and v2 published hot, v2 current
fresh_store() {
	ROOT="$QV_SCRATCH/$1/root" HOT="$QV_SCRATCH/$1/hot" COLD="$QV_SCRATCH/$1/cold"
	expect_ok q init --hot "$HOT" --cold "$COLD"
	expect_ok q publish $M m1 --version v1
	expect_ok q publish $M m2 --version v2
}

# held HOLD MATCH CMD...: starts CMD in the background under the shim and
# returns once the shim holds the call; HELD_PID, GO for release.
held() {
	local hold=$1 match=$2
	shift 2
	N=$((N + 1))
	local mark="$QV_SCRATCH/mark$N"
	GO="$QV_SCRATCH/go$N"
	rm -f "$mark" "$GO"
	LD_PRELOAD="$SHIM" QV_RACE_HOLD=$hold QV_RACE_MATCH=$match QV_RACE_MARK=$mark \
		QV_RACE_GO=$GO "$@" >"$QV_SCRATCH/held$N.out" 2>"$QV_SCRATCH/held$N.err" &
	HELD_PID=$!
	for _ in $(seq 3000); do
		[ -e "$mark" ] && return 0
		kill -0 $HELD_PID 2>/dev/null || break
		sleep 0.01
	done
	cat "$QV_SCRATCH/held$N.err" >&2
	fail "the shim never held $hold of '$match' in: $*"
}

# release: lets the held command go on and waits for it; HELD_RC
release() {
	touch "$GO"
	wait $HELD_PID
	HELD_RC=$?
}

# into_held CMD...: runs CMD in the background while the held command waits,
# gives it time to run into the held one (were the two not serialized),
# releases the held one, and fails unless both exit 0.
into_held() {
	"$@" >second.out 2>second.err &
	local second=$!
	sleep 0.5
	release
	wait $second || fail "the second command failed: $* : $(cat second.err)"
	[ "$HELD_RC" -eq 0 ] || fail "the held command failed: $(cat "$QV_SCRATCH/held$N.err")"
}

# all_intact: every version verifies, and exports as it was published
all_intact() {
	expect_ok q verify $M@v1
	expect_ok q verify $M@v2
	rm -rf e1 e2
	expect_ok q export $M@v1 e1
	expect_ok q export $M@v2 e2
	diff -r m1 e1 >/dev/null || fail "export of v1 differs from what was published ($1)"
	diff -r m2 e2 >/dev/null || fail "export of v2 differs from what was published ($1)"
}

# tier_of LABEL: hot, cold or mixed, by the version's tensors (m1 and m2
# share their config files, which stay hot while the other version is hot)
tier_of() {
	q show $M@"$1" --json | "$QV_PYTHON" -c '
import json, sys
t = {x["tier"] for x in json.load(sys.stdin)["tensors"]}
print(t.pop() if len(t) == 1 else "mixed")'
}

# ---- init while a publish that opened the store before it runs ------------------------------
# init may move an empty hot tier; a publish that read the old config must not
# then write its shards into the old folder (where no one looks any more)
t_init_during_publish() {
	ROOT="$QV_SCRATCH/initpub/root"
	held open m2/model q publish $M m2 --version v2
	expect_ok q init --hot "$QV_SCRATCH/initpub/hot2"
	release
	[ "$HELD_RC" -ne 0 ] || fail "a publish that read the old config.ini succeeded after init moved the hot tier"
	grep -q "changed since this command opened the store" "$QV_SCRATCH/held$N.err" ||
		fail "the held publish did not say why: $(cat "$QV_SCRATCH/held$N.err")"
	expect_ok q publish $M m2 --version v2
	expect_ok q verify $M@v2
	[ -z "$(find "$ROOT/shards" -type f 2>/dev/null)" ] || fail "shards were written into the old hot folder"
}
soft t_init_during_publish

# ---- two demotes of one version ------------------------------------------------------------
t_two_demotes() {
	fresh_store two_demotes
	held rename /mig- q demote $M@v1
	into_held q demote $M@v1
	[ "$(tier_of v1)" = cold ] || fail "v1 is $(tier_of v1) after two demotes"
	all_intact "two demotes"
}
soft t_two_demotes

# ---- a promote while a demote is about to unlink the hot copy -------------------------------
t_promote_during_demote() {
	fresh_store promote_during_demote
	held unlink /hot/shards/ q demote $M@v1
	into_held q promote $M@v1
	[ "$(tier_of v1)" = hot ] || fail "v1 is $(tier_of v1) after demote then promote"
	all_intact "promote after demote"
}
soft t_promote_during_demote

# ---- activate of the version the policy is demoting -----------------------------------------
t_activate_during_policy() {
	fresh_store activate_during_policy
	# v1 is the only candidate (v2 is current); a hot capacity of 1 byte puts
	# the tier over its high watermark.
	expect_ok q init --hot "$HOT" --cold "$COLD" --hot-capacity 1
	expect_ok q status --json
	jcheck "$OUT_FILE" 'd["tiers"][0]["capacity"] == 1' "the test could not set the hot capacity"
	held rename /mig- q tier --apply
	expect_ok q activate $M@v1
	release
	[ "$HELD_RC" -eq 0 ] || fail "tier --apply failed: $(cat "$QV_SCRATCH/held$N.err")"
	[ "$(tier_of v1)" = hot ] || fail "v1, made current while the policy demoted it, is $(tier_of v1)"
	all_intact "activate during the policy"
	# the policy now demotes v2, no longer protected
	expect_ok q tier --apply
	[ "$(tier_of v2)" = cold ] || fail "the policy left v2 $(tier_of v2)"
	[ "$(tier_of v1)" = hot ] || fail "the policy moved current v1 to $(tier_of v1)"
}
soft t_activate_during_policy

# ---- verify and export while a promote moves their shard ------------------------------------
t_readers_during_promote() {
	fresh_store readers_during_promote
	expect_ok q demote $M@v2
	held open /cold/shards/ q verify $M@v2
	expect_ok q promote $M@v2
	release
	[ "$HELD_RC" -eq 0 ] || fail "verify during a promote: exit $HELD_RC: $(cat "$QV_SCRATCH/held$N.out" "$QV_SCRATCH/held$N.err")"
	expect_ok q demote $M@v2
	rm -rf e3
	held open /cold/shards/ q export $M@v2 e3
	expect_ok q promote $M@v2
	release
	[ "$HELD_RC" -eq 0 ] || fail "export during a promote: exit $HELD_RC: $(cat "$QV_SCRATCH/held$N.err")"
	diff -r m2 e3 >/dev/null || fail "export during a promote differs from what was published"
}
soft t_readers_during_promote

# ---- pin, alias and publish protect a version: its cold shards come back --------------------
t_pin_alias() {
	fresh_store pin_alias
	expect_ok q demote $M@v2
	expect_ok q pin $M@v2
	out_has "was cold: promoted [0-9]+ shards"
	[ "$(tier_of v2)" = hot ] || fail "pinned v2 is $(tier_of v2)"
	expect_ok q unpin $M@v2
	expect_ok q demote $M@v2
	expect_ok q alias $M stable v2
	out_has "was cold: promoted [0-9]+ shards"
	[ "$(tier_of v2)" = hot ] || fail "aliased v2 is $(tier_of v2)"
	all_intact "pin and alias"
	# v3 has v1's bytes, all of them on the cold tier
	expect_ok q demote $M@v1
	expect_ok q publish $M m1 --version v3
	out_has "v3 was cold: promoted [0-9]+ shards"
	[ "$(tier_of v3)" = hot ] || fail "current v3, published onto cold shards, is $(tier_of v3)"
}
soft t_pin_alias

# ---- a source written during its publish ------------------------------------------------------
t_source_changed() {
	fresh_store source_changed
	expect_ok "$QV_PYTHON" "$GEN" m3.safetensors --layers 2 --hidden 256 --vocab 1000 --seed 3
	held open /pub- q publish $M m3.safetensors --version v3 # writing its first shard
	"$QV_PYTHON" - m3.safetensors <<'PY' || fail "cannot rewrite m3.safetensors"
import os, sys
p = sys.argv[1]
st = os.stat(p)
with open(p, "r+b") as f:  # one byte of the last tensor, mtime put back
    f.seek(st.st_size - 1)
    b = f.read(1)
    f.seek(st.st_size - 1)
    f.write(bytes([b[0] ^ 0xff]))
os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
PY
	release
	[ "$HELD_RC" -eq 1 ] || fail "a publish whose source changed under it exited $HELD_RC, want 1: $(cat "$QV_SCRATCH/held$N.out")"
	grep -q "changed while being published" "$QV_SCRATCH/held$N.err" ||
		fail "the publish does not say its source changed: $(cat "$QV_SCRATCH/held$N.err")"
	expect_rc 1 q show $M@v3
	expect_ok q verify
}
soft t_source_changed

# ---- a promote whose direct writes are refused ---------------------------------------------
# The hot tier takes O_DIRECT at open, then refuses the writes from the
# third on (EINVAL): promote must write those frames through the page cache
# and end with every byte in place. 16 MiB of embeddings: whole 2 MiB
# frames, the ones written with O_DIRECT.
t_direct_refused() {
	fresh_store direct_refused
	if ! dd if=/dev/zero of="$HOT/.direct-probe" bs=4096 count=1 oflag=direct status=none 2>/dev/null; then
		rm -f "$HOT/.direct-probe"
		note "SKIP t_direct_refused: $HOT refuses O_DIRECT at open, so promote never writes with it"
		return 0
	fi
	rm -f "$HOT/.direct-probe"
	expect_ok "$QV_PYTHON" "$GEN" m3 --layers 1 --hidden 1024 --vocab 8000 --shards 1 --values normal --seed 3
	expect_ok q publish $M m3 --version v3 --no-activate
	expect_ok q demote $M@v3
	[ "$(tier_of v3)" = cold ] || fail "v3 is $(tier_of v3) after demote"
	local log="$QV_SCRATCH/refused"
	rm -f "$log"
	expect_ok env LD_PRELOAD="$SHIM" QV_SHIM_REFUSE_DIRECT=3 QV_SHIM_REFUSED="$log" \
		"$QUIVER" --root "$ROOT" promote $M@v3
	[ -s "$log" ] || fail "no direct write was refused: the promote never took the fallback"
	note "promote: $(wc -l <"$log") direct writes refused, written through the page cache"
	[ "$(tier_of v3)" = hot ] || fail "v3 is $(tier_of v3) after promote"
	expect_ok q verify $M@v3
	rm -rf e3
	expect_ok q export $M@v3 e3
	diff -r m3 e3 >/dev/null || fail "export of v3 differs from what was published"
	all_intact "promote with refused direct writes"
}
soft t_direct_refused
qv_finish
