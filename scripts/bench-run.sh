#!/usr/bin/env bash
# Benchmark of `handles run` against native runs and its peers, side by side
# in one run (never a timed test). Usage: scripts/bench-run.sh [ITERATIONS]
#
# The workload is scripts/bench/fdloop.c: per iteration, open/read/close of a
# file and pipe/write/read/close/close (8 fd syscalls).
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-20000}
RUNS=${RUNS:-3}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

cargo build --release -q
H=$PWD/target/release/handles
cc -O2 -o "$tmp/fdloop" scripts/bench/fdloop.c

# median wall time in seconds of RUNS runs of "$@"
median() {
    local times=()
    for _ in $(seq "$RUNS"); do
        local t0 t1
        t0=$(date +%s.%N)
        "$@" >/dev/null 2>&1 || true
        t1=$(date +%s.%N)
        times+=("$(echo "$t1 - $t0" | bc -l)")
    done
    printf '%s\n' "${times[@]}" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'
}

row() {
    local name=$1; shift
    local t
    t=$(median "$@")
    printf '%-44s %8.3f s %8.1fx native\n' "$name" "$t" "$(echo "$t / $native" | bc -l)"
}

echo "fdloop, $N iterations ($((N * 8)) fd syscalls), median of $RUNS; load: $(cut -d' ' -f1-3 /proc/loadavg)"
native=$(median "$tmp/fdloop" "$N")
printf '%-44s %8.3f s %8.1fx native\n' "native" "$native" 1
row "handles run (check all, stacks 32)" "$H" run -- "$tmp/fdloop" "$N"
row "handles run --stack-depth 0" "$H" run --stack-depth 0 -- "$tmp/fdloop" "$N"
row "handles run --check lifecycle" "$H" run --check lifecycle -- "$tmp/fdloop" "$N"
row "handles run --check lifecycle --stack-depth 0" "$H" run --check lifecycle --stack-depth 0 -- "$tmp/fdloop" "$N"
row "handles run --quarantine 0 --stack-depth 0" "$H" run --quarantine 0 --stack-depth 0 -- "$tmp/fdloop" "$N"
row "handles run --leak-check" "$H" run --leak-check -- "$tmp/fdloop" "$N"
row "handles run --shim" "$H" run --shim -- "$tmp/fdloop" "$N"
SHIM=$(ls -t target/release/build/handles-*/out/libhandles_shim.so 2>/dev/null | head -1)
if [ -n "$SHIM" ]; then
    row "LD_PRELOAD shim alone" env LD_PRELOAD="$SHIM" "$tmp/fdloop" "$N"
fi
if command -v strace >/dev/null; then
    row "strace -f --seccomp-bpf -e trace=%desc" strace -f --seccomp-bpf -e trace=%desc -o /dev/null "$tmp/fdloop" "$N"
fi
if command -v valgrind >/dev/null; then
    row "valgrind --track-fds=yes" valgrind -q --track-fds=yes "$tmp/fdloop" "$N"
fi

# A real multi-process workload: a shell spawning short-lived processes
# that open, read and pipe files (leak check on and off).
WORK='for i in $(seq 150); do cat /etc/hostname /etc/passwd | wc -l >/dev/null; done'
echo
echo "multi-process workload (bash, 150 x cat | wc), median of $RUNS"
native=$(median bash -c "$WORK")
printf '%-44s %8.3f s %8.1fx native\n' "native" "$native" 1
row "handles run" "$H" run -- bash -c "$WORK"
row "handles run --leak-check" "$H" run --leak-check -- bash -c "$WORK"
row "handles run --shim" "$H" run --shim -- bash -c "$WORK"
row "handles run --shim --leak-check" "$H" run --shim --leak-check -- bash -c "$WORK"
