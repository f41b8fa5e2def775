#!/usr/bin/env bash
# Benchmark of the LD_PRELOAD shim alone against native runs, side by side
# in one run (never a timed test). Usage: scripts/bench-shim.sh [ITERATIONS]
#
# The workload is scripts/bench/fdloop.c: per iteration, open/read/close of
# a file and pipe/write/read/close/close (8 fd syscalls, 3 creations, 3
# closes). Target: the shim alone at most 1.1x native.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-100000}
RUNS=${RUNS:-5}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

cargo build --release -q -p handles-shim
SHIM=$PWD/target/release/libhandles_shim.so
cc -O2 -o "$tmp/fdloop" scripts/bench/fdloop.c
cc -O2 -fno-omit-frame-pointer -o "$tmp/fdloop-fp" scripts/bench/fdloop.c
cc -O2 -o "$tmp/tombstones" scripts/bench/tombstones.c

# "wall cpu" medians (seconds) of RUNS runs of "$@"; cpu = user + sys, which
# other load on the machine disturbs less than wall time.
median() {
    local walls=() cpus=()
    for _ in $(seq "$RUNS"); do
        local out
        /usr/bin/time -o "$tmp/time" -f "%e %U %S" "$@" >/dev/null 2>&1 || true
        out=$(tail -1 "$tmp/time")
        walls+=("$(echo "$out" | awk '{print $1}')")
        cpus+=("$(echo "$out" | awk '{print $2 + $3}')")
    done
    local w c
    w=$(printf '%s\n' "${walls[@]}" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
    c=$(printf '%s\n' "${cpus[@]}" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
    echo "$w $c"
}

row() {
    local name=$1; shift
    local t w c
    t=$(median "$@")
    w=${t% *}; c=${t#* }
    printf '%-52s %7.3f s %5.2fx   cpu %7.3f s %5.2fx\n' "$name" "$w" "$(echo "$w / $native_w" | bc -l)" "$c" "$(echo "$c / $native_c" | bc -l)"
}

echo "fdloop, $N iterations ($((N * 8)) fd syscalls), median of $RUNS; load: $(cut -d' ' -f1-3 /proc/loadavg)"
native=$(median "$tmp/fdloop" "$N")
native_w=${native% *}; native_c=${native#* }
printf '%-52s %7.3f s %5.2fx   cpu %7.3f s %5.2fx\n' "native" "$native_w" 1 "$native_c" 1
# The quarantine's kernel work alone (dup3 tombstones, close_range
# releases), no shim code: the floor under the shim rows.
row "kernel floor: tombstones.c, no shim" "$tmp/tombstones" "$N"
row "shim (quarantine 64, fp stacks 16)" env LD_PRELOAD="$SHIM" "$tmp/fdloop" "$N"
row "shim, program built with frame pointers" env LD_PRELOAD="$SHIM" "$tmp/fdloop-fp" "$N"
row "shim HANDLES_STACK_DEPTH=0" env LD_PRELOAD="$SHIM" HANDLES_STACK_DEPTH=0 "$tmp/fdloop" "$N"
row "shim HANDLES_QUARANTINE=0" env LD_PRELOAD="$SHIM" HANDLES_QUARANTINE=0 "$tmp/fdloop" "$N"
row "shim HANDLES_STACKS=unwind (DWARF stacks)" env LD_PRELOAD="$SHIM" HANDLES_STACKS=unwind "$tmp/fdloop" "$N"
row "shim with a cookie (HANDLES_COOKIE, no supervisor)" env LD_PRELOAD="$SHIM" HANDLES_COOKIE=0123456789abcdef "$tmp/fdloop" "$N"
