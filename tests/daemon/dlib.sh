# Helpers for the daemon script tests (sourced after tests/cli/lib.sh).
#   QUIVERD   the quiverd binary (default: beside $QUIVER)
#   QVD       python3 qvd.py (the raw-socket test client)

QUIVERD=${QUIVERD:-$(dirname "$QUIVER")/quiverd}
QVD_PY="$QV_SRC/tests/daemon/qvd.py"
DPID=
DLOG=

# free_port: an unused TCP port on 127.0.0.1
free_port() {
	"$QV_PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# qvd ARGS...: the test client against $ROOT's socket
qvd() { "$QV_PYTHON" "$QVD_PY" "$ROOT/quiverd.sock" "$@"; }

# ping_ok: the daemon answers a ping
ping_ok() {
	local r
	r=$(qvd call '{"op":"ping"}' 2>&1) || fail "ping failed: $r"
	case "$r" in *'"ok": true'*) ;; *) fail "ping: $r" ;; esac
}

# dstart ARGS...: starts quiverd on $ROOT (logging to $DLOG, from / so that
# relative paths are not resolved by luck) and waits until it answers.
dstart() {
	DLOG=${DLOG:-$QV_SCRATCH/quiverd.log}
	(cd / && exec "$QUIVERD" --root "$ROOT" "$@") >>"$DLOG" 2>&1 &
	DPID=$!
	local i
	for i in $(seq 1 200); do
		if [ -S "$ROOT/quiverd.sock" ] && qvd call '{"op":"ping"}' >/dev/null 2>&1; then
			return 0
		fi
		kill -0 "$DPID" 2>/dev/null || { cat "$DLOG" >&2; fail "quiverd exited at start"; }
		sleep 0.05
	done
	cat "$DLOG" >&2
	fail "quiverd did not answer within 10 s"
}

# dstop [SIG]: stops the daemon (SIGTERM by default); sets DRC to its exit code.
dstop() {
	local sig=${1:-TERM}
	DRC=
	[ -n "$DPID" ] || return 0
	kill -"$sig" "$DPID" 2>/dev/null
	local i
	for i in $(seq 1 300); do
		kill -0 "$DPID" 2>/dev/null || break
		sleep 0.05
	done
	if kill -0 "$DPID" 2>/dev/null; then
		kill -KILL "$DPID" 2>/dev/null
		wait "$DPID" 2>/dev/null
		DPID=
		fail "quiverd did not stop within 15 s of SIG$sig"
	fi
	wait "$DPID" 2>/dev/null
	DRC=$?
	DPID=
}

dcleanup() {
	if [ -n "$DPID" ]; then
		kill -KILL "$DPID" 2>/dev/null
		wait "$DPID" 2>/dev/null
	fi
}
trap dcleanup EXIT

# metric NAME{LABELS}: the value of one sample from /metrics (0 if absent)
metric() {
	curl -s "127.0.0.1:$MPORT/metrics" | awk -v k="$1" '$1 == k { print $2; f = 1 } END { if (!f) print 0 }'
}
