# Disk full during publish: the store root lives on a 24 MB tmpfs; a ~40 MB
# publish must fail cleanly (exit 1, error mentions space), leave the store as
# it was (no temp files, no stray shards) and the store must keep working.
. "$(dirname "$0")/lib.sh"
qv_setup

[ "$(id -u)" -eq 0 ] || skip "needs root to mount a tmpfs"
MNT="$QV_SCRATCH/mnt"
mkdir -p "$MNT"
mount -t tmpfs -o size=24m tmpfs "$MNT" 2>mount.err || skip "cannot mount a tmpfs: $(cat mount.err)"
cleanup() {
	cd /
	umount "$MNT" 2>/dev/null || umount -l "$MNT" 2>/dev/null
}
trap cleanup EXIT
ROOT="$MNT/root"

M=org/small
# the inputs live outside the tmpfs
gen small.safetensors --hidden 256 --layers 2 --vocab 2048       # ~6 MB
gen big.safetensors --hidden 512 --layers 3 --vocab 8192 --seed 9 # ~40 MB
note "small $(stat -c %s small.safetensors) B, big $(stat -c %s big.safetensors) B, tmpfs 24 MiB"

expect_ok q publish $M small.safetensors
expect_ok q verify
BEFORE=$(store_digest)
note "free after the small publish: $(df -B1 --output=avail "$MNT" | tail -1) B"

# the one that does not fit: a new model, and a new version of the old one
for target in org/big $M; do
	run_cmd q publish $target big.safetensors
	[ "$RC" -eq 1 ] || fail "publish of a model larger than the disk: expected exit 1, got $RC"
	err_has 'space|ENOSPC|full'
	soft err_one_line
	note "rejected: $(head -c 300 "$ERR_FILE")"
	tmp_empty
	soft same_store "$BEFORE" "failed publish of $target (disk full)"
done
expect_rc 1 q show org/big

# the store still works
expect_ok q list --json
jcheck "$OUT_FILE" '[m["model"] for m in d["models"]] == ["org/small"]' "only org/small listed"
expect_ok q list $M --json
jcheck "$OUT_FILE" 'len(d["versions"]) == 1' "no half-published version"
expect_ok q verify
expect_ok q export $M ex
cmp small.safetensors ex/small.safetensors || fail "export after ENOSPC differs"
expect_ok q gc --dry-run --json
jcheck "$OUT_FILE" 'd["shards"] == 0 and d["temp_files"] == 0' "gc finds nothing left over by the failed publish"
# and it still accepts a publish that fits
gen small2.safetensors --hidden 256 --layers 2 --vocab 2048 --mutate 0.34
expect_ok q publish $M small2.safetensors
expect_ok q verify
expect_ok q export $M ex2
cmp small2.safetensors ex2/small2.safetensors || fail "export of the post-ENOSPC publish differs"

qv_finish
