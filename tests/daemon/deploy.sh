#!/usr/bin/env bash
# deploy/: the alert rules pass promtool (check + unit tests), the Grafana
# dashboard is valid JSON with panels, the systemd unit has what it needs,
# and every quiver_* metric the rules and the dashboard use is one that a
# running quiverd exports.
. "$(dirname "$0")/../cli/lib.sh"
. "$(dirname "$0")/dlib.sh"

qv_setup
D="$QV_SRC/deploy"
RULES="$D/prometheus/quiver-alerts.yml"
DASH="$D/grafana/quiver-dashboard.json"
UNIT="$D/quiverd.service"

t_promtool() {
	if ! command -v promtool >/dev/null; then
		note "promtool not installed: skipping 'promtool check rules' and 'promtool test rules'"
		return 0
	fi
	promtool check rules "$RULES" >pt.out 2>&1 || fail "promtool check rules: $(cat pt.out)"
	(cd "$D/prometheus" && promtool test rules quiver-alerts.test.yml) >pt.out 2>&1 ||
		fail "promtool test rules: $(cat pt.out)"
}
soft t_promtool

t_dashboard() {
	"$QV_PYTHON" - "$DASH" <<'PY' || fail "the dashboard is not a valid Grafana dashboard"
import json, sys
d = json.load(open(sys.argv[1]))
assert isinstance(d, dict) and d.get("title") and d.get("uid"), "title/uid"
assert isinstance(d.get("schemaVersion"), int), "schemaVersion"
panels = d.get("panels")
assert isinstance(panels, list) and len(panels) >= 6, "panels"
ids = [p["id"] for p in panels]
assert len(set(ids)) == len(ids), "duplicate panel ids"
titles = " ".join(p["title"].lower() for p in panels)
for want in ("throughput", "duration", "hit ratio", "tier bytes", "migrations", "errors"):
    assert want in titles, f"no panel about {want}"
for p in panels:
    g = p["gridPos"]
    assert all(isinstance(g[k], int) for k in ("x", "y", "w", "h")) and g["x"] + g["w"] <= 24, p["title"]
    assert p.get("targets") and all(t.get("expr") and t.get("refId") for t in p["targets"]), p["title"]
assert any("histogram_quantile" in t["expr"] and "quiver_load_duration_seconds_bucket" in t["expr"]
           for p in panels for t in p["targets"]), "no quantiles from the histogram"
PY
}
soft t_dashboard

t_unit() {
	local k
	for k in '^Type=simple$' '^ExecStart=/usr/local/bin/quiverd --root /var/lib/quiver --dram 64G --metrics-port 9464$' \
		'^KillSignal=SIGTERM$' '^Restart=on-failure$' '^User=' '^Group=' '^LimitMEMLOCK=infinity$'; do
		grep -Eq "$k" "$UNIT" || fail "quiverd.service lacks /$k/"
	done
	for k in '^PrivateDevices=(yes|true)' '^MemoryDenyWriteExecute=(yes|true)' '^SystemCallFilter='; do
		! grep -Eq "$k" "$UNIT" || fail "quiverd.service sets /$k/, which breaks CUDA or io_uring"
	done
	if command -v systemd-analyze >/dev/null; then
		# a missing /usr/local/bin/quiverd is expected here; anything else is not
		systemd-analyze verify "$UNIT" >sa.out 2>&1
		if grep -v 'is not executable\|No such file or directory\|quiverd.service: Command' sa.out | grep -q .; then
			fail "systemd-analyze verify: $(cat sa.out)"
		fi
	else
		note "systemd-analyze not installed: skipping the unit's syntax check"
	fi
}
soft t_unit

# the metric names used by the rules and the dashboard exist in /metrics
t_names() {
	[ -x "$QUIVERD" ] || skip "quiverd not built"
	command -v curl >/dev/null || { note "curl missing: skipping the metric-name check"; return 0; }
	local port
	port=$(free_port)
	expect_ok q init
	dstart --metrics-port "$port"
	curl -sf "127.0.0.1:$port/metrics" >metrics.txt
	local rc=$?
	dstop TERM
	[ "$rc" -eq 0 ] || fail "GET /metrics failed"
	"$QV_PYTHON" - metrics.txt "$RULES" "$DASH" <<'PY' || fail "the rules or the dashboard use metrics quiverd does not export"
import re, sys
have = set()
for line in open(sys.argv[1]):
    m = re.match(r"# TYPE (\S+) (\S+)", line)
    if m:
        have.add(m.group(1))
        if m.group(2) == "histogram":
            have |= {m.group(1) + s for s in ("_bucket", "_sum", "_count")}
used = set()
for f in sys.argv[2:]:
    used |= set(re.findall(r"\bquiver_[a-z_]+", open(f).read()))
used -= {"quiver_"}
missing = sorted(u for u in used if u not in have and u != "quiver")
if missing:
    print("not exported:", missing, file=sys.stderr)
    sys.exit(1)
PY
}
soft t_names

qv_finish
