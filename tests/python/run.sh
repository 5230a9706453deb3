#!/bin/bash
# Runs one Python client test (tests/python/test_*.py) with Debian's python3
# and its python3-torch (or $QV_TORCH_PYTHON). Exit 0 pass, 1 fail, 77 skipped.
set -u
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
test=${1:?usage: run.sh TEST.py}
export QV_SRC=${QV_SRC:-$(cd "$here/../.." && pwd)}
export QUIVER=${QUIVER:-$QV_SRC/build/cli/quiver}
export QUIVERD=${QUIVERD:-$(dirname "$QUIVER")/quiverd}
export QUIVER_LIB=${QUIVER_LIB:-$(dirname "$QUIVER")/libquiver.so}
export QV_SCRATCH=${QV_SCRATCH:-/tmp/qv-scratch-$(basename "$test" .py)}
PY=${QV_TORCH_PYTHON:-/usr/bin/python3}
unset QUIVER_ROOT

for f in "$QUIVER" "$QUIVERD" "$QUIVER_LIB"; do
	[ -e "$f" ] || { echo "FAIL: $f is missing (build first)" >&2; exit 1; }
done
if ! "$PY" -c 'import torch' 2>/dev/null; then
	echo "SKIP: $PY cannot import torch (apt-get install python3-torch python3-numpy)"
	exit 77
fi
exec "$PY" "$here/$test"
