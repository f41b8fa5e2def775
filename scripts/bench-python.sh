#!/usr/bin/env bash
# Benchmark (never a timed test) of Python programs under handles: a
# CPython open/read/close loop (scripts/bench/pyloop.py) natively, under
# `handles run` (default: the shim, which records Python frames with every
# creation and close), and what recording the Python frames costs
# (HANDLES_PYTHON_FRAMES=0 turns it off in the shim). Rows are measured in
# interleaved rounds (scripts/bench/rounds.sh); medians and ratios.
#
# Usage: scripts/bench-python.sh [ITERATIONS] [PYTHON]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-50000}
# The interpreter itself: a pyenv `python3` is a bash script that runs
# pyenv, several processes before the interpreter starts, and what this
# measures is the loop, not a wrapper's process start-ups (those are
# scripts/bench-run.sh's process-heavy rows).
PY=${2:-$(python3 -c 'import sys; print(sys.executable)')}
RUNS=${RUNS:-7}
LOOP=$PWD/scripts/bench/pyloop.py
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# --workspace: the CLI embeds the shim, which a plain build leaves stale.
cargo build --release --workspace -q
H=$PWD/target/release/handles
SHIM=$(ls -t target/release/build/handles-*/out/libhandles_shim.so 2>/dev/null | head -1)

# shellcheck source=scripts/bench/rounds.sh
. scripts/bench/rounds.sh

# Prints each row's median wall and cpu time and their ratios to the
# first row (native), then empties the table. `handles run`'s rows have
# no cpu figure: the front process that /usr/bin/time waits for returns
# the program's status without reaping the supervisor (the job ends as a
# shell's would), so its rusage holds neither's time.
table() {
    local n=${#NAMES[@]} i w c w0 c0
    rounds
    w0=$(median "${WALLS[0]}") c0=$(median "${CPUS[0]}")
    for ((i = 0; i < n; i++)); do
        w=$(median "${WALLS[i]}") c=$(median "${CPUS[i]}")
        printf '%-58s wall %7.3f s %5.2fx' "${NAMES[i]}" "$w" "$(echo "$w / $w0" | bc -l)"
        case ${NAMES[i]} in
        "handles run"*) echo ;;
        *) printf '   cpu %7.3f s %5.2fx\n' "$c" "$(echo "$c / $c0" | bc -l)" ;;
        esac
    done
    NAMES=() CMDS=()
}

echo "$PY, $N iterations, median of $RUNS interleaved rounds; load: $(cut -d' ' -f1-3 /proc/loadavg)"
for kind in os open; do
    echo "-- $kind"
    row "native" "$PY" "$LOOP" "$N" "$kind"
    row "handles run" "$H" run -- "$PY" "$LOOP" "$N" "$kind"
    row "handles run, HANDLES_PYTHON_FRAMES=0" env HANDLES_PYTHON_FRAMES=0 "$H" run -- "$PY" "$LOOP" "$N" "$kind"
    if [ -n "$SHIM" ]; then
        row "LD_PRELOAD shim alone" env LD_PRELOAD="$SHIM" "$PY" "$LOOP" "$N" "$kind"
        row "LD_PRELOAD shim alone, HANDLES_PYTHON_FRAMES=0" env LD_PRELOAD="$SHIM" HANDLES_PYTHON_FRAMES=0 "$PY" "$LOOP" "$N" "$kind"
    fi
    if [ "$kind" = os ]; then
        row "handles run --no-shim (every call stops)" "$H" run --no-shim -- "$PY" "$LOOP" "$N" "$kind"
        if command -v strace >/dev/null; then
            row "strace -f --seccomp-bpf -e trace=%desc" strace -f --seccomp-bpf -e trace=%desc -o /dev/null "$PY" "$LOOP" "$N" "$kind"
        fi
    fi
    table
done
