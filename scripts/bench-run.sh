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

# --workspace: the CLI embeds the shim, which a plain build leaves stale.
cargo build --release --workspace -q
H=$PWD/target/release/handles
cc -O2 -o "$tmp/fdloop" scripts/bench/fdloop.c
cc -O2 -o "$tmp/tombstones" scripts/bench/tombstones.c
# The floor rows of the process-heavy tables: a preloaded library with no
# code (what any LD_PRELOAD costs each exec: the loader opens, maps and
# relocates one more object) and a tracer that only resumes its tracees
# (what the ptrace stops alone cost).
cc -O2 -o "$tmp/nulltrace" scripts/bench/nulltrace.c
printf 'int handles_bench_empty;\n' >"$tmp/empty.c"
cc -O2 -shared -fPIC -o "$tmp/empty.so" "$tmp/empty.c"

# shellcheck source=scripts/bench/rounds.sh
. scripts/bench/rounds.sh

# Measures the rows (rounds) and prints each row's median wall time and
# its ratio to the first row; with REF, the rows after the one named REF
# also get their ratio to it. Then empties the table.
table() {
    local ref=${1:-} n=${#NAMES[@]} i refm=""
    local -a med
    rounds
    for ((i = 0; i < n; i++)); do
        med[i]=$(median "${WALLS[i]}")
        printf '%-52s %8.3f s %6.2fx native' "${NAMES[i]}" "${med[i]}" "$(echo "${med[i]} / ${med[0]}" | bc -l)"
        if [ -n "$refm" ]; then
            printf ' %6.1fx %s' "$(echo "${med[i]} / $refm" | bc -l)" "$ref"
        fi
        echo
        if [ "${NAMES[i]}" = "$ref" ]; then
            refm=${med[i]}
        fi
    done
    NAMES=() CMDS=()
}

echo "fdloop, $N iterations ($((N * 8)) fd syscalls), median of $RUNS interleaved rounds; load: $(cut -d' ' -f1-3 /proc/loadavg)"
row "native" "$tmp/fdloop" "$N"
# The quarantine's kernel work alone (scripts/bench/tombstones.c): the
# floor under every row that quarantines.
row "kernel floor: tombstones, no shim code" "$tmp/tombstones" "$N"
row "handles run" "$H" run -- "$tmp/fdloop" "$N"
row "handles run --no-ptrace (shim alone)" "$H" run --no-ptrace -- "$tmp/fdloop" "$N"
row "handles run --no-shim (check all, stacks 32)" "$H" run --no-shim -- "$tmp/fdloop" "$N"
row "handles run --no-shim --check lifecycle" "$H" run --no-shim --check lifecycle -- "$tmp/fdloop" "$N"
row "handles run --no-shim --quarantine 0 --stack-depth 0" "$H" run --no-shim --quarantine 0 --stack-depth 0 -- "$tmp/fdloop" "$N"
row "handles run --leak-check" "$H" run --leak-check -- "$tmp/fdloop" "$N"
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
table "handles run"

# A real fd-heavy program: grep -r opens, reads and closes every file of a
# tree (one process). The loop above is the best case for valgrind (the
# program does nothing but syscalls, which valgrind runs natively); a
# program that also computes on what it reads shows what valgrind's
# instrumentation costs, and that is the comparison users make.
TREE=${TREE:-/usr/include}
if [ -d "$TREE" ]; then
    nfiles=$(find "$TREE" -type f | wc -l)
    GREP="grep -r -c handles_bench_no_match $TREE"
    $GREP >/dev/null 2>&1 || true   # warm the page cache
    echo
    echo "fd-heavy program: $GREP ($nfiles files), median of $RUNS interleaved rounds"
    # shellcheck disable=SC2086 # GREP splits into its words on purpose
    {
        row "native" $GREP
        row "handles run" "$H" run -- $GREP
        row "handles run --no-ptrace (shim alone)" "$H" run --no-ptrace -- $GREP
        if command -v strace >/dev/null; then
            row "strace -f --seccomp-bpf -e trace=%desc" strace -f --seccomp-bpf -e trace=%desc -o /dev/null $GREP
        fi
        if command -v valgrind >/dev/null; then
            row "valgrind --track-fds=yes" valgrind -q --track-fds=yes $GREP
        fi
    }
    table "handles run"
fi

# A real multi-process workload: a shell spawning short-lived processes
# that open, read and pipe files (leak check on and off).
WORK='for i in $(seq 150); do cat /etc/hostname /etc/passwd | wc -l >/dev/null; done'
echo
echo "multi-process workload (bash, 150 x cat | wc), median of $RUNS interleaved rounds"
row "native" bash -c "$WORK"
row "floor: empty LD_PRELOAD library and nulltrace.c" env LD_PRELOAD="$tmp/empty.so" "$tmp/nulltrace" bash -c "$WORK"
row "handles run" "$H" run -- bash -c "$WORK"
row "handles run --leak-check" "$H" run --leak-check -- bash -c "$WORK"
row "handles run --strict" "$H" run --strict -- bash -c "$WORK"
row "handles run --no-shim" "$H" run --no-shim -- bash -c "$WORK"
row "handles run --no-ptrace" "$H" run --no-ptrace -- bash -c "$WORK"
if command -v strace >/dev/null; then
    row "strace -f --seccomp-bpf -e trace=%desc" strace -f --seccomp-bpf -e trace=%desc -o /dev/null bash -c "$WORK"
fi
table "handles run"

# A configure-style script (scripts/bench/configure.sh): what autoconf's
# checks do, many tiny processes (here-docs, $(...) subshells,
# grep/sed/tr/uname/expr), the per-process cost in its purest form.
CONF_ROUNDS=${CONF_ROUNDS:-60}
mkdir -p "$tmp/conf"
CONF="sh $PWD/scripts/bench/configure.sh $CONF_ROUNDS $tmp/conf"
echo
echo "configure-style script ($CONF_ROUNDS rounds, ~$((CONF_ROUNDS * 10)) processes), median of $RUNS interleaved rounds"
# shellcheck disable=SC2086 # CONF splits into its words on purpose
{
    row "native" $CONF
    row "floor: empty LD_PRELOAD library" env LD_PRELOAD="$tmp/empty.so" $CONF
    row "floor: tracer that only resumes (nulltrace.c)" "$tmp/nulltrace" $CONF
    row "floor: both" env LD_PRELOAD="$tmp/empty.so" "$tmp/nulltrace" $CONF
    row "handles run" "$H" run -- $CONF
    row "handles run --leak-check" "$H" run --leak-check -- $CONF
    row "handles run --no-ptrace (shim alone)" "$H" run --no-ptrace -- $CONF
    row "handles run --no-shim" "$H" run --no-shim -- $CONF
    if command -v strace >/dev/null; then
        row "strace -f --seccomp-bpf -e trace=%desc" strace -f --seccomp-bpf -e trace=%desc -o /dev/null $CONF
    fi
}
table "handles run"

# Real workloads: a make -j2 build of a small C project, and a git
# operation sequence.
mkdir -p "$tmp/proj"
for i in $(seq 1 12); do printf 'int f%d(void) { return %d; }\n' "$i" "$i" > "$tmp/proj/f$i.c"; done
printf 'int f1(void);\nint main(void) { return f1() - 1; }\n' > "$tmp/proj/main.c"
printf 'OBJS = main.o %s\nprog: $(OBJS)\n\t$(CC) -o $@ $(OBJS)\n%%.o: %%.c\n\t$(CC) -O2 -c -o $@ $<\n' "$(for i in $(seq 1 12); do printf 'f%d.o ' "$i"; done)" > "$tmp/proj/Makefile"
MAKE_WORK="make -s -C $tmp/proj clean >/dev/null 2>&1; rm -f $tmp/proj/*.o $tmp/proj/prog; make -s -j2 -C $tmp/proj"
GIT_WORK="rm -rf $tmp/g && git init -q $tmp/g && cd $tmp/g && git config user.email a@b && git config user.name a && for i in \$(seq 20); do echo \$i > f\$i; git add f\$i; git commit -qm c\$i; done && git log --oneline | wc -l && git gc -q"
cat > "$tmp/spawn.py" <<'PY'
import json, os, subprocess, sys, tempfile
d = tempfile.mkdtemp()
for i in range(30):
    p = os.path.join(d, f"f{i}.json")
    with open(p, "w") as f:
        json.dump({"i": i, "data": list(range(100))}, f)
    out = subprocess.run(["wc", "-c", p], capture_output=True, check=True).stdout
    assert out.split()[0].isdigit()
print(subprocess.check_output(["ls", d]).count(b"\n"))
PY
# The system python3, not a version manager's shell wrapper (pyenv's
# shim is a bash script that spawns half a dozen processes itself).
PY=${PYTHON:-$(command -v /usr/bin/python3 || command -v python3)}
PY_WORK="$PY $tmp/spawn.py"
for w in "make -j2 (13 files)|$MAKE_WORK" "git (20 commits, log, gc)|$GIT_WORK" "python3 (30 files, 31 subprocesses)|$PY_WORK"; do
    name=${w%%|*} cmd=${w#*|}
    echo
    echo "$name, median of $RUNS interleaved rounds"
    row "native" bash -c "$cmd"
    row "handles run" "$H" run -- bash -c "$cmd"
    row "handles run --leak-check" "$H" run --leak-check -- bash -c "$cmd"
    row "handles run --strict" "$H" run --strict -- bash -c "$cmd"
    row "handles run --no-shim" "$H" run --no-shim -- bash -c "$cmd"
    if command -v strace >/dev/null; then
        row "strace -f --seccomp-bpf -e trace=%desc" strace -f --seccomp-bpf -e trace=%desc -o /dev/null bash -c "$cmd"
    fi
    table "handles run"
done
