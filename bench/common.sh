# Shared by the bench scripts (sourced): dropping the page cache, medians,
# the generated cold-tier model (cold_fixture), capping a disk's read rate
# (bench_throttle_reads), what to undo on exit (BENCH_UNDO), and fio's read
# rate of a folder of files, the limit the loads are held to.
#
# fio reads into huge-page buffers as well as 4 KiB ones and the better
# figure counts: a virtio disk reads much faster into physically contiguous
# buffers (2-vCPU box: 1.26-1.68 against 0.97-1.11 GB/s), and quiver's own
# read buffers are huge pages, so 4 KiB buffers alone would understate the
# disk. Needs huge pages reserved (bench_hugepages, as root); without them
# only the 4 KiB figure is taken, and FIO_HUGE says so.
#
# A fio run that fails, reports an error or reads less than every byte of
# the files stops the script: a failed run must never count as a figure (a
# 0 or a partial rate would lower the limit and flatter quiver).
DROPPED=no FIO_HUGE=no THROTTLED=no
# What to undo when the script exits: each helper adds its own line.
BENCH_UNDO=""
bench_undo() { eval "$BENCH_UNDO"; }
trap bench_undo EXIT
drop() { sync; if echo 3 > /proc/sys/vm/drop_caches 2>/dev/null; then DROPPED=yes; fi; }
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

# cold_fixture QUIVER W SHARDS HIDDEN LAYERS VOCAB DTYPE: a generated model
# with values shaped like trained weights (gen_model.py --values normal) in
# W/model, published to the store W/store as bench/cold and demoted to its
# cold tier (W/store/cold); what is there already is kept. Sets R to the
# store's root. Prints how long the demote took when it runs one.
cold_fixture() {
  local q=$1 w=$2 t0 t1
  mkdir -p "$w"
  if [ ! -f "$w/model/model.safetensors.index.json" ]; then
    python3 "$(dirname "${BASH_SOURCE[0]}")/../python/tools/gen_model.py" "$w/model" --shards "$3" \
      --values normal --hidden "$4" --layers "$5" --vocab "$6" --dtype "$7" >/dev/null
  fi
  R=$w/store
  if [ ! -f "$R/config.ini" ]; then
    "$q" --root "$R" init --hot "$R/hot" --cold "$R/cold" >/dev/null
    "$q" --root "$R" publish bench/cold "$w/model" --no-activate >/dev/null
    t0=$(date +%s.%N)
    "$q" --root "$R" demote bench/cold@v1 >/dev/null
    t1=$(date +%s.%N)
    echo "demoted in $(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.2f", b - a}') s"
  fi
}

# Reserves 64 huge pages (128 MiB: 64 reads of 1 MiB or 16 of 4 MiB, with
# room) for fio's buffers until the script exits.
FIO_HUGE_PAGES=64
bench_hugepages() {
  local hp0
  hp0=$(cat /proc/sys/vm/nr_hugepages 2>/dev/null || echo 0)
  if [ "$hp0" -lt $FIO_HUGE_PAGES ] && { echo $FIO_HUGE_PAGES > /proc/sys/vm/nr_hugepages; } 2>/dev/null; then
    BENCH_UNDO+="echo $hp0 > /proc/sys/vm/nr_hugepages 2>/dev/null || true;"
  fi
  [ "$(awk '/HugePages_Free/ {print $2}' /proc/meminfo)" -ge $FIO_HUGE_PAGES ] && FIO_HUGE=yes
  return 0
}

# fio_rate DIR [fio options]: sets RATE to the GB/s of one O_DIRECT read of
# every file below DIR, 1 MiB reads 16 deep (options after DIR override
# both), caches dropped first. Returns 1, saying why, if fio failed.
# fio_opt NAME DEFAULT [fio options]: the value of --NAME=V among the options
# (the last one, as fio takes it), else DEFAULT.
fio_opt() {
  local name=$1 v=$2 a
  shift 2
  for a in "$@"; do case $a in --"$name"=*) v=${a#--"$name"=} ;; esac; done
  echo "$v"
}

fio_rate() {
  local dir=$1 out want bs
  shift
  bs=$(fio_opt bs 1048576 "$@")
  drop
  # fio reads whole blocks: each file's tail under one block is not read
  want=$(find "$dir" -type f -printf '%s\n' | awk -v bs="$bs" '{n += int($1 / bs) * bs} END {print n + 0}')
  local errf
  errf=$(mktemp)
  out=$(fio --name=read --opendir="$dir" --ioengine=io_uring --direct=1 --rw=read --bs=1M \
    --iodepth=16 --file_service_type=sequential "$@" --output-format=json 2>"$errf") ||
    { echo "fio failed ($*): $(tail -3 "$errf")" >&2; rm -f "$errf"; return 1; }
  rm -f "$errf"
  RATE=$(echo "$out" | sed -n '/^{/,$p' | python3 -c '
import json, sys
j = json.load(sys.stdin)["jobs"][0]
want = int(sys.argv[1])
if j.get("error"):
    sys.exit("fio job error %d" % j["error"])
if j["read"]["io_bytes"] < want:
    sys.exit("fio read %d of %d bytes" % (j["read"]["io_bytes"], want))
print(j["read"]["bw_bytes"] / 1e9)' "$want") || { echo "fio run refused ($*)" >&2; return 1; }
}

# fio_best DIR [fio options]: sets FB F4 FH, the GB/s of the better of the
# two buffer kinds, of 4 KiB buffers and of huge-page ones (FH empty when not
# run). Returns 1 if a run failed.
fio_best() {
  local bs qd free
  FB= F4= FH=
  fio_rate "$@" || return 1
  F4=$RATE
  # fio's huge-page buffers take iodepth x bs: skip (and say so) what the
  # reserved pages cannot hold, rather than fail
  bs=$(fio_opt bs 1048576 "$@") qd=$(fio_opt iodepth 16 "$@")
  free=$(awk '/HugePages_Free/ {print $2}' /proc/meminfo)
  if [ "$FIO_HUGE" = yes ] && [ $((qd * bs)) -gt $((free * 2097152)) ]; then
    echo "fio: $qd x $bs bytes do not fit in $free free huge pages; 4 KiB buffers only" >&2
  elif [ "$FIO_HUGE" = yes ]; then
    fio_rate "$@" --iomem=shmhuge || return 1
    FH=$RATE
  fi
  FB=$(awk -v a="$F4" -v b="${FH:-0}" 'BEGIN {print (a > b ? a : b)}')
}

# best_median FILE: FILE holds lines "SETTING GB/s", several runs of each;
# prints "MEDIAN SETTING" for the setting whose median is highest: the
# disk's limit, each setting's noise damped by its repetitions.
best_median() {
  python3 -c '
import statistics, sys
runs = {}
for line in open(sys.argv[1]):
    k, v = line.split()
    runs.setdefault(k, []).append(float(v))
k = max(runs, key=lambda k: statistics.median(runs[k]))
print(statistics.median(runs[k]), k)' "$1"
}

# bench_throttle_reads DIR BYTES_PER_S: from here on, this shell and what it
# starts (fio, quiver) read the disk under DIR at most BYTES_PER_S, through a
# block-I/O cgroup (v1 blkio.throttle or v2 io.max; root only), so a fast
# disk can stand in for a slower one, such as the hard disk a cold tier is
# meant for. Sets THROTTLED to the rate; exits, saying why, where it cannot.
bench_throttle_reads() {
  local dir=$1 bps=$2 src name parent dev cg
  case $bps in '' | 0 | *[!0-9]*) echo "throttle: '$bps' is not a byte rate (0 would mean no cap)" >&2; exit 2 ;; esac
  src=$(findmnt -no SOURCE --target "$dir") || { echo "throttle: no mount for $dir" >&2; exit 1; }
  name=$(lsblk -no KNAME "$src" 2>/dev/null | head -1) || true
  parent=$(lsblk -no PKNAME "$src" 2>/dev/null | head -1) || true
  # the limit applies to whole disks, not partitions
  dev=$(cat "/sys/class/block/${parent:-$name}/dev" 2>/dev/null) ||
    { echo "throttle: cannot tell which disk holds $dir ($src)" >&2; exit 1; }
  if [ -f /sys/fs/cgroup/cgroup.controllers ] && grep -qw io /sys/fs/cgroup/cgroup.controllers; then
    cg=/sys/fs/cgroup/qv-bench-$$
    grep -qw io /sys/fs/cgroup/cgroup.subtree_control || echo +io > /sys/fs/cgroup/cgroup.subtree_control
    mkdir "$cg" && BENCH_UNDO+="echo $$ > /sys/fs/cgroup/cgroup.procs; rmdir $cg;" &&
      echo "$dev rbps=$bps" > "$cg/io.max"
  elif [ -f /sys/fs/cgroup/blkio/blkio.throttle.read_bps_device ]; then
    cg=/sys/fs/cgroup/blkio/qv-bench-$$
    mkdir "$cg" && BENCH_UNDO+="echo $$ > /sys/fs/cgroup/blkio/cgroup.procs; rmdir $cg;" &&
      echo "$dev $bps" > "$cg/blkio.throttle.read_bps_device"
  else
    echo "throttle: no cgroup v2 io controller or v1 blkio.throttle here" >&2; exit 1
  fi || { echo "throttle: could not set up $cg (root only)" >&2; exit 1; }
  echo $$ > "$cg/cgroup.procs" || { echo "throttle: could not join $cg" >&2; exit 1; }
  THROTTLED="$bps B/s on $dev"
}
