#!/usr/bin/env bash
# Benchmark of a `handles attach` window against `strace -f -p` attached
# to the same live process doing the same work (never a timed test).
# Usage: scripts/bench-attach.sh [ITERATIONS]
#
# Each row starts the workload held at a gate, attaches the tool, then
# lets the work run (scripts/bench/attached.sh); the time includes
# attaching and detaching. Workloads: the fd loop (scripts/bench/fdloop.c:
# per iteration open/read/close of a file and pipe/write/read/close/close)
# and the attach tests' server fixture handling requests (each request
# opens and closes a handle; one in three leaks one).
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-20000}
RUNS=${RUNS:-5}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# --workspace: the CLI embeds the shim, which a plain build leaves stale.
cargo build --release --workspace -q
export HANDLES=${CARGO_TARGET_DIR:-$PWD/target}/release/handles
cc -O2 -o "$tmp/fdloop" scripts/bench/fdloop.c
cc -O2 -pthread -o "$tmp/server" tests/fixtures/attach_server.c
REQS=$((N / 4))
printf 'busy %d\nreq %d\n' "$N" "$REQS" >"$tmp/requests"
A=scripts/bench/attached.sh

# shellcheck source=scripts/bench/rounds.sh
. scripts/bench/rounds.sh

table() {
    local n=${#NAMES[@]} i
    local -a med
    rounds
    for ((i = 0; i < n; i++)); do
        med[i]=$(median "${WALLS[i]}")
        printf '%-44s %8.3f s %6.2fx native\n' "${NAMES[i]}" "${med[i]}" "$(echo "${med[i]} / ${med[0]}" | bc -l)"
    done
    NAMES=() CMDS=()
}

echo "fdloop, $N iterations ($((N * 8)) fd syscalls), median of $RUNS interleaved rounds; load: $(cut -d' ' -f1-3 /proc/loadavg)"
row "native (same gate, nothing attached)" "$A" none "$tmp/fdloop" "$N"
row "handles attach (window over the whole run)" "$A" handles "$tmp/fdloop" "$N"
row "handles attach --stack-depth 0" env HANDLES_ARGS="--stack-depth 0" "$A" handles "$tmp/fdloop" "$N"
# The stops alone: no stacks, no tombstones.
row "handles attach --stack-depth 0 --quarantine 0" env HANDLES_ARGS="--stack-depth 0 --quarantine 0" "$A" handles "$tmp/fdloop" "$N"
if command -v strace >/dev/null; then
    row "strace -f -p" "$A" strace "$tmp/fdloop" "$N"
fi
table

echo
echo "server: $N transient requests then $REQS leaking ones, 4 idle threads; median of $RUNS rounds"
row "native (same gate, nothing attached)" "$A" none bash -c "exec $tmp/server 4 < $tmp/requests"
row "handles attach" "$A" handles bash -c "exec $tmp/server 4 < $tmp/requests"
if command -v strace >/dev/null; then
    row "strace -f -p" "$A" strace bash -c "exec $tmp/server 4 < $tmp/requests"
fi
table
