#!/usr/bin/env bash
# quiverd under concurrent load: 8 raw-socket clients load different
# versions (load_host: memfd over SCM_RIGHTS, every tensor compared with the
# source safetensors) while a publish, a rollback and a demote run through
# the CLI; then the DRAM path (warm, load from "dram") under 8 clients.
. "$(dirname "$0")/../cli/lib.sh"
. "$(dirname "$0")/dlib.sh"

qv_setup
[ -x "$QUIVERD" ] || fail "quiverd not found: $QUIVERD"
MPORT=$(free_port)
for i in 1 2 3 4; do
	gen "a$i.safetensors" --hidden 256 --layers 4 --seed "$i"
done
gen bdir --shards 2 --hidden 256 --layers 2 --seed 7
gen c1.safetensors --hidden 256 --layers 4 --seed 1 --mutate 0.5 --mutate-seed 11

expect_ok q init --hot "$QV_SCRATCH/hot" --cold "$QV_SCRATCH/cold"
for i in 1 2 3; do
	QUIVER_NO_DAEMON=1 expect_ok q publish a "a$i.safetensors" --version "v$i"
done
QUIVER_NO_DAEMON=1 expect_ok q publish b bdir --version v1
QUIVER_NO_DAEMON=1 expect_ok q publish c c1.safetensors --version v1
QUIVER_NO_DAEMON=1 expect_ok q demote a@v1 # a cold version to load from
dstart --dram 64M --metrics-port "$MPORT" --no-warm

# loader ITER MODEL REF SRC...: loads ITER times, compares each; exit 1 on
# any failure (the reasons on stderr)
cat >loader.py <<'PY'
import json, sys
sys.path.insert(0, sys.argv[1])
import qvd
sock, iters, model, ref, srcs = sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5], sys.argv[6:]
want = sys.argv[0].endswith("dram.py")
bad = 0
for i in range(iters):
    try:
        r = qvd.load_and_compare(sock, model, ref, srcs)
    except Exception as e:
        r = {"ok": False, "error": repr(e)}
    if r["ok"] and want and r.get("source") != "dram":
        r = dict(r, ok=False, error="expected source dram, got %s" % r.get("source"))
    if not r["ok"]:
        bad += 1
        print(f"{model}@{ref} load {i}: {json.dumps(r)}", file=sys.stderr)
print(json.dumps({"model": model, "ref": ref, "iters": iters, "failed": bad}))
sys.exit(1 if bad else 0)
PY
cp loader.py loader_dram.py

B=(bdir/*.safetensors)
CLIENTS=(
	"a v1 a1.safetensors"
	"a v2 a2.safetensors"
	"a v3 a3.safetensors"
	"b v1 ${B[*]}"
	"c v1 c1.safetensors"
	"a v2 a2.safetensors"
	"a v1 a1.safetensors"
	"a v3 a3.safetensors"
)

# ---- 8 loaders, with a publish, a rollback and a demote at the same time ----------------------
t_mixed() {
	local pids=() i c n0
	n0=$(grep -c "quiverd: .*: exit" "$DLOG")
	for i in "${!CLIENTS[@]}"; do
		# shellcheck disable=SC2086
		"$QV_PYTHON" loader.py "$QV_SRC/tests/daemon" "$ROOT/quiverd.sock" 6 ${CLIENTS[$i]} \
			>"load$i.out" 2>"load$i.err" &
		pids+=($!)
	done
	sleep 0.2
	q publish a a4.safetensors --version v4 >pub.out 2>pub.err &
	local p1=$!
	q rollback a --to v2 >rb.out 2>rb.err &
	local p2=$!
	q demote a@v3 >dem.out 2>dem.err &
	local p3=$!
	local bad=0
	wait "$p1" || { echo "publish failed: $(cat pub.err)" >&2; bad=1; }
	wait "$p2" || { echo "rollback failed: $(cat rb.err)" >&2; bad=1; }
	wait "$p3" || { echo "demote failed: $(cat dem.err)" >&2; bad=1; }
	for i in "${!pids[@]}"; do
		if ! wait "${pids[$i]}"; then
			echo "client $i (${CLIENTS[$i]%% *.safetensors*}) failed:" >&2
			head -c 1500 "load$i.err" >&2
			bad=1
		fi
	done
	[ "$bad" -eq 0 ] || fail "a load or a command failed under concurrency"
	[ "$(($(grep -c "quiverd: .*: exit" "$DLOG") - n0))" -ge 3 ] ||
		fail "the publish/rollback/demote did not all go through the daemon"
	kill -0 "$DPID" || fail "quiverd died"
	# everything still loads byte-exact afterwards, v4 included
	local r
	for c in "a v4 a4.safetensors" "a v3 a3.safetensors" "a v2 a2.safetensors" "a v1 a1.safetensors"; do
		# shellcheck disable=SC2086
		r=$(qvd load $c) || fail "load $c after the commands: $r"
	done
	expect_ok q show a --json
	# the publish (activates v4) and the rollback race: either order is fine
	jcheck "$OUT_FILE" 'd["version"] in ("v2", "v4")' "a's current is neither v2 (rollback) nor v4 (publish)"
}
soft t_mixed

# ---- the cold tier: a demoted version loads byte-exact and counts as cold ----------------------
t_cold() {
	local c0 c1 r
	c0=$(metric 'quiver_load_bytes_total{source="cold"}')
	r=$(qvd load a v3 a3.safetensors) || fail "load of the demoted a@v3: $r"
	c1=$(metric 'quiver_load_bytes_total{source="cold"}')
	[ "$c1" -gt "$c0" ] ||
		fail "a load of a cold version (a@v3, demoted) did not move quiver_load_bytes_total{source=\"cold\"} ($c0 -> $c1): $r"
}
soft t_cold

# ---- DRAM: warm, then 8 concurrent loads from DRAM ----------------------------------------------
t_dram() {
	local r pids=() i bad=0 h0 h1
	r=$(qvd call '{"op":"warm","model":"a","ref":"v4"}')
	case "$r" in *'"ok": true'*) ;; *) fail "warm a@v4: $r" ;; esac
	r=$(qvd call '{"op":"warm","model":"a","ref":"v3"}') # from the cold tier
	case "$r" in *'"ok": true'*) ;; *) fail "warm a@v3 (cold): $r" ;; esac
	r=$(qvd call '{"op":"dram"}')
	case "$r" in *'a@v4'*'a@v3'* | *'a@v3'*'a@v4'*) ;; *) fail "the DRAM tier does not list a@v3 and a@v4: $r" ;; esac
	h0=$(metric quiver_dram_hits_total)
	for i in 0 1 2 3 4 5 6 7; do
		if [ $((i % 2)) -eq 0 ]; then
			"$QV_PYTHON" loader_dram.py "$QV_SRC/tests/daemon" "$ROOT/quiverd.sock" 4 a v4 a4.safetensors \
				>"dram$i.out" 2>"dram$i.err" &
		else
			"$QV_PYTHON" loader_dram.py "$QV_SRC/tests/daemon" "$ROOT/quiverd.sock" 4 a v3 a3.safetensors \
				>"dram$i.out" 2>"dram$i.err" &
		fi
		pids+=($!)
	done
	for i in "${!pids[@]}"; do
		wait "${pids[$i]}" || { echo "dram client $i failed:" >&2; head -c 1500 "dram$i.err" >&2; bad=1; }
	done
	[ "$bad" -eq 0 ] || fail "a load from the DRAM tier failed or did not come from DRAM"
	h1=$(metric quiver_dram_hits_total)
	[ "$h1" -gt "$h0" ] || fail "quiver_dram_hits_total did not move ($h0 -> $h1)"
	# cooled: loads come from the store again, still byte-exact
	r=$(qvd call '{"op":"cool","model":"a","ref":"v4"}')
	case "$r" in *'"ok": true'*) ;; *) fail "cool a@v4: $r" ;; esac
	r=$(qvd load a v4 a4.safetensors) || fail "a@v4 after cool: $r"
	case "$r" in *'"source": "dram"'*) fail "a@v4 still served from DRAM after cool: $r" ;; esac
	r=$(qvd load a v3 a3.safetensors) || fail "a@v3 after the DRAM loads: $r"
}
soft t_dram

dstop TERM
soft eval '[ "$DRC" -eq 0 ] || fail "quiverd exited $DRC on SIGTERM"'
QUIVER_NO_DAEMON=1 soft expect_ok q verify
qv_finish
