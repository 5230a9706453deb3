# Concurrency: publishers on one root at once (different models; the same
# model with different labels) while readers loop over list/show/verify.
# Everything succeeds, verify is clean and every version exports byte for byte.
. "$(dirname "$0")/lib.sh"
qv_setup

ARGS=(--hidden 512 --layers 3 --vocab 8192)     # ~40 MB each
gen base.safetensors --hidden 128 --layers 1 --vocab 512
gen a.safetensors "${ARGS[@]}" --seed 11
gen b.safetensors "${ARGS[@]}" --seed 22
gen a2.safetensors "${ARGS[@]}" --seed 11 --mutate 0.5   # shares half of a's tensors
gen c.safetensors "${ARGS[@]}" --seed 33
expect_ok q publish org/base base.safetensors

mkdir -p logs
# readers: loop until the stop file appears; every call must succeed
reader() {
	local i=0 rc
	while [ ! -e logs/stop ]; do
		q list >/dev/null 2>>logs/reader$1.err || { echo "list rc=$?" >>logs/reader$1.fail; }
		q list --json >logs/r$1.json 2>>logs/reader$1.err || echo "list --json rc=$?" >>logs/reader$1.fail
		"$QV_PYTHON" -c 'import json,sys; json.load(open(sys.argv[1]))' logs/r$1.json 2>>logs/reader$1.err ||
			echo "list --json printed bad JSON" >>logs/reader$1.fail
		q show org/base --json >/dev/null 2>>logs/reader$1.err || echo "show rc=$?" >>logs/reader$1.fail
		q list org/base >/dev/null 2>>logs/reader$1.err || echo "list org/base rc=$?" >>logs/reader$1.fail
		# the models being published: either not there yet (1) or whole (0)
		q show org/a --json >/dev/null 2>&1
		rc=$?
		[ $rc -le 1 ] || echo "show org/a rc=$rc" >>logs/reader$1.fail
		i=$((i + 1))
		[ $i -eq 1 ] && touch logs/ready$1
	done
	echo $i >logs/reader$1.count
}
reader 1 &
R1=$!
reader 2 &
R2=$!
# publishers start once both readers are in their loop
for _ in $(seq 300); do [ -e logs/ready1 ] && [ -e logs/ready2 ] && break; sleep 0.1; done

# round 1: different models at once; round 2: same model, different labels
publish_bg() { # LOG MODEL FILE ARGS...
	local log=$1
	shift
	q publish "$@" --json >"logs/$log.out" 2>"logs/$log.err"
	echo $? >"logs/$log.rc"
}
publish_bg pa org/a a.safetensors --version v1 &
P1=$!
publish_bg pb org/b b.safetensors --version v1 &
P2=$!
wait $P1 $P2
publish_bg pa2 org/a a2.safetensors --version v2 &
P3=$!
publish_bg pc org/a c.safetensors --version c1 --no-activate &
P4=$!
publish_bg pb2 org/b a2.safetensors --version v2 &       # dedups against org/a's shards
P5=$!
wait $P3 $P4 $P5
# round 3..5: three publishers of one model at once, each with new data
for k in 3 4 5; do
	for j in 1 2 3; do
		gen s$k$j.safetensors --hidden 256 --layers 2 --vocab 4096 --seed 5 --mutate 0.5 --mutate-seed $k$j
	done
	pids=()
	for j in 1 2 3; do
		publish_bg s$k$j org/s s$k$j.safetensors --version r$k-$j &
		pids+=($!)
	done
	wait "${pids[@]}"
done
touch logs/stop
wait $R1 $R2

for p in pa pb pa2 pc pb2 s31 s32 s33 s41 s42 s43 s51 s52 s53; do
	[ "$(cat logs/$p.rc)" = 0 ] || fail "concurrent publish $p exited $(cat logs/$p.rc): $(cat logs/$p.err)"
done
for r in 1 2; do
	[ ! -s logs/reader$r.fail ] || fail "reader $r saw failures: $(sort logs/reader$r.fail | uniq -c | head -5) / $(head -3 logs/reader$r.err)"
	note "reader $r made $(cat logs/reader$r.count) rounds"
done

expect_ok q verify --json
jcheck "$OUT_FILE" 'd["ok"] is True and d["versions"] == 15' "verify after concurrent publishes: 15 versions, clean"
expect_ok q list org/a --json
jcheck "$OUT_FILE" 'sorted(v["version"] for v in d["versions"]) == ["c1", "v1", "v2"]' "org/a has v1, v2, c1"
expect_ok q history org/a --json
jcheck "$OUT_FILE" '[e["to"] for e in d["history"]] == ["v1", "v2"]' "org/a history: v1 then v2 (c1 not activated)"

check_export() { # MODEL@REF FILE
	rm -rf exp && expect_ok q export "$1" exp
	cmp "$2" "exp/$2" || fail "export of $1 differs from $2"
}
check_export org/a@v1 a.safetensors
check_export org/a@v2 a2.safetensors
check_export org/a@c1 c.safetensors
check_export org/b@v1 b.safetensors
check_export org/b@v2 a2.safetensors
check_export org/base base.safetensors
for k in 3 4 5; do for j in 1 2 3; do check_export org/s@r$k-$j s$k$j.safetensors; done; done
expect_ok q list org/s --json
jcheck "$OUT_FILE" 'len(d["versions"]) == 9 and sum(v["current"] for v in d["versions"]) == 1' "org/s: 9 versions, one current"

# shared shards are stored once: org/b@v2 = org/a@v2 byte for byte
expect_ok q gc --dry-run --json
jcheck "$OUT_FILE" 'd["shards"] == 0 and d["temp_files"] == 0' "nothing to collect after concurrent publishes"
tmp_empty

qv_finish
