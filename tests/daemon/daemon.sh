#!/usr/bin/env bash
# quiverd end to end: socket, single instance, CLI forwarding, protocol
# abuse, disconnects, metrics, SIGTERM and SIGKILL mid-publish.
. "$(dirname "$0")/../cli/lib.sh"
. "$(dirname "$0")/dlib.sh"

qv_setup
[ -x "$QUIVERD" ] || fail "quiverd not found: $QUIVERD"
command -v curl >/dev/null || skip "curl not installed"
MPORT=$(free_port)
gen m1.safetensors --hidden 128 --layers 2 --seed 1
gen m2.safetensors --hidden 128 --layers 2 --seed 2
gen m3.safetensors --hidden 128 --layers 2 --seed 3
# ~110 MB: embed + lm_head 8 MB each, 3 layers of 32 MB
gen big.safetensors --hidden 1024 --layers 3 --vocab 4096 --seed 9

ROOT2="$QV_SCRATCH/root2"                 # the same commands without a daemon
expect_ok q init --cold "$QV_SCRATCH/cold"
expect_ok "$QUIVER" --root "$ROOT2" init --cold "$QV_SCRATCH/cold2"
dstart --dram 64M --metrics-port "$MPORT"

# ---- socket and single instance ---------------------------------------------------------
t_socket() {
	local mode
	mode=$(stat -c %a "$ROOT/quiverd.sock") || fail "no socket"
	[ "$mode" = 660 ] || fail "socket mode is $mode, want 660"
}
soft t_socket

t_second() {
	run_cmd timeout 20 "$QUIVERD" --root "$ROOT" --dram 64M
	[ "$RC" -eq 1 ] || fail "a second quiverd on the same root exited $RC, want 1"
	err_has "another quiverd.*already serves"
	grep -q "pid $DPID" "$ERR_FILE" || fail "the refusal does not name the running pid $DPID: $(err)"
	kill -0 "$DPID" || fail "the first quiverd died"
	[ -S "$ROOT/quiverd.sock" ] || fail "the second quiverd removed the first one's socket"
	ping_ok
}
soft t_second

# init while the daemon serves the store: refused (the daemon would keep the
# tiers it started with and write shards where the new config does not look)
t_init_served() {
	local before
	before=$(cat "$ROOT/config.ini")
	expect_rc 1 q init --hot-capacity 1G
	err_has "quiverd serves"
	[ "$(cat "$ROOT/config.ini")" = "$before" ] || fail "init changed config.ini while quiverd served the store"
}
soft t_init_served

# ---- the CLI goes through the daemon, with the same output ---------------------------------
# norm: the output with roots, times and rates masked (the two stores'
# publishes may straddle a second)
norm() { sed -E -e "s#$QV_SCRATCH/cold2?#COLD#g; s#$ROOT2#ROOT#g; s#$ROOT#ROOT#g" \
	-e 's/[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}(:[0-9]{2})?Z?/TIME/g' \
	-e 's/[0-9]+\.[0-9]+/N/g; s/"created_ns": [0-9]+/"created_ns": N/'; }
CMDS=(
	"publish m $QV_SCRATCH/m1.safetensors --version v1"
	"publish m m2.safetensors --version v2"
	"publish m m3.safetensors --version v3 --no-activate"
	"alias m prod v2"
	"pin m@v2"
	"demote m@v1"
	"promote m@v1"
	"demote m@v3"
	"tier"
	"rollback m"
	"rm m@v3"
	"gc"
)
t_forward() {
	local c i=0 n0 n1
	for c in "${CMDS[@]}"; do
		i=$((i + 1))
		n0=$(grep -c "quiverd: ${c%% *}: exit" "$DLOG")
		# shellcheck disable=SC2086
		run_cmd q $c
		local rc1=$RC
		norm <"$OUT_FILE" >"d$i.out"
		norm <"$ERR_FILE" >"d$i.err"
		# shellcheck disable=SC2086
		QUIVER_NO_DAEMON=1 run_cmd "$QUIVER" --root "$ROOT2" $c
		norm <"$OUT_FILE" >"l$i.out"
		norm <"$ERR_FILE" >"l$i.err"
		[ "$rc1" -eq "$RC" ] || fail "'quiver $c': exit $rc1 through the daemon, $RC without"
		[ "$rc1" -eq 0 ] || fail "'quiver $c' failed: $(cat "d$i.err")"
		diff -u "l$i.out" "d$i.out" >&2 || fail "'quiver $c': stdout differs through the daemon"
		diff -u "l$i.err" "d$i.err" >&2 || fail "'quiver $c': stderr differs through the daemon"
		n1=$(grep -c "quiverd: ${c%% *}: exit" "$DLOG")
		[ "$n1" -gt "$n0" ] || fail "'quiver $c' did not go through the daemon (log: no '${c%% *}: exit')"
	done
	# both stores agree
	expect_ok q list m --json
	norm <"$OUT_FILE" >d.list
	QUIVER_NO_DAEMON=1 expect_ok "$QUIVER" --root "$ROOT2" list m --json
	norm <"$OUT_FILE" >l.list
	diff -u l.list d.list >&2 || fail "the stores differ after the same commands"
}
soft t_forward

t_no_daemon() {
	local n0 n1
	n0=$(grep -c "quiverd: " "$DLOG")
	QUIVER_NO_DAEMON=1 expect_ok q alias m canary v1
	QUIVER_NO_DAEMON=1 expect_ok q unpin m@v2
	QUIVER_NO_DAEMON=1 expect_ok q publish m m3.safetensors --version v4 --no-activate
	n1=$(grep -c "quiverd: " "$DLOG")
	[ "$n1" -eq "$n0" ] || fail "QUIVER_NO_DAEMON=1 still went through the daemon: $(tail -n +$((n0 + 1)) "$DLOG")"
	expect_ok q show m@canary --json
	jcheck "$OUT_FILE" 'd["version"] == "v1"' "alias made without the daemon not visible"
	ping_ok
}
soft t_no_daemon

# quiver warm / cool / status go to the daemon's DRAM tier
t_warm_cool() {
	expect_ok q warm m@v1 --json
	jcheck "$OUT_FILE" 'd["action"] == "warm"' "warm --json"
	expect_ok q status --json
	jcheck "$OUT_FILE" 'any(e["version"] == "m@v1" for e in d["dram"]["entries"])' "status does not show m@v1 in DRAM"
	expect_ok q cool m@v1
	expect_ok q status --json
	jcheck "$OUT_FILE" 'not any(e["version"] == "m@v1" for e in d["dram"]["entries"])' "m@v1 still in DRAM after cool"
	expect_rc 1 q cool m@v1
}
soft t_warm_cool

# ---- protocol abuse --------------------------------------------------------------------------
# hexframe MAGIC VERSION FLAGS LEN(- = real) PAYLOAD
hexframe() {
	"$QV_PYTHON" -c 'import struct,sys
p = sys.argv[5].encode()
n = len(p) if sys.argv[4] == "-" else int(sys.argv[4])
print((struct.pack("<IHHII", int(sys.argv[1], 0), int(sys.argv[2]), int(sys.argv[3]), n, 0) + p).hex())' "$@"
}
# expect_err_reply HEX WHAT: an ok:false reply, then the daemon still serves
expect_err_reply() {
	local r
	r=$(qvd raw "$1" --shut 2>&1) || fail "$2: client error: $r"
	case "$r" in
	*'"ok": false'*'"error": '*) ;;
	*) fail "$2: expected an ok:false reply with an error, got: $r" ;;
	esac
	kill -0 "$DPID" 2>/dev/null || fail "$2: quiverd died"
	ping_ok
}
expect_closed() {
	local r
	r=$(qvd raw "$1" --shut 2>&1) || fail "$2: client error: $r"
	case "$r" in
	CLOSED | *'"ok": false'*) ;;
	*) fail "$2: expected the connection closed (or an error), got: $r" ;;
	esac
	kill -0 "$DPID" 2>/dev/null || fail "$2: quiverd died"
	ping_ok
}
t_abuse() {
	local M=0x31445651 e0 e1
	e0=$(metric 'quiver_errors_total{op="protocol"}')
	expect_err_reply "$(hexframe $M 1 0 - '{op: ping}')" "bad JSON"
	expect_err_reply "$(hexframe $M 1 0 - '{"op":"ping"')" "unterminated JSON"
	expect_err_reply "$(hexframe $M 1 0 - '["ping"]')" "non-object JSON"
	expect_err_reply "$(hexframe $M 1 0 - '{"model":"m"}')" "missing op"
	expect_err_reply "$(hexframe $M 1 0 - '{"op":7}')" "op not a string"
	expect_err_reply "$(hexframe $M 1 0 - "{\"op\":\"$(printf 'x%.0s' $(seq 40))\"}")" "op too long"
	expect_err_reply "$(hexframe $M 1 0 - '{"op":"frobnicate"}')" "unknown op"
	expect_err_reply "$(hexframe $M 1 0 - '')" "empty payload"
	expect_err_reply "$(hexframe 0x31445652 1 0 - '{"op":"ping"}')" "bad magic"
	expect_err_reply "$(hexframe $M 2 0 - '{"op":"ping"}')" "wrong version 2"
	expect_err_reply "$(hexframe $M 0 0 - '{"op":"ping"}')" "wrong version 0"
	expect_err_reply "$(hexframe $M 1 4 - '{"op":"ping"}')" "unknown flags"
	expect_err_reply "$(hexframe $M 1 1 - '{"op":"ping"}')" "fd announced, none sent"
	expect_err_reply "$(hexframe $M 1 0 $(((1 << 20) + 1)) '{"op":"ping"}')" "header length over 1 MiB"
	expect_err_reply "$(hexframe $M 1 0 4294967295 '{}')" "header length 2^32-1"
	expect_err_reply "$(printf 'GET / HTTP/1.0\r\n\r\n' | od -An -tx1 | tr -d ' \n')" "HTTP on the socket"
	expect_err_reply "$(hexframe $M 1 0 - '{"op":"cli","argv":"publish"}')" "cli argv not an array"
	expect_err_reply "$(hexframe $M 1 0 - '{"op":"cli","argv":["list"]}')" "cli non-forwardable command"
	expect_err_reply "$(hexframe $M 1 0 - '{"op":"load_host"}')" "load_host without model"
	expect_err_reply "$(hexframe $M 1 0 - '{"op":"load_host","model":"nope"}')" "load_host unknown model"
	expect_err_reply "$(hexframe $M 1 0 - '{"op":"load_cuda","model":"m","device":0,"bytes":1,"ipc_handle":"zz"}')" "load_cuda bad handle"
	# a handle of no allocation: the reply says why CUDA refused it (no GPU
	# here, a bogus handle on a GPU machine, a build without CUDA)
	local r
	r=$(qvd raw "$(hexframe $M 1 0 - "{\"op\":\"load_cuda\",\"model\":\"m\",\"device\":0,\"bytes\":$((1 << 30)),\"ipc_handle\":\"$(printf 'ab%.0s' $(seq 64))\"}")" --shut 2>&1) ||
		fail "load_cuda unknown handle: client error: $r"
	case "$r" in
	*'"ok": false'*'cannot open the CUDA IPC handle on cuda:0: '[A-Za-z]*) ;;
	*) fail "load_cuda unknown handle: expected the CUDA reason, got: $r" ;;
	esac
	kill -0 "$DPID" 2>/dev/null || fail "load_cuda unknown handle: quiverd died"
	# a GPU named by PCI bus id: what is not one is refused before CUDA
	# sees it; one that is, but that quiverd does not see (no GPU here), too
	local h64
	h64=$(printf 'ab%.0s' $(seq 64))
	r=$(qvd call "{\"op\":\"load_cuda\",\"model\":\"m\",\"device\":0,\"bytes\":1,\"pci_bus_id\":\"0000:65:00.0;x\",\"ipc_handle\":\"$h64\"}") ||
		fail "load_cuda with a bad pci_bus_id: $r"
	case "$r" in *'"ok": false'*'not a PCI bus id'*) ;; *) fail "load_cuda with a bad pci_bus_id: $r" ;; esac
	r=$(qvd call "{\"op\":\"load_cuda\",\"model\":\"m\",\"device\":0,\"bytes\":1,\"pci_bus_id\":7,\"ipc_handle\":\"$h64\"}") ||
		fail "load_cuda with a numeric pci_bus_id: $r"
	case "$r" in *'"ok": false'*'not a PCI bus id'*) ;; *) fail "load_cuda with a numeric pci_bus_id: $r" ;; esac
	r=$(qvd call "{\"op\":\"load_cuda\",\"model\":\"m\",\"device\":0,\"bytes\":1,\"pci_bus_id\":\"0000:ff:1f.7\",\"ipc_handle\":\"$h64\"}") ||
		fail "load_cuda on a GPU quiverd does not see: $r"
	case "$r" in
	*'"ok": false'*'sees no GPU at PCI bus id 0000:ff:1f.7'* | *'"ok": false'*'built without CUDA'*) ;;
	*) fail "load_cuda on a GPU quiverd does not see: $r" ;;
	esac
	expect_err_reply "$(hexframe $M 1 0 - '{"op":"release_cuda","ipc_handle":"zz"}')" "release_cuda bad handle"
	expect_err_reply "$(hexframe $M 1 0 - '{"op":"release_cuda"}')" "release_cuda without a handle"
	# size: what to allocate for a load, without opening the store
	r=$(qvd call '{"op":"size","model":"m","ref":"v2"}') || fail "size of m@v2: $r"
	case "$r" in
	*'"ok": true'*'"version": "v2"'*'"bytes": '[1-9]*) ;;
	*) fail "size of m@v2: got $r" ;;
	esac
	expect_err_reply "$(hexframe $M 1 0 - '{"op":"size","model":"nosuch"}')" "size of an unknown model"
	expect_err_reply "$(hexframe $M 1 0 - '{"op":"size"}')" "size without a model"
	# a handle this connection never loaded into: nothing to close
	r=$(qvd call "{\"op\":\"release_cuda\",\"ipc_handle\":\"$(printf 'ab%.0s' $(seq 64))\"}") ||
		fail "release_cuda of an unknown handle: $r"
	case "$r" in
	*'"ok": true'*'"closed": false'*) ;;
	*) fail "release_cuda of an unknown handle: expected ok and closed false, got: $r" ;;
	esac
	expect_closed "$(hexframe $M 1 0 - '{"op":"ping"}' | cut -c1-20)" "truncated header"
	expect_closed "$(hexframe $M 1 0 100 '{"op":"ping"}')" "truncated payload"
	expect_closed "" "connect and close"
	# a deeply nested (but in-limit) payload
	local deep
	"$QV_PYTHON" -c 'import struct
p = b"{\"op\":\"ping\",\"x\":" + b"[" * 100000 + b"]" * 100000 + b"}"
print((struct.pack("<IHHII", 0x31445651, 1, 0, len(p), 0) + p).hex())' >deep.hex
	expect_err_reply "@deep.hex" "deep nesting"
	# one client holding a half-sent frame does not block the others
	"$QV_PYTHON" - "$ROOT/quiverd.sock" <<'PY' &
import socket, sys, time
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.sendall(b"QVD1\x01"); time.sleep(20)
PY
	local hold=$!
	sleep 0.3
	ping_ok
	kill "$hold" 2>/dev/null
	wait "$hold" 2>/dev/null
	ping_ok
	e1=$(metric 'quiver_errors_total{op="protocol"}')
	"$QV_PYTHON" -c "import sys; sys.exit(0 if float('$e1') > float('$e0') else 1)" ||
		fail "quiver_errors_total{op=\"protocol\"} did not move ($e0 -> $e1)"
}
soft t_abuse

# ---- loads and metrics -------------------------------------------------------------------------
t_metrics() {
	curl -sf "127.0.0.1:$MPORT/metrics" >metrics.txt || fail "GET /metrics failed"
	if command -v promtool >/dev/null; then
		promtool check metrics <metrics.txt >promtool.out 2>&1 ||
			fail "promtool check metrics: $(cat promtool.out)"
	else
		note "promtool not installed: skipping the 'promtool check metrics' sub-check"
	fi
	local f
	for f in quiver_load_bytes_total quiver_load_duration_seconds quiver_swaps_total \
		quiver_dram_hits_total quiver_dram_misses_total quiver_tier_bytes \
		quiver_migrations_total quiver_errors_total; do
		grep -q "^# TYPE $f " metrics.txt || fail "/metrics lacks the family $f"
	done
	# migrations counted the demotes/promotes above
	[ "$(metric quiver_migrations_total)" != 0 ] || fail "quiver_migrations_total is 0 after demote/promote"
	# a load moves the load counters
	local b0 c0 m0 b1 c1 m1 r
	b0=$(metric 'quiver_load_bytes_total{source="hot"}')
	c0=$(metric quiver_load_duration_seconds_count)
	m0=$(metric quiver_dram_misses_total)
	r=$(qvd load m v2 m2.safetensors) || fail "load_host m@v2: $r"
	b1=$(metric 'quiver_load_bytes_total{source="hot"}')
	c1=$(metric quiver_load_duration_seconds_count)
	m1=$(metric quiver_dram_misses_total)
	local bytes
	bytes=$("$QV_PYTHON" -c "import json; print(json.loads('''$r''')['bytes'])")
	[ "$((b1 - b0))" -eq "$bytes" ] || fail "quiver_load_bytes_total{source=hot} moved by $((b1 - b0)), the load was $bytes bytes"
	[ "$((c1 - c0))" -eq 1 ] || fail "quiver_load_duration_seconds_count moved by $((c1 - c0)), want 1"
	[ "$((m1 - m0))" -eq 1 ] || fail "quiver_dram_misses_total moved by $((m1 - m0)), want 1"
	# a warmed version is a DRAM hit
	r=$(qvd call '{"op":"warm","model":"m","ref":"v2"}')
	case "$r" in *'"ok": true'*) ;; *) fail "warm m@v2: $r" ;; esac
	local h0 h1 d0 d1
	h0=$(metric quiver_dram_hits_total)
	d0=$(metric 'quiver_load_bytes_total{source="dram"}')
	r=$(qvd load m v2 m2.safetensors) || fail "load_host m@v2 from DRAM: $r"
	case "$r" in *'"source": "dram"'*) ;; *) fail "a warmed load did not come from DRAM: $r" ;; esac
	h1=$(metric quiver_dram_hits_total)
	d1=$(metric 'quiver_load_bytes_total{source="dram"}')
	[ "$((h1 - h0))" -eq 1 ] || fail "quiver_dram_hits_total moved by $((h1 - h0)), want 1"
	[ "$((d1 - d0))" -eq "$bytes" ] || fail "quiver_load_bytes_total{source=dram} moved by $((d1 - d0)), want $bytes"
	[ "$(metric 'quiver_tier_bytes{tier="dram"}')" -ge "$bytes" ] || fail "quiver_tier_bytes{tier=dram} below the warmed version"
	[ "$(metric 'quiver_tier_bytes{tier="hot"}')" -gt 0 ] || fail "quiver_tier_bytes{tier=hot} is 0"
	expect_ok q demote m@v4
	[ "$(metric 'quiver_tier_bytes{tier="cold"}')" -gt 0 ] || fail "quiver_tier_bytes{tier=cold} is 0 after a demote"
	[ "$(curl -s -o /dev/null -w '%{http_code}' "127.0.0.1:$MPORT/nope")" = 404 ] || fail "GET /nope is not 404"
}
soft t_metrics

# ---- an empty version (no tensors): 0 bytes, warm or not ----------------------------------------
t_empty_version() {
	local r
	printf '\x02\x00\x00\x00\x00\x00\x00\x00{}' >empty.safetensors
	expect_ok q publish e empty.safetensors --version v1
	for step in cold warm; do
		if [ $step = warm ]; then
			r=$(qvd call '{"op":"warm","model":"e","ref":"v1"}')
			case "$r" in *'"ok": true'*) ;; *) fail "warm e@v1: $r" ;; esac
		fi
		r=$(qvd call '{"op":"size","model":"e","ref":"v1"}')
		case "$r" in *'"ok": true'*'"bytes": 0'*) ;; *) fail "size of the empty e@v1 ($step): $r" ;; esac
		r=$(qvd call '{"op":"load_host","model":"e","ref":"v1"}')
		case "$r" in *'"ok": true'*'"bytes": 0'*'"tensors": []'*) ;; *) fail "load_host of the empty e@v1 ($step): $r" ;; esac
	done
	case "$r" in *'"source": "dram"'*) ;; *) fail "the warmed empty version did not come from DRAM: $r" ;; esac
	r=$(qvd call '{"op":"cool","model":"e","ref":"v1"}')
	case "$r" in *'"ok": true'*) ;; *) fail "cool e@v1: $r" ;; esac
}
soft t_empty_version

# ---- a DRAM hit's memory is read-only for the client --------------------------------------------
# Every engine that loads a warmed version maps the DRAM tier's own memfd;
# one must not be able to change or shrink what the others see.
t_dram_sealed() {
	local r
	r=$(qvd call '{"op":"warm","model":"m","ref":"v2"}')
	case "$r" in *'"ok": true'*) ;; *) fail "warm m@v2: $r" ;; esac
	r=$("$QV_PYTHON" - "$ROOT/quiverd.sock" "$QV_SRC/tests/daemon" m2.safetensors 2>&1 <<'PY'
import mmap, os, sys
sys.path.insert(0, sys.argv[2])
import qvd
r, fd = qvd.call(sys.argv[1], {"op": "load_host", "model": "m", "ref": "v2"})
assert r["ok"] and r["source"] == "dram", r
n = r["bytes"]
def reopened_write():  # the descriptor is read-only; the seals must hold even so
    w = os.open(f"/proc/self/fd/{fd}", os.O_RDWR)
    try:
        os.pwrite(w, b"x", 0)
    finally:
        os.close(w)
for what, act in (("a shared writable mapping", lambda: mmap.mmap(fd, n)),
                  ("ftruncate", lambda: os.ftruncate(fd, 0)),
                  ("pwrite", lambda: os.pwrite(fd, b"x", 0)),
                  ("a write through the memfd reopened read-write", reopened_write)):
    try:
        act()
    except OSError:
        continue
    sys.exit(f"{what} of the DRAM tier's memfd succeeded")
m = mmap.mmap(fd, n, access=mmap.ACCESS_COPY)  # what python/quiver does
m[0:4096] = b"\xee" * 4096                     # the engine's own copy of the page
m.close()
os.close(fd)
r, fd = qvd.call(sys.argv[1], {"op": "load_host", "model": "m", "ref": "v2"})
problems = qvd.compare(r, fd, [sys.argv[3]])
os.close(fd)
assert r["source"] == "dram" and not problems, (r["source"], problems)
print("ok")
PY
	) || fail "sealed DRAM memory: $r"
}
soft t_dram_sealed

# ---- descriptors a client sends are all closed ---------------------------------------------------
t_fd_flood() {
	local fds0 fds1 r
	fds0=$(ls /proc/"$DPID"/fd | wc -l)
	r=$("$QV_PYTHON" - "$ROOT/quiverd.sock" "$QV_SRC/tests/daemon" 2>&1 <<'PY'
import array, os, socket, sys
sys.path.insert(0, sys.argv[2])
import qvd
null = [os.open("/dev/null", os.O_RDONLY) for _ in range(3)]
with qvd.connect(sys.argv[1]) as s:
    for i in range(200):  # a ping with three descriptors it should not carry
        s.sendmsg([qvd.frame({"op": "ping"})],
                  [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", null))])
        r, fd = qvd.recv_reply(s)
        assert r and r["ok"], r
print("ok")
PY
	) || fail "fd flood: $r"
	sleep 0.2
	fds1=$(ls /proc/"$DPID"/fd | wc -l)
	[ "$fds1" -le "$((fds0 + 2))" ] || fail "quiverd holds $((fds1 - fds0)) more descriptors after 200 pings that carried 3 each"
}
soft t_fd_flood

# ---- the client over the limit gets the reason, not a reset ---------------------------------------
t_too_many() {
	local r
	r=$("$QV_PYTHON" - "$ROOT/quiverd.sock" "$QV_SRC/tests/daemon" 2>&1 <<'PY'
import sys, time
sys.path.insert(0, sys.argv[2])
import qvd
held = []
for i in range(64):  # the daemon serves 64 clients at once
    s = qvd.connect(sys.argv[1])
    s.sendall(qvd.frame({"op": "ping"}))
    assert qvd.recv_reply(s)[0]["ok"]
    held.append(s)
s = qvd.connect(sys.argv[1])
time.sleep(0.02)  # as a client does between connect and send
s.sendall(qvd.frame({"op": "ping"}))
r, _ = qvd.recv_reply(s)
assert r and not r["ok"] and "too many clients" in r.get("error", ""), r
for h in held:
    h.close()
time.sleep(0.3)
r, _ = qvd.call(sys.argv[1], {"op": "ping"})
assert r["ok"], r
print("ok")
PY
	) || fail "65 clients: $r"
}
soft t_too_many

# ---- what the CLI sends the daemon is the command as typed -------------------------------------
t_forward_args() {
	# an argument JSON cannot carry: the command runs in the CLI, and is refused
	# there, rather than reaching the daemon without it (and --no-activate after it)
	expect_rc 1 q publish m m1.safetensors --version nonutf --message $'caf\xe9' --no-activate
	err_has "UTF-8"
	QUIVER_NO_DAEMON=1 expect_rc 1 q show m@nonutf
	# an abbreviated --root names another store: the command runs there
	local other="$QV_SCRATCH/root-other"
	QUIVER_NO_DAEMON=1 expect_ok "$QUIVER" --root "$other" publish x m1.safetensors --version v1
	QUIVER_ROOT=$ROOT expect_ok "$QUIVER" rm x@v1 --force --roo="$other"
	QUIVER_NO_DAEMON=1 expect_rc 1 "$QUIVER" --root "$other" show x@v1
}
soft t_forward_args

# ---- a client that goes away mid-load ---------------------------------------------------------
t_disconnect() {
	QUIVER_NO_DAEMON=1 expect_ok q publish big big.safetensors --version b1
	local fds0 fds1 i
	fds0=$(ls /proc/"$DPID"/fd | wc -l)
	for i in 1 2 3; do
		"$QV_PYTHON" - "$ROOT/quiverd.sock" "$i" <<'PY' || fail "disconnect client failed"
import json, socket, struct, sys, time
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])
p = json.dumps({"op": "load_host", "model": "big", "ref": "b1"}).encode()
s.sendall(struct.pack("<IHHII", 0x31445651, 1, 0, len(p), 0) + p)
time.sleep(0.01 * int(sys.argv[2]))
s.close()
PY
	done
	sleep 1
	kill -0 "$DPID" 2>/dev/null || fail "quiverd died when a client left mid-load"
	ping_ok
	local r
	r=$(qvd load big b1 big.safetensors) || fail "load after the disconnects: $r"
	sleep 0.5
	fds1=$(ls /proc/"$DPID"/fd | wc -l)
	[ "$fds1" -le "$fds0" ] || fail "quiverd holds $((fds1 - fds0)) more descriptors after abandoned loads (leak?)"
}
soft t_disconnect

# ---- a forwarded command that waits for another's lock says so in the log --------------------
t_wait_logged() {
	local i holder pub rc
	rm -f "$QV_SCRATCH/release"
	flock -x "$ROOT/lock" bash -c 'while [ ! -e "$1" ]; do sleep 0.05; done' _ "$QV_SCRATCH/release" &
	holder=$!
	for i in $(seq 200); do flock -n "$ROOT/lock" true || break; sleep 0.05; done
	q publish waited m3.safetensors --version w1 >waited.out 2>waited.err &
	pub=$!
	for i in $(seq 200); do grep -q "waiting for the store's lock" "$DLOG" && break; sleep 0.05; done
	touch "$QV_SCRATCH/release"
	wait "$holder"
	wait "$pub"
	rc=$?
	[ "$rc" -eq 0 ] || fail "a publish through quiverd after a wait: exit $rc: $(cat waited.err)"
	grep -q "waiting for the store's lock: another process holds it" "$DLOG" ||
		fail "quiverd did not log that its publish waited for the store's lock"
}
command -v flock >/dev/null && soft t_wait_logged

# ---- SIGTERM ------------------------------------------------------------------------------------
# (daemon start/stop run in this shell: soft() checks run in subshells,
# which cannot wait for the daemon)
dstop TERM
t_sigterm() {
	[ "$DRC" -eq 0 ] || fail "quiverd exited $DRC on SIGTERM, want 0"
	[ ! -e "$ROOT/quiverd.sock" ] || fail "the socket is still there after SIGTERM"
	tail -n 3 "$DLOG" | grep -q "quiverd: stopped" || fail "the log does not end with 'stopped': $(tail -n 3 "$DLOG")"
	# with no daemon the CLI runs locally
	expect_ok q alias m after-term v2
}
soft t_sigterm

# ---- SIGKILL mid-publish ------------------------------------------------------------------------
dstart --dram 64M --metrics-port "$MPORT"
q publish big big.safetensors --version b2 --alias killed >pub.out 2>pub.err &
PUB=$!
# kill once the daemon has the source open (the publish is under way)
for i in $(seq 1 1000); do
	ls -l /proc/"$DPID"/fd 2>/dev/null | grep -q big.safetensors && break
	kill -0 "$PUB" 2>/dev/null || break
	sleep 0.002
done
sleep 0.1
KILLED=0
if kill -0 "$PUB" 2>/dev/null; then
	KILLED=1
fi
dstop KILL
wait "$PUB"
PRC=$?
t_sigkill() {
	if [ "$KILLED" -eq 1 ]; then
		note "killed quiverd mid-publish; the CLI exited $PRC: $(head -c 200 pub.err)"
		[ "$PRC" -ne 0 ] || fail "publish exited 0 though the daemon was killed mid-way: $(cat pub.out)"
		grep -q "quiverd did not answer" pub.err || fail "the CLI does not say the daemon went away: $(cat pub.err)"
	else
		note "the publish ended before the kill; the crash checks still run"
	fi
	# the index opens; b2 is fully there or not at all
	QUIVER_NO_DAEMON=1 expect_ok q list big
	if grep -qw b2 "$OUT_FILE"; then
		note "b2 was committed before the kill"
		QUIVER_NO_DAEMON=1 expect_ok q verify big@b2
		QUIVER_NO_DAEMON=1 expect_ok q load big@b2
	else
		QUIVER_NO_DAEMON=1 expect_rc 1 q show big@b2
		QUIVER_NO_DAEMON=1 expect_rc 1 q show big@killed
	fi
	QUIVER_NO_DAEMON=1 expect_ok q verify
	# gc (locally: the socket left behind has no daemon) cleans the leftovers
	expect_ok q gc
	tmp_empty
	[ -z "$(find "$QV_SCRATCH/cold/tmp" -mindepth 1 2>/dev/null)" ] || fail "cold/tmp not empty after gc"
	QUIVER_NO_DAEMON=1 expect_ok q verify
}
soft t_sigkill

# a restarted daemon serves again
dstart --dram 64M --metrics-port "$MPORT"
t_restart() {
	ping_ok
	local n0 r
	n0=$(grep -c "publish: exit 0" "$DLOG")
	expect_ok q publish big big.safetensors --version b3
	[ "$(grep -c "publish: exit 0" "$DLOG")" -gt "$n0" ] || fail "the restarted daemon did not run the publish"
	r=$(qvd load big b3 big.safetensors) || fail "load after restart: $r"
}
soft t_restart
dstop TERM
soft eval '[ "$DRC" -eq 0 ] || fail "restarted quiverd exited $DRC on SIGTERM"'

qv_finish
