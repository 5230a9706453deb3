# Shared helpers for the CLI script tests (sourced, not run).
#
# Environment (set by qv_script_test in tests/CMakeLists.txt; the defaults let
# a script run by hand from the source tree after a build in ./build):
#   QUIVER      the quiver binary
#   QV_SRC      the source root
#   QV_PYTHON   python3
#   QV_SCRATCH  a per-test scratch folder; wiped and recreated by qv_setup
# Exit 77 means "skipped" to CTest.

set -u
set -o pipefail

QV_SRC=${QV_SRC:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
QUIVER=${QUIVER:-$QV_SRC/build/cli/quiver}
QV_PYTHON=${QV_PYTHON:-python3}
QV_SCRATCH=${QV_SCRATCH:-/tmp/qv-scratch-$(basename "$0" .sh)}
GEN="$QV_SRC/python/tools/gen_model.py"
QV_TEST=$(basename "$0" .sh)

unset QUIVER_ROOT

fail() {
	echo "FAIL [$QV_TEST]: $*" >&2
	if [ -n "${QV_LAST_CMD:-}" ]; then
		echo "  last command: $QV_LAST_CMD (rc=$QV_LAST_RC)" >&2
		echo "  --- stdout (head) ---" >&2
		head -c 2000 "$QV_SCRATCH/last.out" >&2 2>/dev/null
		echo "  --- stderr (head) ---" >&2
		head -c 2000 "$QV_SCRATCH/last.err" >&2 2>/dev/null
	fi
	exit 1
}

# soft CMD...: run a check in a subshell; if it fails (fail() exits the
# subshell), record it and go on, so one product bug does not hide the next.
# qv_finish at the end of a script turns recorded failures into exit 1.
QV_SOFT_FAILS=0
soft() {
	( "$@" )
	local rc=$?
	if [ "$rc" -ne 0 ]; then
		QV_SOFT_FAILS=$((QV_SOFT_FAILS + 1))
		echo "  (recorded failure #$QV_SOFT_FAILS; continuing)" >&2
	fi
	return 0
}

qv_finish() {
	if [ "$QV_SOFT_FAILS" -ne 0 ]; then
		echo "FAIL [$QV_TEST]: $QV_SOFT_FAILS check(s) failed (see above)" >&2
		exit 1
	fi
	echo "$QV_TEST: ok"
	exit 0
}

# err_no_ctl: stderr holds no control characters except line ends and tabs
# (a name with ESC or \x01 must not reach the terminal raw).
err_no_ctl() {
	if LC_ALL=C grep -q $'[\x01-\x08\x0b-\x1f\x7f]' "$ERR_FILE"; then
		fail "stderr echoes raw control characters: $(od -c "$ERR_FILE" | head -3 | tr '\n' ' ')"
	fi
}

skip() {
	echo "SKIP [$QV_TEST]: $*"
	exit 77
}

note() { echo "# $*"; }

# Fresh scratch folder; cd into it; ROOT is the store root used by q().
qv_setup() {
	[ -x "$QUIVER" ] || fail "quiver binary not found: $QUIVER"
	[ -f "$GEN" ] || fail "generator not found: $GEN"
	rm -rf "$QV_SCRATCH"
	mkdir -p "$QV_SCRATCH" || fail "cannot create $QV_SCRATCH"
	cd "$QV_SCRATCH" || fail "cannot cd $QV_SCRATCH"
	ROOT="$QV_SCRATCH/root"
}

# quiver against $ROOT
q() { "$QUIVER" --root "$ROOT" "$@"; }

# run CMD...; stdout -> $OUT_FILE, stderr -> $ERR_FILE; sets RC
run_cmd() {
	OUT_FILE="$QV_SCRATCH/last.out"
	ERR_FILE="$QV_SCRATCH/last.err"
	QV_LAST_CMD="$*"
	"$@" >"$OUT_FILE" 2>"$ERR_FILE"
	RC=$?
	QV_LAST_RC=$RC
	return 0
}

# expect_rc N CMD...: run CMD and fail unless it exits N.
expect_rc() {
	local want=$1
	shift
	run_cmd "$@"
	[ "$RC" -eq "$want" ] || fail "expected exit $want, got $RC: $*"
}

# expect_ok CMD...: expect_rc 0
expect_ok() { expect_rc 0 "$@"; }

# The last command's stdout / stderr.
out() { cat "$OUT_FILE"; }
err() { cat "$ERR_FILE"; }

# out_has / out_lacks / err_has REGEX (grep -E, case-insensitive)
out_has() { grep -Eiq -- "$1" "$OUT_FILE" || fail "stdout lacks /$1/"; }
out_lacks() { ! grep -Eiq -- "$1" "$OUT_FILE" || fail "stdout has /$1/"; }
err_has() { grep -Eiq -- "$1" "$ERR_FILE" || fail "stderr lacks /$1/"; }

# err_one_line: the last command wrote exactly one non-empty line to stderr
# (a usage error, exit 2, may add one 'usage: ...' reminder line).
err_one_line() {
	local n
	n=$(grep -c . "$ERR_FILE")
	if [ "${RC:-}" = 2 ] && [ "$n" -eq 2 ] && sed -n 2p "$ERR_FILE" | grep -q '^usage: '; then
		return 0
	fi
	[ "$n" -eq 1 ] || fail "expected a one-line error on stderr, got $n lines"
}

# jq-free JSON access: jget FILE PYEXPR, with the document bound to d.
#   jget "$OUT_FILE" 'd["version"]'
# Lists/dicts print as JSON; strings print raw.
jget() {
	"$QV_PYTHON" - "$1" "$2" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
v = eval(sys.argv[2], {"d": d, "json": json})
if isinstance(v, (dict, list)):
    print(json.dumps(v, sort_keys=True))
elif isinstance(v, bool):
    print("true" if v else "false")
else:
    print(v)
PY
}

# jcheck FILE PYEXPR MSG: fail with MSG unless PYEXPR is true of the document.
jcheck() {
	local r
	r=$(jget "$1" "bool($2)") || fail "cannot parse JSON for: $3"
	[ "$r" = "true" ] || fail "$3 (check: $2)"
}

# gen OUT ARGS...: run the generator, its JSON summary goes to OUT.json
gen() {
	local o=$1
	shift
	"$QV_PYTHON" "$GEN" "$o" "$@" >"$o.json" || fail "gen_model.py $o $* failed"
}

# store_digest [ROOT]: one line fingerprinting the whole store: every LMDB
# database's content (mdb_dump -a) and every file under shards/ and tmp/ with
# its size and sha256. Equal fingerprints = store unchanged.
store_digest() {
	local r=${1:-$ROOT}
	command -v mdb_dump >/dev/null || fail "mdb_dump not installed (lmdb-utils)"
	{
		echo "== index"
		if [ -d "$r/index" ]; then
			mdb_dump -a "$r/index" || echo "mdb_dump failed"
		fi
		local d
		for d in shards tmp; do
			echo "== $d"
			if [ -d "$r/$d" ]; then
				(cd "$r/$d" && find . -mindepth 1 \( -type f -printf '%P f %s\n' \) -o \( ! -type f -printf '%P %y\n' \) | LC_ALL=C sort &&
					find . -type f -print0 | LC_ALL=C sort -z | xargs -0 -r sha256sum)
			fi
		done
	} | sha256sum | cut -d' ' -f1
}

# same_store BEFORE WHAT: fail unless the store fingerprint is still BEFORE.
same_store() {
	local now
	now=$(store_digest)
	[ "$now" = "$1" ] || fail "store changed after: $2"
}

# tmp_empty [ROOT]: fail if root/tmp holds anything
tmp_empty() {
	local r=${1:-$ROOT} n
	n=$(find "$r/tmp" -mindepth 1 2>/dev/null | wc -l)
	[ "$n" -eq 0 ] || fail "root/tmp not empty: $(ls -A "$r/tmp" | head -5 | tr '\n' ' ')"
}

shards_bytes() { du -sb "${1:-$ROOT}/shards" | cut -f1; }
