# Shared by the bench scripts (sourced): dropping the page cache, medians,
# and fio's read rate of a folder of files, the limit the loads are held to.
#
# fio reads into huge-page buffers as well as 4 KiB ones and the better
# figure counts: a virtio disk reads much faster into physically contiguous
# buffers (2-vCPU box: 1.26-1.68 against 0.97-1.11 GB/s), and quiver's own
# read buffers are huge pages, so 4 KiB buffers alone would understate the
# disk. Needs 16 huge pages reserved (bench_hugepages, as root); without
# them only the 4 KiB figure is taken, and FIO_HUGE says so.
DROPPED=no FIO_HUGE=no
drop() { sync; if echo 3 > /proc/sys/vm/drop_caches 2>/dev/null; then DROPPED=yes; fi; }
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

# Reserves 16 huge pages for fio's buffers until the script exits.
bench_hugepages() {
  local hp0
  hp0=$(cat /proc/sys/vm/nr_hugepages 2>/dev/null || echo 0)
  if [ "$hp0" -lt 16 ] && { echo 16 > /proc/sys/vm/nr_hugepages; } 2>/dev/null; then
    trap "echo $hp0 > /proc/sys/vm/nr_hugepages 2>/dev/null || true" EXIT
  fi
  [ "$(cat /proc/sys/vm/nr_hugepages 2>/dev/null || echo 0)" -ge 16 ] && FIO_HUGE=yes
  return 0
}

# fio_rate DIR [fio options]: GB/s of one O_DIRECT read of every file below
# DIR, 1 MiB reads 16 deep (options after DIR override both), caches dropped
# first.
fio_rate() {
  local dir=$1
  shift
  drop
  fio --name=read --opendir="$dir" --ioengine=io_uring --direct=1 --rw=read --bs=1M \
    --iodepth=16 --file_service_type=sequential "$@" --output-format=json | sed -n '/^{/,$p' |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["jobs"][0]["read"]["bw_bytes"]/1e9)'
}

# fio_best DIR [fio options]: "BEST FOUR_K HUGE" GB/s (HUGE 0 when not run).
fio_best() {
  local f4 fh=0
  f4=$(fio_rate "$@")
  [ "$FIO_HUGE" = yes ] && fh=$(fio_rate "$@" --iomem=shmhuge || echo 0)
  awk -v a="$f4" -v b="$fh" 'BEGIN {print (a > b ? a : b), a, b}'
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
