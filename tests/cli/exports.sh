# libquiver.so exports the public C API and nothing else: every dynamic
# symbol it defines is a qv_ name declared in include/quiver/, none is a
# module internal (qv__) or a symbol of a library linked into it.
. "$QV_SRC/tests/cli/lib.sh"
qv_setup

LIB=${QV_LIBQUIVER:-$(dirname "$QUIVER")/libquiver.so}
[ -f "$LIB" ] || fail "no $LIB"
command -v nm >/dev/null || { echo "SKIP: nm (binutils) is not installed"; exit 77; }
nm -D --defined-only "$LIB" | awk '{print $NF}' | sort -u > "$QV_SCRATCH/exports" ||
	fail "nm cannot read $LIB"
[ -s "$QV_SCRATCH/exports" ] || fail "$LIB exports nothing"
bad=$(grep -v '^qv_' "$QV_SCRATCH/exports" | head -5)
[ -z "$bad" ] || fail "$LIB exports names outside the qv_ API: $bad"
bad=$(grep '^qv__' "$QV_SCRATCH/exports" | head -5)
[ -z "$bad" ] || fail "$LIB exports module internals: $bad"
# every export is declared in a public header, and the API the Python
# client binds is there
cat "$QV_SRC"/include/quiver/*.h > "$QV_SCRATCH/headers"
while read -r sym; do
	grep -qw -- "$sym" "$QV_SCRATCH/headers" || fail "$LIB exports $sym, which no public header declares"
done < "$QV_SCRATCH/exports"
for sym in $(grep -o '"qv_[a-z0-9_]*"' "$QV_SRC/python/quiver/_lib.py" | tr -d '"' | sort -u); do
	grep -qx -- "$sym" "$QV_SCRATCH/exports" || fail "the Python client binds $sym, which $LIB does not export"
done
note "$(wc -l < "$QV_SCRATCH/exports") symbols exported, all public"
qv_finish
