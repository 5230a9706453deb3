#!/usr/bin/env bash
# Tier crash test: SIGKILL `quiver demote`, `quiver promote` (and
# `quiver activate`, which promotes a version that is not entirely hot) at
# random instants on a store with a hot and a cold tier, and check DESIGN.md's
# invariants (and tier.h's migration contract) after every kill:
#   - the index opens (`list --json` works), lists the same four versions and
#     the expected current (a killed activate: the old or the new one);
#   - every version loads (`load --verify --json`: exit 0, "verified": true)
#     and exports byte for byte against its source (cmp / diff -r);
#   - after `quiver gc`: HOT/tmp, COLD/tmp and ROOT/tmp are empty,
#     `gc --dry-run --json` finds nothing more, every tensor shard is a file on
#     exactly the tier `show --json` names (and not on the other one), every
#     blob is a file on exactly one tier, no other file is under HOT/shards or
#     COLD/shards (no orphan copy), cold files carry the codec magic;
#   - a migration that completed did its job: after promote / activate the
#     version is entirely hot; after demote only shards that a version staying
#     hot (current, aliased, entirely hot) also uses are still hot;
#   - `quiver verify` exits 0 every 10 iterations and at the end.
# Then a damage sub-test: one byte flipped in the middle of frame 0 of a cold
# shard file -> `verify` exits 3, `load --verify` (text and --json) exits 3
# with nothing on stdout, `export` and `promote` fail, leaving no temp file
# and the cold file in place; with the byte restored all checks pass again.
#
# Store: a ~50 MB random BF16 model (gen_model.py) in four versions that share
# shards (~96 MB stored): v1 the base, v2 / v3 with 30% / 60% of the large
# tensors changed, v4 = v2's tensors as a Hugging Face style folder of 3 files
# (so blobs move too). Setup measures, from an all-cold store, a full promote
# and a full demote of each version and a no-op migration; the kill window of
# an operation is T = no-op time + the bytes it has to move now (from show
# --json) x the mean measured rate. Each iteration picks, among the
# (version, operation) pairs that have something to move, one at random (one
# iteration in six: an activate of another version instead), and kills it
# after a delay drawn from [0, T] (a quarter of them from [0.8 T, 1.2 T], so
# that kills land at the last renames, the commit and the unlink too). Ops
# that complete before the kill are checked too but do not count: the loop
# runs until QV_TIERCRASH_ITERS kills (at most twice that many iterations).
#
# Env: QV_TIERCRASH_ITERS (default 50), QV_TIERCRASH_SEED (default random;
# printed at the start and on failure; it fixes the sequence of choices and
# delays, not the machine's timing, so a rerun may kill elsewhere), QUIVER,
# QV_SRC, QV_PYTHON, QV_SCRATCH (CTest sets them; standalone runs default to
# ./build/cli/quiver, this script's repo, python3 and a temp dir). The scratch
# folder is kept on failure, removed on success unless QV_TIERCRASH_KEEP=1.
set -uo pipefail
export LC_ALL=C

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
QV_SRC=${QV_SRC:-$(cd "$here/../.." && pwd)}
QUIVER=${QUIVER:-$QV_SRC/build/cli/quiver}
QV_PYTHON=${QV_PYTHON:-python3}
QV_SCRATCH=${QV_SCRATCH:-$(mktemp -d "${TMPDIR:-/tmp}/qv-tiercrash.XXXXXX")}
ITERS=${QV_TIERCRASH_ITERS:-50}
SEED=${QV_TIERCRASH_SEED:-$(( $(od -An -N4 -tu4 /dev/urandom) % 2147483647 ))}
GEN=$QV_SRC/python/tools/gen_model.py
TC=$here/tiercheck.py
MODEL=tc/m
LABELS="v1 v2 v3 v4"

S=$(mkdir -p "$QV_SCRATCH" && cd "$QV_SCRATCH" && pwd)   # absolute: tier dirs are stored as given
ROOT=$S/root
HOT=$S/hot
COLD=$S/cold
SRCD=$S/src
EXP=$S/export
T0=$SECONDS
it=0
OP="setup"
OPINFO=""

echo "tier crash test: seed $SEED, $ITERS kills (rerun: QV_TIERCRASH_SEED=$SEED QV_TIERCRASH_ITERS=$ITERS QUIVER=$QUIVER bash $here/tier_crash.sh)"

fail() {
  echo "FAIL: $*" >&2
  echo "FAIL: iteration $it ($KILLS of $ITERS kills done), op $OP $OPINFO, seed $SEED" >&2
  echo "FAIL: reproduce: QV_TIERCRASH_SEED=$SEED QV_TIERCRASH_ITERS=$ITERS QUIVER=$QUIVER bash $here/tier_crash.sh" >&2
  echo "FAIL: store and sources kept in $S (root $ROOT, hot $HOT, cold $COLD)" >&2
  exit 1
}
log() { printf '[%4ds] %s\n' $((SECONDS - T0)) "$*"; }
q() { "$QUIVER" --root "$ROOT" "$@"; }
# rnd N: R in [0, N) from bash's RANDOM (seeded below). Never in $(...): a
# subshell reseeds RANDOM and the run would no longer follow the seed.
rnd() { R=$(( ((RANDOM << 15) | RANDOM) % $1 )); }
now_ms() { date +%s%3N; }

[ -x "$QUIVER" ] || fail "no quiver binary at $QUIVER"
[ -f "$GEN" ] || fail "no $GEN"
[ -f "$TC" ] || fail "no $TC"
RANDOM=$SEED
rm -rf "$ROOT" "$HOT" "$COLD" "$SRCD" "$EXP"; mkdir -p "$SRCD"

# -- state and checks --------------------------------------------------------------
declare -A SRCP      # label -> source path (file or folder)
declare -A TIER      # label -> hot|cold|mixed, from the last listing
CUR=v1
KILLS=0   # demote / promote / activate runs killed so far
NLEFT=0   # runs after which gc had something to free
NMID=0    # kills with a visible effect: gc had leftovers or a tier changed

listed() {  # sets ST ("current l:tier ...") and TIER[], or fails
  ST=$("$QV_PYTHON" "$TC" state "$QUIVER" "$ROOT" "$MODEL" 2>&1) || fail "index does not open / list is broken: $ST"
  local x
  for x in ${ST#* }; do TIER[${x%%:*}]=${x#*:}; done
}

check_listing() {
  listed
  local cur=${ST%% *} ls="" x
  for x in ${ST#* }; do ls="$ls ${x%%:*}"; done
  [ "$cur" = "$CUR" ] || fail "current is '$cur', expected '$CUR' (listing: $ST)"
  [ "${ls# }" = "$LABELS" ] || fail "versions listed: '${ls# }', expected '$LABELS' (listing: $ST)"
}

check_export() {  # check_export LABEL: export byte for byte against the source
  local l=$1 src=${SRCP[$1]} rc=0
  rm -rf "$EXP"
  q export "$MODEL@$l" "$EXP" >/dev/null 2>"$S/export.err" || rc=$?
  [ $rc -eq 0 ] || fail "export $MODEL@$l exited $rc: $(cat "$S/export.err")"
  if [ -d "$src" ]; then
    diff -rq "$EXP" "$src" >/dev/null || fail "export $l differs from its source folder $src: $(diff -rq "$EXP" "$src" | head -5)"
  else
    local got; got=$(cd "$EXP" && ls -A)
    [ "$got" = "$(basename "$src")" ] || fail "export $l: expected only $(basename "$src"), got: $got"
    cmp "$EXP/$got" "$src" >/dev/null || fail "export $l differs from its source $src: $(cmp "$EXP/$got" "$src" 2>&1 | head -1)"
  fi
  rm -rf "$EXP"
}

check_load() {  # check_load LABEL: load --verify succeeds
  local l=$1 rc=0
  q load "$MODEL@$l" --verify --json >"$S/load.out" 2>"$S/load.err" || rc=$?
  [ $rc -eq 0 ] || fail "load $MODEL@$l --verify exited $rc: $(cat "$S/load.err")"
  grep -q '"verified": true' "$S/load.out" || fail "load $MODEL@$l --verify --json exited 0 but its stdout has no '\"verified\": true' (stdout: '$(tr -d '\n' <"$S/load.out")', stderr: '$(cat "$S/load.err")'; tiers: $ST)"
}

tmp_empty() {  # tmp_empty WHEN: no temp file in any tier's tmp/
  local d t
  for d in "$HOT/tmp" "$COLD/tmp" "$ROOT/tmp"; do
    [ -d "$d" ] || continue
    t=$(ls -A "$d")
    [ -z "$t" ] || fail "$d not empty $1: $(echo $t | head -c 300)"
  done
}

check_clean() {  # check_clean FULL: gc leaves nothing; FULL=1: verify too
  local full=$1 out
  out=$(q gc --json 2>&1) || fail "gc after the kill exited non-zero: $out"
  GCINFO=$(echo "$out" | "$QV_PYTHON" "$TC" gcjson) || fail "gc --json unreadable: $out"
  case "$GCINFO" in *"shards=0 "*"temp_files=0"*) ;; *) NLEFT=$((NLEFT + 1)) ;; esac
  tmp_empty "after gc"
  out=$(q gc --dry-run --json 2>&1) || fail "gc --dry-run exited non-zero: $out"
  "$QV_PYTHON" "$TC" gcjson --zero <<<"$out" >/dev/null || fail "gc --dry-run right after gc still finds work: $(echo "$out" | "$QV_PYTHON" "$TC" gcjson)"
  SHINFO=$("$QV_PYTHON" "$TC" shards "$QUIVER" "$ROOT" "$MODEL" "$HOT" "$COLD" "$S/blobs" $LABELS 2>&1) || fail "shard files after gc: $SHINFO"
  if [ "$full" = 1 ]; then
    out=$(q verify 2>&1) || fail "verify exited $?: $out"
    log "   verify: $out"
  fi
}

check_all() {  # the invariants after a kill (or a clean run)
  local l
  check_listing
  for l in $LABELS; do check_load $l; check_export $l; done
  check_clean "$1"
}

# run_killed DELAY_MS ARGS...: start quiver ARGS (the binary itself, not a
# shell function or subshell: the kill would miss it), SIGKILL it after
# DELAY_MS; sets RC (137 when killed) and RUN_MS.
run_killed() {
  local d=$1; shift
  local t0; t0=$(now_ms)
  "$QUIVER" --root "$ROOT" "$@" >"$S/op.out" 2>&1 &
  local pid=$!
  sleep "$(printf '%d.%03d' $((d / 1000)) $((d % 1000)))"
  kill -KILL "$pid" 2>/dev/null
  RC=0; { wait "$pid"; } 2>/dev/null || RC=$?
  RUN_MS=$(( $(now_ms) - t0 ))
}

timed() {  # timed ARGS...: quiver ARGS cleanly, fail on error, set MS
  local t0; t0=$(now_ms)
  "$QUIVER" --root "$ROOT" "$@" >"$S/op.out" 2>&1 || fail "clean run of 'quiver $*' failed: $(tail -5 "$S/op.out")"
  MS=$(( $(now_ms) - t0 ))
}

# -- setup -----------------------------------------------------------------------------
log "generating 4 versions (hidden 512, 4 layers, vocab 8000, BF16)"
G="--hidden 512 --layers 4 --vocab 8000 --seed 7"
"$QV_PYTHON" "$GEN" "$SRCD/v1.safetensors" $G >/dev/null || fail "gen_model v1"
"$QV_PYTHON" "$GEN" "$SRCD/v2.safetensors" $G --mutate 0.3 --mutate-seed 2 >/dev/null || fail "gen_model v2"
"$QV_PYTHON" "$GEN" "$SRCD/v3.safetensors" $G --mutate 0.6 --mutate-seed 3 >/dev/null || fail "gen_model v3"
"$QV_PYTHON" "$GEN" "$SRCD/v4" $G --mutate 0.3 --mutate-seed 2 --shards 3 >/dev/null || fail "gen_model v4"
SRCP[v1]=$SRCD/v1.safetensors; SRCP[v2]=$SRCD/v2.safetensors; SRCP[v3]=$SRCD/v3.safetensors; SRCP[v4]=$SRCD/v4
"$QV_PYTHON" "$TC" blobs "$SRCD/v4" >"$S/blobs" || fail "blob digests"

OP=init
out=$(q init --hot "$HOT" --cold "$COLD" 2>&1) || fail "init: $out"
for l in $LABELS; do
  a=--no-activate; [ $l = v1 ] && a=
  timed publish $MODEL "${SRCP[$l]}" --version $l $a
done
log "published: $(du -sh "$HOT/shards" | cut -f1) of shards on the hot tier"

# Measure the full work of each operation: with every version cold, make a
# version current (activate promotes a cold version: all its shards move),
# demote it (nothing else is hot or current, so nothing is kept), promote it
# (everything moves) and demote it again; twice, T = the larger run (the
# machine is busy).
OP=measure
declare -A T_DEM T_PRO
for pass in 1 2 3 4; do   # each demote keeps what the current and hot versions share
  for l in v2 v3 v4 v1; do timed demote $MODEL@$l; done
  listed; [ "${ST#* }" = "v1:cold v2:cold v3:cold v4:cold" ] && break
done
listed; [ "${ST#* }" = "v1:cold v2:cold v3:cold v4:cold" ] || fail "measure: not all cold: $ST"
work() {  # sets PW[label] / DW[label]: bytes a promote / demote would move now
  local w; w=$("$QV_PYTHON" "$TC" work "$QUIVER" "$ROOT" "$MODEL" 2>&1) || fail "work: $w"
  local l p d
  while read -r l p d; do PW[$l]=$p; DW[$l]=$d; done <<<"$w"
}
declare -A PW DW FULL
work; for l in $LABELS; do FULL[$l]=${PW[$l]}; done
for rep in 1 2; do
  for l in $LABELS; do
    timed activate $MODEL@$l
    timed demote $MODEL@$l; d=$MS
    timed promote $MODEL@$l; p=$MS
    timed demote $MODEL@$l
    [ $MS -gt $d ] && d=$MS
    [ $rep = 1 ] || [ $d -gt ${T_DEM[$l]} ] && T_DEM[$l]=$d
    [ $rep = 1 ] || [ $p -gt ${T_PRO[$l]} ] && T_PRO[$l]=$p
  done
done
timed activate $MODEL@v1             # promotes v1
timed promote $MODEL@v1; T_NOOP=$MS  # v1 is hot already: nothing to move
for r in 1 2; do timed promote $MODEL@v1; [ $MS -lt $T_NOOP ] && T_NOOP=$MS; done
# kill windows: T = T_NOOP + bytes to move x the mean measured rate
US_DEM=0; US_PRO=0   # microseconds per MB (1e6 bytes)
for l in $LABELS; do
  mb=$(( FULL[$l] / 1000000 )); [ $mb -gt 0 ] || fail "measure: version $l has no bytes"
  US_DEM=$(( US_DEM + (T_DEM[$l] - T_NOOP) * 250 / mb ))
  US_PRO=$(( US_PRO + (T_PRO[$l] - T_NOOP) * 250 / mb ))
done
timed promote $MODEL@v3       # start mixed: v1, v3 hot, v2, v4 partly
m=""; for l in $LABELS; do m="$m $l ($((FULL[$l] / 1000000)) MB): demote ${T_DEM[$l]} ms, promote ${T_PRO[$l]} ms;"; done
log "clean runs:$m no-op $T_NOOP ms; kill windows: $T_NOOP ms + $US_DEM us/MB (demote), $US_PRO us/MB (promote)"
check_all 1

# -- the loop --------------------------------------------------------------------------------
declare -A NKILLED NDONE
NLEFT=0
LA=($LABELS)
for ((it = 1; KILLS < ITERS && it <= 2 * ITERS; it++)); do
  OPINFO=""
  listed
  work
  cands=()
  for l in $LABELS; do
    [ ${PW[$l]} = 0 ] || cands+=("promote $l")
    [ ${DW[$l]} = 0 ] || cands+=("demote $l")
  done
  rnd 6
  if [ $R = 0 ] || [ ${#cands[@]} = 0 ]; then
    # activate: promotes the version first when it is not entirely hot
    OP=activate; rnd 3; l=${LA[$R]}; [ $l = $CUR ] && l=v4
  else
    rnd ${#cands[@]}; OP=${cands[$R]% *}; l=${cands[$R]#* }
  fi
  if [ $OP = demote ]; then B=${DW[$l]}; T=$(( T_NOOP + B / 1000000 * US_DEM / 1000 ))
  else B=${PW[$l]}; T=$(( T_NOOP + B / 1000000 * US_PRO / 1000 ))
  fi
  rnd 4
  if [ $R = 0 ]; then rnd $(( T * 4 / 10 + 1 )); d=$(( T * 8 / 10 + R ))
  else rnd $(( T + 1 )); d=$R
  fi
  OPINFO="$OPINFO$l (was ${TIER[$l]}, $((B / 1000000)) MB to move), kill after $d ms of ~$T"
  run_killed $d $OP $MODEL@$l
  if [ $RC -eq 137 ]; then NKILLED[$OP]=$(( ${NKILLED[$OP]:-0} + 1 )); outcome=killed; KILLS=$((KILLS + 1))
  elif [ $RC -eq 0 ]; then NDONE[$OP]=$(( ${NDONE[$OP]:-0} + 1 )); outcome=done
  else fail "$OP $l exited $RC (not killed): $(tail -5 "$S/op.out")"
  fi
  before=${ST#* }
  if [ $OP = activate ]; then   # done or not: the current is the old or the new one
    listed; c=${ST%% *}
    [ $RC -ne 0 ] || [ "$c" = $l ] || fail "activate $l exited 0 but current is $c"
    [ "$c" = $l ] || [ "$c" = $CUR ] || fail "activate $l killed: current is $c, neither $CUR nor $l"
    OPINFO="$OPINFO (current was $CUR, now $c)"; CUR=$c
  fi
  check_listing
  if [ $outcome = done ]; then
    if [ $OP != demote ]; then
      [ "${TIER[$l]}" = hot ] || fail "$OP $l exited 0 but $l is ${TIER[$l]} (listing: $ST)"
    else
      out=$("$QV_PYTHON" "$TC" demoted "$QUIVER" "$ROOT" "$MODEL" $l 2>&1) || fail "$out"
    fi
  fi
  tiers_after=${ST#* }
  nleft0=$NLEFT
  for x in $LABELS; do check_load $x; check_export $x; done
  full=0; [ $((it % 10)) = 0 ] && full=1
  check_clean $full
  if [ $outcome = killed ] && { [ $NLEFT != $nleft0 ] || [ "$before" != "$tiers_after" ]; }; then
    NMID=$((NMID + 1)); outcome="killed mid-work"
  fi
  log "$it ($KILLS/$ITERS kills) $OP $OPINFO: $outcome after ${RUN_MS} ms (rc $RC); tiers: $tiers_after; gc freed: $GCINFO; $SHINFO"
done

OP=final; OPINFO=""
out=$(q verify 2>&1) || fail "final verify exited $?: $out"
log "final verify: $out"

# -- damage sub-test: one byte flipped in a frame of a cold shard -----------------------------
OP=damage
timed activate $MODEL@v1; CUR=v1
timed demote $MODEL@v3   # v3's own shards (not shared with v1) go cold
"$QV_PYTHON" - "$QUIVER" "$ROOT" "$MODEL" "$COLD" >"$S/victim" <<'EOF' || fail "damage: no cold shard of v3 with a frame: $(cat "$S/victim")"
import json, os, subprocess, sys
q, root, model, cold = sys.argv[1:5]
d = json.loads(subprocess.check_output([q, "--root", root, "show", model + "@v3", "--json"]))
best = None
for t in d["tensors"]:
    h = t["shard"].split(":")[-1]
    p = os.path.join(cold, "shards", h[:2], h[2:4], h)
    if t["tier"] == "cold" and os.path.isfile(p) and os.path.getsize(p) > 8192:
        if best is None or t["bytes"] > best[1]:
            best = (p, t["bytes"])
if not best:
    sys.exit("none")
print(best[0])
EOF
VF=$(cat "$S/victim")
off=$("$QV_PYTHON" "$TC" frame "$VF" 2>&1) || fail "damage: $off"
orig=$(od -An -tu1 -j "$off" -N1 "$VF" | tr -d ' ')
flip=$(( orig ^ 0x5a ))
OPINFO="$(basename "$VF" | cut -c1-16) byte $off: $orig -> $flip"
chmod u+w "$VF"
printf "$(printf '\\%03o' $flip)" | dd of="$VF" bs=1 seek="$off" conv=notrunc status=none || fail "damage: cannot write $VF"
[ "$(od -An -tu1 -j "$off" -N1 "$VF" | tr -d ' ')" = "$flip" ] || fail "damage: byte not flipped"
rc=0; out=$(q verify 2>&1) || rc=$?
[ $rc -eq 3 ] || fail "verify with a damaged cold frame exited $rc (expected 3): $out"
log "damaged $OPINFO: verify exit 3: $(echo "$out" | tail -1)"
for j in "" --json; do
  rc=0; q load $MODEL@v3 --verify $j >"$S/dload.out" 2>"$S/dload.err" || rc=$?
  [ $rc -eq 3 ] || fail "load --verify $j of v3 with a damaged cold frame exited $rc (expected 3): $(cat "$S/dload.out" "$S/dload.err" | tail -3)"
  [ ! -s "$S/dload.out" ] || fail "load --verify $j of v3 exited 3 but printed on stdout: $(head -3 "$S/dload.out")"
done
log "   load --verify (text and --json) exit 3, stdout empty: $(tail -1 "$S/dload.err")"
erc=0; q export $MODEL@v3 "$EXP" >"$S/dexp.out" 2>&1 || erc=$?
[ $erc -ne 0 ] || fail "export of v3 with a damaged cold frame exited 0"
rm -rf "$EXP"
rc=0; q promote $MODEL@v3 >"$S/dpro.out" 2>&1 || rc=$?
[ $rc -ne 0 ] || fail "promote of v3 with a damaged cold frame exited 0"
tmp_empty "after a failed promote"
[ -f "$VF" ] || fail "the damaged cold file $VF is gone after a failed promote"
log "   export exit $erc: $(tail -1 "$S/dexp.out"); promote exit $rc: $(tail -1 "$S/dpro.out")"
q gc >/dev/null 2>&1 || fail "gc after the damage checks"
SHINFO=$("$QV_PYTHON" "$TC" shards "$QUIVER" "$ROOT" "$MODEL" "$HOT" "$COLD" "$S/blobs" $LABELS 2>&1) || fail "shard files after the failed promote: $SHINFO"
printf "$(printf '\\%03o' $orig)" | dd of="$VF" bs=1 seek="$off" conv=notrunc status=none || fail "damage: cannot restore $VF"
out=$(q verify 2>&1) || fail "verify after restoring the byte exited $?: $out"
OPINFO=""
check_all 1
log "restored: verify ok, every version loads and exports"

summary=""
for o in demote promote activate; do summary="$summary $o: ${NKILLED[$o]:-0} killed, ${NDONE[$o]:-0} completed;"; done
# the test is the kills: a run whose commands all finished first proved nothing
[ "$KILLS" -ge "$ITERS" ] || fail "only $KILLS kills in $((it - 1)) iterations, want $ITERS:$summary"
[ "$NMID" -ge 1 ] || fail "no kill landed mid-work (a tier changed or gc had leftovers):$summary"
log "PASS: seed $SEED, $((it - 1)) iterations, $KILLS kills;$summary $NMID kills landed mid-work (a tier changed or gc had leftovers), $NLEFT left leftovers for gc; $((SECONDS - T0)) s"
[ "${QV_TIERCRASH_KEEP:-0}" = 1 ] || rm -rf "$S"
exit 0
