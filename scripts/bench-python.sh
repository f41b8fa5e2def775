#!/usr/bin/env bash
# Benchmark (never a timed test) of Python programs under handles: a
# CPython open/read/close loop (scripts/bench/pyloop.py) natively, under
# `handles run` (default: the shim, which records Python frames with every
# creation and close), and what recording the Python frames costs
# (HANDLES_PYTHON_FRAMES=0 turns it off in the shim). Paired runs with
# farm-bench (A and B in turn, ratio taken pair by pair).
#
# Usage: scripts/bench-python.sh [ITERATIONS] [PYTHON]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-50000}
PY=${2:-$(command -v python3)}
RUNS=${RUNS:-7}
LOOP=$PWD/scripts/bench/pyloop.py

cargo build --release --workspace -q
H=$PWD/target/release/handles
SHIM=$(ls -t target/release/libhandles_shim.so 2>/dev/null | head -1)

echo "== $PY, $N iterations; load: $(cut -d' ' -f1-3 /proc/loadavg)"
for kind in os open; do
    echo "-- handles run vs native ($kind)"
    farm-bench -n "$RUNS" --timeout 600 --vs "$PY $LOOP $N $kind" -- "$H" run -- "$PY" "$LOOP" "$N" "$kind"
    echo "-- handles run, Python frames off, vs native ($kind)"
    HANDLES_PYTHON_FRAMES=0 farm-bench -n "$RUNS" --timeout 600 --vs "$PY $LOOP $N $kind" -- "$H" run -- "$PY" "$LOOP" "$N" "$kind"
done
if [ -n "$SHIM" ]; then
    echo "-- the cost of Python frames: LD_PRELOAD shim vs the same with HANDLES_PYTHON_FRAMES=0 (os)"
    farm-bench -n "$RUNS" --timeout 600 \
        --vs "env LD_PRELOAD=$PWD/$SHIM HANDLES_PYTHON_FRAMES=0 $PY $LOOP $N os" \
        -- env LD_PRELOAD="$PWD/$SHIM" "$PY" "$LOOP" "$N" os
fi
echo "-- handles run --no-shim vs native (os; every call stops at the supervisor)"
farm-bench -n "$RUNS" --timeout 900 --vs "$PY $LOOP $N os" -- "$H" run --no-shim -- "$PY" "$LOOP" "$N" os
