#!/usr/bin/env bash
# Crash test: SIGKILL quiver in the middle of publish / rm / gc, again and
# again, and check DESIGN.md's invariants after every kill:
#   - the index opens (`quiver list --json` works);
#   - a killed publish is either fully there (exports byte for byte against
#     its source, and is current) or absent; a killed rm is either done or not;
#     nothing else changes (labels, current);
#   - `quiver gc` cleans every leftover: afterwards root/tmp is empty,
#     `gc --dry-run --json` has nothing to free, every tensor shard of every
#     version is a file under root/shards and no other files are there (besides
#     the versions' blobs), and `quiver verify` exits 0 (every 10 iterations and
#     at the end, when every version is also exported).
#
# A ~325 MB random model (gen_model.py, BF16) is generated once, as a single
# file and as a Hugging Face style folder of 3 files; each publish is a copy
# of one of them with a random fraction of the large tensors changed, so it
# writes new shards. Kill delays are drawn from [0, T] with T the duration of
# a clean run of the same operation, measured first (publish: [0, 1.1 T], or
# for a quarter of them [0.8 T, 1.2 T], so that kills land at the commit or
# just after it too). Operations: publish
# (60%), rm of a non-current version (20%; always when QV_CRASH_MAX_VERSIONS
# are listed), gc (20%: a publish killed halfway, then a killed gc, so gc has
# leftovers to sweep when it is killed).
#
# Env: QV_CRASH_ITERS (default 50), QV_CRASH_SEED (default random; printed at
# the start and on failure; it fixes the sequence of operations, sources and
# delays, not the timing of the machine, so a kill may land elsewhere on a
# rerun), QV_CRASH_MAX_VERSIONS (default 5), QUIVER, QV_SRC, QV_PYTHON,
# QV_SCRATCH (CTest sets them; standalone runs default to ./build/cli/quiver,
# the repo of this script, python3 and a temp dir). The scratch folder is kept
# on failure, removed on success unless QV_CRASH_KEEP=1.
set -uo pipefail
export LC_ALL=C

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
QV_SRC=${QV_SRC:-$(cd "$here/../.." && pwd)}
QUIVER=${QUIVER:-$QV_SRC/build/cli/quiver}
QV_PYTHON=${QV_PYTHON:-python3}
QV_SCRATCH=${QV_SCRATCH:-$(mktemp -d "${TMPDIR:-/tmp}/qv-crash.XXXXXX")}
ITERS=${QV_CRASH_ITERS:-50}
SEED=${QV_CRASH_SEED:-$(( $(od -An -N4 -tu4 /dev/urandom) % 2147483647 ))}
MAXV=${QV_CRASH_MAX_VERSIONS:-5}
GEN=$QV_SRC/python/tools/gen_model.py
MODEL=crash/m

S=$QV_SCRATCH
ROOT=$S/root
SRCD=$S/src
EXP=$S/export
T0=$SECONDS
it=0
OP="setup"
OPINFO=""

echo "crash test: seed $SEED, $ITERS iterations (rerun: QV_CRASH_SEED=$SEED QV_CRASH_ITERS=$ITERS bash $here/crash.sh)"

fail() {
  echo "FAIL: $*" >&2
  echo "FAIL: iteration $it/$ITERS, op $OP $OPINFO, seed $SEED" >&2
  echo "FAIL: reproduce: QV_CRASH_SEED=$SEED QV_CRASH_ITERS=$ITERS QUIVER=$QUIVER bash $here/crash.sh" >&2
  echo "FAIL: store and sources kept in $S (root: $ROOT)" >&2
  exit 1
}
log() { printf '[%4ds] %s\n' $((SECONDS - T0)) "$*"; }
q() { "$QUIVER" --root "$ROOT" "$@"; }
# rnd N: set R to a number in [0, N), from bash's RANDOM (seeded below).
# Never call it in $(...): a subshell reseeds RANDOM and the run would no
# longer follow the seed.
rnd() { R=$(( ((RANDOM << 15) | RANDOM) % $1 )); }
now_ms() { date +%s%3N; }

[ -x "$QUIVER" ] || fail "no quiver binary at $QUIVER"
[ -f "$GEN" ] || fail "no $GEN"
RANDOM=$SEED
rm -rf "$S"; mkdir -p "$S" "$SRCD"

# -- helpers (python, stdlib) --------------------------------------------------
cat >"$S/mutate.py" <<'EOF'
# mutate.py SRC OUT SEED FRACTION: copy SRC (a .safetensors file or a folder)
# to OUT, changing a few bytes in FRACTION of the tensors of 1 MiB or more
# (at least one), so those tensors get new digests.
import json, os, random, shutil, struct, sys
src, out, seed, frac = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
rng = random.Random(seed)
if os.path.isdir(src):
    shutil.copytree(src, out)
    files = [os.path.join(out, f) for f in sorted(os.listdir(out)) if f.endswith(".safetensors")]
else:
    shutil.copyfile(src, out)
    files = [out]
big = []
for f in files:
    with open(f, "rb") as fh:
        n = struct.unpack("<Q", fh.read(8))[0]
        h = json.loads(fh.read(n))
    for k, v in h.items():
        if k == "__metadata__":
            continue
        a, b = v["data_offsets"]
        if b - a >= 1 << 20:
            big.append((f, 8 + n + a, b - a))
k = max(1, int(round(frac * len(big))))
chosen = rng.sample(big, k)
for f, off, size in chosen:
    with open(f, "r+b") as fh:
        fh.seek(off + rng.randrange(0, size - 16))
        fh.write(bytes(rng.randrange(256) for _ in range(16)))
print(json.dumps({"changed": k, "of": len(big), "bytes": sum(c[2] for c in chosen)}))
EOF

cat >"$S/state.py" <<'EOF'
# state.py ROOT MODEL QUIVER: print "current label1 label2 ..." from list --json
# (current is "-" when none); exit 1 when the listing is not valid or has more
# than one current.
import json, subprocess, sys
root, model, quiver = sys.argv[1:4]
def run(*a):
    p = subprocess.run([quiver, "--root", root] + list(a), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if p.returncode != 0:
        sys.exit("quiver %s exited %d: %s" % (" ".join(a), p.returncode, p.stderr.decode(errors="replace").strip()))
    return json.loads(p.stdout)
models = run("list", "--json")["models"]
mine = [m for m in models if m["model"] == model]
if not mine:
    print("-")
    sys.exit(0)
vs = run("list", model, "--json")["versions"]
cur = [v["version"] for v in vs if v["current"]]
if len(cur) > 1:
    sys.exit("more than one current: %r" % cur)
if mine[0].get("versions", len(vs)) != len(vs):
    sys.exit("list --json says %r versions, list MODEL --json lists %d" % (mine[0].get("versions"), len(vs)))
print(" ".join([cur[0] if cur else "-"] + sorted(v["version"] for v in vs)))
EOF

cat >"$S/shards.py" <<'EOF'
# shards.py ROOT MODEL QUIVER LABEL...: every tensor shard of every version is
# a file under ROOT/shards (named by its hex digest), and the files there are
# no more than the tensor shards plus the versions' blobs.
import json, os, subprocess, sys
root, model, quiver = sys.argv[1:4]
labels = sys.argv[4:]
want, blobs = set(), 0
for l in labels:
    p = subprocess.run([quiver, "--root", root, "show", "%s@%s" % (model, l), "--json"],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if p.returncode != 0:
        sys.exit("show %s exited %d: %s" % (l, p.returncode, p.stderr.decode(errors="replace").strip()))
    d = json.loads(p.stdout)
    if d["tensor_count"] != len(d["tensors"]):
        sys.exit("show %s: tensor_count %d, %d tensors listed" % (l, d["tensor_count"], len(d["tensors"])))
    for t in d["tensors"]:
        want.add(t["shard"].split(":")[-1])
    blobs += sum(1 for f in d["files"] if f["type"] != "safetensors")
have = []
for dp, dn, fn in os.walk(os.path.join(root, "shards")):
    have += fn
missing = want - set(have)
if missing:
    sys.exit("%d tensor shards referenced by versions are missing under shards/, e.g. %s"
             % (len(missing), sorted(missing)[:3]))
if len(have) > len(want) + blobs:
    extra = sorted(set(have) - want)
    sys.exit("%d files under shards/ but only %d tensor shards + %d blobs referenced; unreferenced e.g. %s"
             % (len(have), len(want), blobs, extra[:5]))
print("%d files under shards/, %d tensor shards, <= %d blobs" % (len(have), len(want), blobs))
EOF

cat >"$S/gcjson.py" <<'EOF'
import json, sys
d = json.load(sys.stdin)
keys = [k for k in ("versions", "shards", "bytes", "temp_files", "index_fixes") if k in d]
print(" ".join("%s=%s" % (k, d[k]) for k in keys))
if sys.argv[1:] == ["--zero"] and any(d[k] for k in keys):
    sys.exit(1)
EOF

# -- state ------------------------------------------------------------------------
declare -A SRCP KIND   # label -> source path, file|dir
CUR=""                  # expected current label
NEWEST=""               # last published label still listed

labels() { local l; for l in "${!SRCP[@]}"; do echo "$l"; done | sort | tr '\n' ' ' | sed 's/ $//'; }
listed() {  # sets ST to "current sorted-labels..." or fails
  ST=$("$QV_PYTHON" "$S/state.py" "$ROOT" "$MODEL" "$QUIVER" 2>&1) || fail "index does not open / list is broken: $ST"
}
has_label() { case " $2 " in *" $1 "*) return 0 ;; esac; return 1; }

check_export() {  # check_export LABEL
  local l=$1 src=${SRCP[$1]}
  rm -rf "$EXP"
  local rc=0
  q export "$MODEL@$l" "$EXP" >/dev/null 2>"$S/export.err" || rc=$?
  [ $rc -eq 0 ] || fail "export $MODEL@$l exited $rc: $(cat "$S/export.err")"
  if [ "${KIND[$l]}" = file ]; then
    local got; got=$(cd "$EXP" && ls -A)
    [ "$got" = "$(basename "$src")" ] || fail "export $l: expected only $(basename "$src"), got: $got"
    cmp "$EXP/$(basename "$src")" "$src" >/dev/null || fail "export $l differs from its source $src (half-published?)"
  else
    diff -rq "$EXP" "$src" >/dev/null || fail "export $l differs from its source folder $src: $(diff -rq "$EXP" "$src" | head -5)"
  fi
  rm -rf "$EXP"
}

check_listing() {  # the listing equals the expected labels and current
  listed
  local want="${CUR:--}"; [ ${#SRCP[@]} -gt 0 ] && want="$want $(labels)"
  [ "$ST" = "$want" ] || fail "listing is '$ST', expected '$want' (current first)"
}

check_clean() {  # after a clean gc: no leftovers, and (FULL=1) verify everything
  local full=$1 out rc=0
  out=$(q gc --json 2>&1) || fail "gc after the kill exited non-zero: $out"
  GCINFO=$(echo "$out" | "$QV_PYTHON" "$S/gcjson.py") || fail "gc --json unreadable: $out"
  local t; t=$(ls -A "$ROOT/tmp" 2>/dev/null)
  [ -z "$t" ] || fail "root/tmp not empty after gc: $(echo $t | head -c 300)"
  out=$(q gc --dry-run --json 2>&1) || fail "gc --dry-run exited non-zero: $out"
  echo "$out" | "$QV_PYTHON" "$S/gcjson.py" --zero >/dev/null || fail "gc --dry-run right after gc still finds work: $(echo "$out" | "$QV_PYTHON" "$S/gcjson.py")"
  out=$("$QV_PYTHON" "$S/shards.py" "$ROOT" "$MODEL" "$QUIVER" $(labels) 2>&1) || fail "shard files: $out"
  SHINFO=$out
  if [ "$full" = 1 ]; then
    out=$(q verify 2>&1) || fail "verify exited $?: $out"
    log "   verify: $out"
  fi
}

# run_killed DELAY_MS ARGS...: start quiver ARGS (the binary itself, not a
# subshell: killing a subshell would leave quiver running), SIGKILL it after
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

timed() {  # timed CMD...: run cleanly, fail on error, set MS
  local t0; t0=$(now_ms)
  "$@" >"$S/op.out" 2>&1 || fail "clean run of '$*' failed: $(tail -5 "$S/op.out")"
  MS=$(( $(now_ms) - t0 ))
}

new_source() {  # new_source LABEL: make a variant of a base; sets SRCP/KIND for it
  local l=$1 base kind frac
  rnd 2; if [ $R = 0 ]; then base=$S/base.safetensors; kind=file; else base=$S/base-hf; kind=dir; fi
  rnd 4; case $R in 0) frac=0.05 ;; 1) frac=0.2 ;; 2) frac=0.5 ;; *) frac=1.0 ;; esac
  local out=$SRCD/$l; [ $kind = file ] && out=$SRCD/$l.safetensors
  local info; rnd 1000000
  info=$("$QV_PYTHON" "$S/mutate.py" "$base" "$out" "$R" "$frac") || fail "mutate.py failed"
  NEWSRC=$out; NEWKIND=$kind; NEWINFO="$kind, $info"
}

forget() {  # forget LABEL: drop a label that is no longer in the store
  rm -rf "${SRCP[$1]}"
  unset "SRCP[$1]" "KIND[$1]"
}

# -- setup: base model, measured clean runs -------------------------------------------
log "generating the base model (single file and HF folder)"
"$QV_PYTHON" "$GEN" "$S/base.safetensors" --hidden 768 --layers 12 --vocab 32000 --seed 11 >/dev/null || fail "gen_model"
"$QV_PYTHON" "$GEN" "$S/base-hf" --hidden 768 --layers 12 --vocab 32000 --seed 11 --shards 3 >/dev/null || fail "gen_model --shards"
log "base: $(du -sh "$S/base.safetensors" | cut -f1) file, $(du -sh "$S/base-hf" | cut -f1) folder"

# Measure: three publishes in which every tensor is new (base, then a changed
# copy of each form), two rms that free all of a version's own shards, and a
# gc with leftovers to sweep. The machine's speed varies from run to run (and
# with other load), so publish and rm take the median / mean.
OP=measure
cp "$S/base.safetensors" "$SRCD/base.safetensors"
timed q publish $MODEL "$SRCD/base.safetensors" --version base
SRCP[base]=$SRCD/base.safetensors; KIND[base]=file; CUR=base; NEWEST=base
pubs=($MS); rms=()
for m in m1:base-hf m2:base.safetensors; do
  l=${m%%:*}; from=$S/${m#*:}; dst=$SRCD/$l
  [ -d "$from" ] || dst=$dst.safetensors
  "$QV_PYTHON" "$S/mutate.py" "$from" "$dst" 1 1.0 >/dev/null || fail "mutate.py"
  timed q publish $MODEL "$dst" --version $l --no-activate; pubs+=($MS)
  timed q rm $MODEL@$l; rms+=($MS)
  rm -rf "$dst"
done
T_PUB=$(printf '%s\n' "${pubs[@]}" | sort -n | sed -n 2p)
T_RM=$(( (rms[0] + rms[1]) / 2 ))
log "clean runs: publish ${pubs[*]} ms, rm ${rms[*]} ms"
# leftovers for gc to sweep: a publish killed halfway
"$QV_PYTHON" "$S/mutate.py" "$S/base.safetensors" "$SRCD/m3.safetensors" 2 1.0 >/dev/null || fail "mutate.py"
run_killed $((T_PUB / 2)) publish $MODEL "$SRCD/m3.safetensors" --version m3 --no-activate
rm -f "$SRCD/m3.safetensors"
timed q gc
T_GC=$MS
# the half-way kill may have landed after the commit
listed; has_label m3 "$ST" && { q rm $MODEL@m3 >/dev/null 2>&1 || fail "setup: rm m3"; }
listed; [ "$ST" = "base base" ] || fail "setup: listing '$ST', expected 'base base'"
check_export base
check_clean 1
log "measured: publish ${T_PUB} ms, rm ${T_RM} ms, gc ${T_GC} ms (kill delays: 0..that, publish 0..1.1x, at least 0..30 ms)"
win() { local w=$1; [ $w -lt 30 ] && w=30; echo $w; }
W_PUB=$(win $((T_PUB * 11 / 10))); W_RM=$(win $T_RM); W_GC=$(win $T_GC)

# -- the loop --------------------------------------------------------------------------------
declare -A NKILLED NDONE
for ((it = 1; it <= ITERS; it++)); do
  nv=${#SRCP[@]}
  rnd 100; r=$R
  if [ $nv -ge $MAXV ]; then OP=rm
  elif [ $r -lt 60 ]; then OP=publish
  elif [ $r -lt 80 ] && [ $nv -ge 2 ]; then OP=rm
  else OP=gc
  fi
  CHANGED=(); OPINFO=""
  case $OP in
  publish|gc)
    # gc: first a publish killed halfway, so gc has temp files and
    # unreferenced shards to sweep, then a killed gc.
    l=p$it
    new_source $l
    # publish: a quarter of the kills aimed at the end (0.8..1.2 T: last
    # renames, the index commit, just after it), the rest anywhere in 0..1.1 T.
    if [ $OP = gc ]; then rnd $(( W_PUB / 2 )); d=$(( W_PUB / 4 + R ))
    else rnd 4; if [ $R = 0 ]; then rnd $(( T_PUB * 4 / 10 + 1 )); d=$(( T_PUB * 8 / 10 + R )); else rnd $W_PUB; d=$R; fi
    fi
    OPINFO="$l ($NEWINFO), kill after $d ms"
    run_killed $d publish $MODEL "$NEWSRC" --version $l
    PUBRC=$RC PUBMS=$RUN_MS
    [ $PUBRC -eq 0 ] || [ $PUBRC -eq 137 ] || fail "publish $l exited $PUBRC (not killed): $(tail -5 "$S/op.out")"
    if [ $OP = gc ]; then
      rnd $W_GC; d=$R
      OPINFO="after publish $OPINFO: rc $PUBRC after $PUBMS ms; gc: kill after $d ms"
      run_killed $d gc
    fi
    listed
    if has_label $l "$ST"; then
      SRCP[$l]=$NEWSRC; KIND[$l]=$NEWKIND
      CUR=$l; NEWEST=$l; CHANGED+=($l)
    else
      [ $PUBRC -ne 0 ] || fail "publish $l exited 0 but $l is not listed: '$ST'"
      rm -rf "$NEWSRC"
    fi
    ;;
  rm)
    cands=(); for l in "${!SRCP[@]}"; do [ "$l" != "$CUR" ] && cands+=("$l"); done
    IFS=$'\n' cands=($(printf '%s\n' "${cands[@]}" | sort)); unset IFS
    rnd ${#cands[@]}; l=${cands[$R]}
    rnd $W_RM; d=$R
    OPINFO="$l, kill after $d ms"
    run_killed $d rm $MODEL@$l
    listed
    if has_label $l "$ST"; then
      [ $RC -ne 0 ] || fail "rm $l exited 0 but $l is still listed: '$ST'"
      CHANGED+=($l)
    else
      forget $l
      [ "$NEWEST" = "$l" ] && NEWEST=$CUR
    fi
    ;;
  esac
  if [ $RC -eq 137 ]; then NKILLED[$OP]=$(( ${NKILLED[$OP]:-0} + 1 )); outcome=killed
  elif [ $RC -eq 0 ]; then NDONE[$OP]=$(( ${NDONE[$OP]:-0} + 1 )); outcome=done
  else fail "$OP exited $RC (not killed): $(tail -5 "$S/op.out")"
  fi
  # The listing: exactly the expected labels; a committed publish is current.
  check_listing
  # Exports: what changed, the newest, and one random other version.
  exp=("${CHANGED[@]}")
  [ -n "$NEWEST" ] && exp+=("$NEWEST")
  all=($(labels)); rnd ${#all[@]}; exp+=("${all[$R]}")
  done_exp=" "
  for l in "${exp[@]}"; do
    case "$done_exp" in *" $l "*) continue ;; esac
    check_export "$l"; done_exp="$done_exp$l "
  done
  full=0; [ $((it % 10)) = 0 ] || [ $it = $ITERS ] && full=1
  check_clean $full
  log "$it/$ITERS $OP $OPINFO: $outcome after ${RUN_MS} ms (rc $RC); versions: $(labels); exported:$done_exp; gc freed: $GCINFO; $SHINFO"
done

# -- final: export every version, verify -----------------------------------------------------
OP=final; OPINFO=""
for l in $(labels); do check_export "$l"; done
out=$(q verify 2>&1) || fail "final verify exited $?: $out"
log "final: exported all of $(labels); verify: $out"
summary=""
kills=0
for o in publish rm gc; do
  summary="$summary $o: ${NKILLED[$o]:-0} killed, ${NDONE[$o]:-0} completed;"
  kills=$((kills + ${NKILLED[$o]:-0}))
done
# the test is the kills: a run whose commands all finished first proved nothing
[ "$kills" -ge $((ITERS / 10)) ] && [ "${NKILLED[publish]:-0}" -ge 1 ] ||
  fail "only $kills kills in $ITERS iterations (want at least $((ITERS / 10)), one of them a publish):$summary"
log "PASS: seed $SEED, $ITERS iterations;$summary $((SECONDS - T0)) s"
[ "${QV_CRASH_KEEP:-0}" = 1 ] || rm -rf "$S"
exit 0
