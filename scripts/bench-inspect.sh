#!/usr/bin/env bash
# scripts/bench-inspect.sh: how fast `handles PID` reads a big handle table.
#
# Starts a process holding N descriptors (one third each pipes, AF_UNIX
# socketpairs and regular files; see scripts/bench/hold_fds.c) for several
# sizes N up to what the hard RLIMIT_NOFILE allows, and times, side by side
# in one run and interleaved run by run:
#
#   ls -l /proc/PID/fd           the readlink floor
#   lsof -n -P +E -p PID         which also resolves unix socket peers
#   handles PID                  koids, rkoids and rights resolved
#   handles -l PID               the long view
#   handles --json PID           the JSON view
#
# Output goes to /dev/null. Wall time is the median (and min) of several
# runs after one warm-up; peak RSS is /usr/bin/time's %M for the warm-up.
# The table shows each command's ratio to `ls -l` and to lsof, and the cost
# per fd so that linear growth is visible. The targets (issue 2, "Speed"):
# `handles PID` within 1.5x of `ls -l`, faster than lsof, under 64 MiB,
# growing linearly with the fd count.
#
# With --machine, the whole machine instead (issue 19): K processes holding
# N fds each are started next to whatever the machine runs, and
#
#   lsof -n -P                   every process's files
#   handles --all                one row per process, counts by type
#   handles --all --json
#   handles graph --all          the objects shared between processes
#   handles graph --all --json
#
# are timed the same way, with each one's ratio to lsof.
#
# This is a benchmark, not a test: nothing runs it automatically.
#
# Usage: scripts/bench-inspect.sh [-r RUNS] [-s "1000 5000 10000 max"] [--bin PATH] [--profile]
#        scripts/bench-inspect.sh --machine [K] [-s N] [-r RUNS] [--bin PATH]
set -euo pipefail
export LC_ALL=C

usage() {
    cat <<'EOF'
Usage: scripts/bench-inspect.sh [OPTIONS]

Benchmarks `handles PID` against `ls -l /proc/PID/fd` and `lsof -n -P +E -p PID`
on a process holding many pipes, socketpairs and files.

Options:
  -r, --runs N        timed runs per command and size, after one warm-up (default 7)
  -s, --sizes LIST    fd counts to hold, space or comma separated; "max" is as many as
                      the hard RLIMIT_NOFILE allows (default "1000 5000 10000 max")
      --bin PATH      the handles binary (default target/release/handles, built with
                      `cargo build --release -q` when missing)
      --rebuild       run `cargo build --release -q` even if the binary exists
      --profile       also profile the largest size: `strace -c -f` syscall counts per fd
                      for ls -l, lsof and handles, and `perf record` hot spots when perf works
      --machine [K]   the whole machine: start K holders (default 20) of N fds each (the
                      first -s size, default 500) and time lsof -n -P against handles --all
                      and handles graph --all (with --json each); also prints strace -c
                      syscall counts per fd of each
  -h, --help          this help

Environment: BENCH_RUNS, BENCH_SIZES (same as the options), BENCH_FILE_DIR (where the
regular files are created; default a directory in /dev/shm, else in $TMPDIR).
EOF
}

die() {
    echo "bench-inspect: error: $*" >&2
    exit 1
}
warn() { echo "bench-inspect: warning: $*" >&2; }
note() { echo "bench-inspect: $*" >&2; }

RUNS=${BENCH_RUNS:-7}
SIZES=${BENCH_SIZES:-"1000 5000 10000 max"}
BIN=""
REBUILD=0
PROFILE=0
MACHINE=0
HOLDERS=20
while [ $# -gt 0 ]; do
    case $1 in
        -r | --runs) [ $# -ge 2 ] || die "$1 needs a value"; RUNS=$2; shift 2 ;;
        -s | --sizes) [ $# -ge 2 ] || die "$1 needs a value"; SIZES=$2; shift 2 ;;
        --bin) [ $# -ge 2 ] || die "$1 needs a value"; BIN=$2; shift 2 ;;
        --rebuild) REBUILD=1; shift ;;
        --profile) PROFILE=1; shift ;;
        --machine)
            MACHINE=1
            shift
            if [ $# -gt 0 ] && [[ $1 =~ ^[1-9][0-9]*$ ]]; then HOLDERS=$1; shift; fi
            [ -n "${BENCH_SIZES:-}" ] || SIZES=500
            ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument '$1'" ;;
    esac
done
[[ $RUNS =~ ^[1-9][0-9]*$ ]] || die "--runs wants a positive number, not '$RUNS'"

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

# ---- tools ------------------------------------------------------------------
[ "$(uname -s)" = Linux ] || die "this benchmark reads /proc and needs Linux"
CC=${CC:-}
if [ -z "$CC" ]; then
    for c in cc gcc clang; do
        if command -v "$c" >/dev/null 2>&1; then CC=$c; break; fi
    done
fi
[ -n "$CC" ] || die "no C compiler found for the fd holder (apt-get install gcc libc6-dev)"
[ -x /usr/bin/time ] || die "/usr/bin/time is missing, it measures peak RSS (apt-get install time)"
HAVE_LSOF=1
if ! command -v lsof >/dev/null 2>&1; then
    HAVE_LSOF=0
    warn "lsof not found: its column stays empty (install it: apt-get install lsof)"
fi
if [ "$PROFILE" = 1 ] && ! command -v strace >/dev/null 2>&1; then
    die "--profile needs strace (apt-get install strace)"
fi

if [ -z "$BIN" ]; then
    BIN=$ROOT/target/release/handles
    if [ "$REBUILD" = 1 ] || [ ! -x "$BIN" ]; then
        note "building the release binary (cargo build --release -q; may wait on the target dir's file lock)"
        cargo build --release --workspace -q || die "cargo build --release failed"
    fi
fi
[ -x "$BIN" ] || die "no handles binary at $BIN"

# ---- limits -----------------------------------------------------------------
hard=$(ulimit -Hn)
if [ "$hard" = unlimited ]; then
    hard=$(cat /proc/sys/fs/nr_open)
fi
ulimit -n "$hard" || die "could not raise the soft RLIMIT_NOFILE to the hard limit $hard"
limit=$(ulimit -n)
MAXN=$((limit - 3)) # 0, 1, 2 are the holder's stdio
[ "$MAXN" -ge 1 ] || die "RLIMIT_NOFILE $limit leaves no room for fds"

sizes=()
for s in ${SIZES//,/ }; do
    if [ "$s" = max ]; then
        s=$MAXN
    elif ! [[ $s =~ ^[1-9][0-9]*$ ]]; then
        die "a size is a positive number or 'max', not '$s'"
    elif [ "$s" -gt "$MAXN" ]; then
        warn "skipping $s fds: only $MAXN fit under RLIMIT_NOFILE $limit (hard limit; raising it needs CAP_SYS_RESOURCE)"
        continue
    fi
    sizes+=("$s")
done
[ ${#sizes[@]} -gt 0 ] || die "no size left to measure"
mapfile -t sizes < <(printf '%s\n' "${sizes[@]}" | sort -n -u)

# ---- temp dir, holder, cleanup ------------------------------------------------
TMP=$(mktemp -d "${TMPDIR:-/tmp}/bench-inspect.XXXXXX")
if [ -n "${BENCH_FILE_DIR:-}" ]; then
    FILES=$(mktemp -d "$BENCH_FILE_DIR/bench-inspect-files.XXXXXX")
elif [ -d /dev/shm ] && [ -w /dev/shm ]; then
    # tmpfs: creating ~7,000 files on a disk file system shared with
    # concurrent builds can take seconds; the tools' cost per file fd is the same.
    FILES=$(mktemp -d /dev/shm/bench-inspect-files.XXXXXX)
else
    FILES=$TMP/files
    mkdir "$FILES"
fi
holder_pid=""

stop_holder() {
    if [ -n "$holder_pid" ]; then
        kill "$holder_pid" 2>/dev/null || true
        wait "$holder_pid" 2>/dev/null || true
        holder_pid=""
    fi
    rm -rf "${FILES:?}"/n* 2>/dev/null || true
}
machine_pids=()
cleanup() {
    stop_holder
    for p in "${machine_pids[@]}"; do kill "$p" 2>/dev/null || true; done
    rm -rf "$TMP" "$FILES"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM HUP

# A private copy: others may rebuild target/release while this runs, and
# every figure must come from one binary.
cp "$BIN" "$TMP/handles" || die "could not copy $BIN"
BIN_SHOWN=$BIN
BIN=$TMP/handles

"$CC" -O2 -Wall -o "$TMP/hold_fds" "$ROOT/scripts/bench/hold_fds.c" ||
    die "compiling scripts/bench/hold_fds.c failed"

# start_holder N: starts the holder and waits until it holds N fds.
start_holder() {
    local n=$1 dir=$FILES/n$1 line i
    mkdir "$dir"
    : >"$TMP/ready"
    "$TMP/hold_fds" "$n" "$dir" <"/dev/null" >"$TMP/ready" 2>"$TMP/holder.err" &
    holder_pid=$!
    for ((i = 0; i < 12000; i++)); do # up to 120 s
        if IFS= read -r line <"$TMP/ready" && [ -n "$line" ]; then
            break
        fi
        if ! kill -0 "$holder_pid" 2>/dev/null; then
            holder_pid=""
            die "the fd holder died while opening $n fds: $(cat "$TMP/holder.err")"
        fi
        sleep 0.01
    done
    [ -n "${line:-}" ] || die "the fd holder did not get $n fds open within 120 s"
    read -r HOLDER_PID HELD PIPES SOCKS FILEFDS <<<"$line"
    [ "$HOLDER_PID" = "$holder_pid" ] || die "the holder reported pid $HOLDER_PID, expected $holder_pid"
    TOTAL=$(find "/proc/$holder_pid/fd" -mindepth 1 -maxdepth 1 | wc -l)
    [ "$TOTAL" -eq $((n + 3)) ] ||
        die "the holder has $TOTAL fds open, expected $((n + 3))"
}

loadavg() { cut -d' ' -f1-3 /proc/loadavg; }

# ---- the whole machine (--machine) ---------------------------------------------
if [ "$MACHINE" = 1 ]; then
    [ "$HAVE_LSOF" = 1 ] || die "--machine compares with lsof, which is not installed (apt-get install lsof)"
    n=${sizes[0]}
    note "starting $HOLDERS holders of $n fds each ..."
    for ((h = 0; h < HOLDERS; h++)); do
        mkdir "$FILES/m$h"
        "$TMP/hold_fds" "$n" "$FILES/m$h" </dev/null >"$TMP/ready.$h" 2>"$TMP/holder.$h.err" &
        machine_pids+=($!)
    done
    for ((h = 0; h < HOLDERS; h++)); do
        for ((i = 0; i < 12000; i++)); do
            [ -s "$TMP/ready.$h" ] && break
            kill -0 "${machine_pids[$h]}" 2>/dev/null || die "holder $h died: $(cat "$TMP/holder.$h.err")"
            sleep 0.01
        done
        [ -s "$TMP/ready.$h" ] || die "holder $h did not get its fds open within 120 s"
    done
    mnames=("lsof -n -P" "handles --all" "handles --all --json" "handles graph --all" "handles graph --all --json")
    run_machine() {
        local t=$1
        shift
        case $t in
            0) "$@" lsof -n -P ;;
            1) "$@" "$BIN" --all ;;
            2) "$@" "$BIN" --all --json ;;
            3) "$@" "$BIN" graph --all ;;
            4) "$@" "$BIN" graph --all --json ;;
        esac
    }
    procs=$("$BIN" --all --json | awk -F'[:,]' '/"processes":/ && !/\[/ { gsub(/ /, "", $2); print $2 }' | tail -n 1)
    fds=$("$BIN" --all --json | awk -F'[:,]' '/"handles":/ && !/\[/ { gsub(/ /, "", $2); print $2 }' | tail -n 1)
    echo "bench-inspect --machine: $(uname -r), $(nproc) CPUs, $RUNS timed runs after 1 warm-up"
    echo "bench-inspect --machine: $HOLDERS holders x $n fds (one third each pipes, socketpair ends, files) + the machine's own processes"
    echo "bench-inspect --machine: handles --all sees $procs readable processes holding $fds handles"
    echo "bench-inspect --machine: load average at start: $(loadavg)"
    declare -A mt=() mr=()
    for t in 0 1 2 3 4; do
        run_machine "$t" /usr/bin/time -f %M -o "$TMP/rss" >/dev/null 2>"$TMP/err" ||
            warn "'${mnames[$t]}' failed: $(head -n 2 "$TMP/err")"
        mr[$t]=$(tail -n 1 "$TMP/rss")
        mt[$t]=""
    done
    for ((r = 0; r < RUNS; r++)); do
        for t in 0 1 2 3 4; do
            t0=$EPOCHREALTIME
            run_machine "$t" >/dev/null 2>&1 || true
            t1=$EPOCHREALTIME
            mt[$t]+=" $((${t1/./} - ${t0/./}))"
        done
    done
    echo
    printf "%-28s %10s %9s %8s %9s %8s\n" command "median ms" "min ms" "x lsof" "peak MiB" "us/fd"
    lsof_med=0
    for t in 0 1 2 3 4; do
        # shellcheck disable=SC2086
        sorted=$(printf '%s\n' ${mt[$t]} | sort -n)
        med=$(sed -n "$(((RUNS + 1) / 2))p" <<<"$sorted")
        min=$(head -n 1 <<<"$sorted")
        [ "$t" = 0 ] && lsof_med=$med
        awk -v name="${mnames[$t]}" -v med="$med" -v min="$min" -v l="$lsof_med" -v rss="${mr[$t]}" -v fds="$fds" \
            'BEGIN { printf "%-28s %10.1f %9.1f %8.2f %9.1f %8.2f\n", name, med / 1000, min / 1000, med / l, rss / 1024, med / fds }'
    done
    if command -v strace >/dev/null 2>&1; then
        echo
        echo "Syscalls per handle (strace -c -f; all processes' handles: $fds):"
        for t in 0 1 3; do
            run_machine "$t" strace -c -f -o "$TMP/strace.m$t" >/dev/null 2>&1 || true
            awk -v name="${mnames[$t]}" -v fds="$fds" '
                $NF == "total" { total = $4 }
                $1 ~ /^[0-9.]+$/ && $NF != "total" && NF >= 5 { calls[$NF] = $4 }
                END {
                    printf "  %-22s %6.2f per handle  (", name, total / fds
                    m = 0
                    while (m < 5) {
                        best = ""; bc = -1
                        for (s in calls) if (calls[s] > bc) { bc = calls[s]; best = s }
                        if (best == "" || bc < fds / 20) break
                        printf "%s%s %.2f", m ? ", " : "", best, bc / fds
                        delete calls[best]; m++
                    }
                    print ")"
                }' "$TMP/strace.m$t"
        done
    fi
    echo
    echo "load average at end: $(loadavg)"
    exit 0
fi

# ---- the commands ---------------------------------------------------------------
names=("ls -l" "lsof +E" "handles" "handles -l" "handles --json")
tools=(0 1 2 3 4)
[ "$HAVE_LSOF" = 1 ] || tools=(0 2 3 4)

# run_tool INDEX PID [WRAPPER...]: runs command INDEX on PID, under WRAPPER
# (/usr/bin/time, strace) when given.
run_tool() {
    local t=$1 p=$2
    shift 2
    case $t in
        0) "$@" ls -l "/proc/$p/fd" ;;
        1) "$@" lsof -n -P +E -p "$p" ;;
        2) "$@" "$BIN" "$p" ;;
        3) "$@" "$BIN" -l "$p" ;;
        4) "$@" "$BIN" --json "$p" ;;
    esac
}


ncpu=$(nproc 2>/dev/null || echo 1)
load_start=$(loadavg)
echo "bench-inspect: $(uname -r), $ncpu CPUs, RLIMIT_NOFILE $limit, $RUNS timed runs after 1 warm-up"
echo "bench-inspect: handles binary $BIN_SHOWN (built $(date -r "$BIN_SHOWN" '+%F %T'), tree at $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown))"
echo "bench-inspect: load average at start: $load_start"
if awk -v l="${load_start%% *}" -v c="$ncpu" 'BEGIN { exit !(l > 0.5 * c) }'; then
    warn "the 1-minute load average ${load_start%% *} is high for $ncpu CPUs: timings will be noisy; re-run when the machine is quieter"
fi

RESULTS=$TMP/results # N total tool median_us min_us rss_kb load1 status
: >"$RESULTS"

for n in "${sizes[@]}"; do
    note "holding $n fds ..."
    start_holder "$n"
    pid=$holder_pid

    # Sanity: handles sees every fd, and one warm-up run per command that
    # also gives its peak RSS.
    footer=$("$BIN" "$pid" | tail -n 1) || die "handles $pid failed"
    [ "$footer" = "$TOTAL handles" ] ||
        die "handles $pid ends with '$footer', expected '$TOTAL handles'"
    declare -A rss=() status=() times=()
    for t in "${tools[@]}"; do
        rc=0
        run_tool "$t" "$pid" /usr/bin/time -f %M -o "$TMP/rss" >/dev/null 2>"$TMP/err" || rc=$?
        rss[$t]=$(tail -n 1 "$TMP/rss")
        status[$t]=$rc
        if [ "$rc" != 0 ]; then
            warn "'${names[$t]}' exited with status $rc on $TOTAL fds: $(head -n 3 "$TMP/err")"
        fi
        times[$t]=""
    done

    load_n=$(loadavg)
    for ((r = 0; r < RUNS; r++)); do
        for t in "${tools[@]}"; do
            t0=$EPOCHREALTIME
            run_tool "$t" "$pid" >/dev/null 2>&1 || true
            t1=$EPOCHREALTIME
            times[$t]+=" $((${t1/./} - ${t0/./}))"
        done
    done

    for t in "${tools[@]}"; do
        # shellcheck disable=SC2086
        sorted=$(printf '%s\n' ${times[$t]} | sort -n)
        med=$(sed -n "$(((RUNS + 1) / 2))p" <<<"$sorted")
        min=$(head -n 1 <<<"$sorted")
        echo "$n $TOTAL $t $med $min ${rss[$t]} ${load_n%% *} ${status[$t]}" >>"$RESULTS"
    done

    if [ "$PROFILE" = 1 ] && [ "$n" = "${sizes[-1]}" ]; then
        PROFILE_PID=$pid
        PROFILE_TOTAL=$TOTAL
        break # keep the holder for the profile below
    fi
    stop_holder
done
load_end=$(loadavg)

# ---- the table -------------------------------------------------------------------
echo
echo "fds held: pipes $PIPES, socketpair ends $SOCKS, regular files $FILEFDS at the largest size (+3 stdio)"
echo "times: wall clock, median and min of $RUNS interleaved runs, output to /dev/null, LC_ALL=C"
echo "x ls -l / x lsof: ratios of medians; us/fd: median / fds, start-up included (the slope below excludes it)"
echo
awk -v names="$(printf '%s|' "${names[@]}")" '
BEGIN {
    split(names, nm, "|")
    printf "%7s  %-15s %10s %9s %8s %8s %9s %8s %6s\n", "fds", "command", "median ms", "min ms", "x ls -l", "x lsof", "peak MiB", "us/fd", "load1"
}
{
    n = $1; tot[n] = $2; t = $3 + 1
    med[n, t] = $4; mn[n, t] = $5; rss[n, t] = $6; ld[n] = $7
    if (!(n in seen)) { seen[n] = 1; order[++k] = n }
    has[t] = 1
}
END {
    for (i = 1; i <= k; i++) {
        n = order[i]
        for (t = 1; t <= 5; t++) {
            if (!has[t] || !((n, t) in med)) continue
            xls = med[n, 1] > 0 ? sprintf("%.2f", med[n, t] / med[n, 1]) : "-"
            xlsof = ((n, 2) in med) && med[n, 2] > 0 ? sprintf("%.2f", med[n, t] / med[n, 2]) : "-"
            printf "%7d  %-15s %10.1f %9.1f %8s %8s %9.1f %8.2f %6s\n", tot[n], nm[t], med[n, t] / 1000, mn[n, t] / 1000, xls, xlsof, rss[n, t] / 1024, med[n, t] / tot[n], ld[n]
        }
        if (i < k) print ""
    }
    # Linearity: the slope between the smallest and the largest size (cost
    # per extra fd, without the fixed start-up cost) and the growth exponent
    # log(t2/t1)/log(n2/n1): 1 is linear, below 1 means a fixed cost still
    # dominates the small size, above 1 superlinear.
    if (k >= 2) {
        a = order[1]; b = order[k]
        printf "\nGrowth from %d to %d fds:\n", tot[a], tot[b]
        printf "  %-15s %14s %10s\n", "command", "slope us/fd", "exponent"
        for (t = 1; t <= 5; t++) {
            if (!has[t]) continue
            slope = (med[b, t] - med[a, t]) / (tot[b] - tot[a])
            ex = (med[a, t] > 0 && med[b, t] > 0) ? log(med[b, t] / med[a, t]) / log(tot[b] / tot[a]) : 0
            printf "  %-15s %14.2f %10.2f\n", nm[t], slope, ex
            if (t == 3) { hslope = slope; hex = ex }
        }
    }
    # The targets, for `handles PID` at the largest size.
    b = order[k]
    printf "\nTargets at %d fds (handles PID):\n", tot[b]
    r = med[b, 3] / med[b, 1]
    printf "  %-23s %-16s %s\n", "within 1.5x of ls -l:", sprintf("%.2fx", r), r <= 1.5 ? "met" : "MISSED"
    if ((b, 2) in med) {
        r = med[b, 3] / med[b, 2]
        printf "  %-23s %-16s %s\n", "faster than lsof +E:", sprintf("%.2fx", r), r < 1 ? "met" : "MISSED"
    } else {
        printf "  faster than lsof +E:   not measured (no lsof)\n"
    }
    if (k >= 2)
        printf "  %-23s %-16s %s\n", "linear growth:", sprintf("exponent %.2f", hex), hex <= 1.15 ? "met" : "MISSED"
    printf "  %-23s %-16s %s\n", "peak RSS under 64 MiB:", sprintf("%.1f MiB", rss[b, 3] / 1024), rss[b, 3] < 64 * 1024 ? "met" : "MISSED"
    for (t = 4; t <= 5; t++)
        if (has[t])
            printf "    (%s: %.1f MiB, %s)\n", nm[t], rss[b, t] / 1024, rss[b, t] < 64 * 1024 ? "under 64 MiB" : "OVER 64 MiB"
    # Memory per fd, to extrapolate to a 100,000-fd limit.
    if (k >= 2) {
        a = order[1]
        for (t = 3; t <= 5; t++)
            if (has[t]) {
                kb = (rss[b, t] - rss[a, t]) / (tot[b] - tot[a])
                printf "    %-15s %.2f KiB per fd: about %.0f MiB at 100,000 fds\n", nm[t], kb, (rss[a, t] + kb * (100000 - tot[a])) / 1024
            }
    }
}' "$RESULTS"

echo
echo "load average: start $load_start, end $load_end ($ncpu CPUs)"
if awk -v l="${load_end%% *}" -v c="$ncpu" 'BEGIN { exit !(l > 0.5 * c) }'; then
    warn "the load average was high during the run; compare ratios rather than absolute times, or re-run"
fi

# ---- profile -------------------------------------------------------------------
if [ "$PROFILE" = 1 ]; then
    pid=$PROFILE_PID
    echo
    echo "Syscall profile at $PROFILE_TOTAL fds (strace -c -f; calls per fd, top syscalls):"
    for t in "${tools[@]}"; do
        run_tool "$t" "$pid" strace -c -f -o "$TMP/strace.$t" >/dev/null 2>&1 || true
        awk -v name="${names[$t]}" -v fds="$PROFILE_TOTAL" '
            $NF == "total" { total = $4 }
            $1 ~ /^[0-9.]+$/ && $NF != "total" && NF >= 5 { calls[$NF] = $4; secs[$NF] = $2 }
            END {
                printf "  %-15s %8d calls  %6.2f per fd  (", name, total, total / fds
                m = 0
                while (m < 6) {
                    best = ""; bc = -1
                    for (s in calls) if (calls[s] > bc) { bc = calls[s]; best = s }
                    if (best == "" || bc < fds / 20) break
                    printf "%s%s %.2f", m ? ", " : "", best, bc / fds
                    delete calls[best]; m++
                }
                print ")"
            }' "$TMP/strace.$t"
    done
    echo "  (start-up included: a few dozen calls per command; full tables: strace -c -f <command>)"

    if command -v perf >/dev/null 2>&1 && perf stat -e task-clock -o /dev/null true >/dev/null 2>&1; then
        echo
        echo "perf: where 'handles $pid' spends its time (top symbols, kernel and user):"
        if perf record -q -F 20000 -g -o "$TMP/perf.data" "$BIN" "$pid" >/dev/null 2>"$TMP/perf.err"; then
            echo "  by object:"
            perf report -q -i "$TMP/perf.data" --no-children --sort dso --stdio -g none 2>/dev/null |
                grep -v '^$' | head -n 6 | sed 's/^/  /' || true
            echo "  by syscall (inclusive: the kernel work behind each call):"
            perf report -q -i "$TMP/perf.data" --children --sort sym --stdio -g none 2>/dev/null |
                awk '$3 == "[k]" && $4 ~ /^(__x64_sys_|__do_sys_|ksys_)/ {
                         name = $4; sub(/^(__x64_sys_|__do_sys_|ksys_)/, "", name)
                         if (!(name in seen)) { seen[name] = 1; printf "    %8s  %s\n", $1, name }
                     }' | head -n 8 || true
            echo "  user space, top symbols (self):"
            perf report -q -i "$TMP/perf.data" --no-children --sort dso,sym --stdio -g none 2>/dev/null |
                grep -F '[.]' | head -n 10 | sed 's/^/  /' || true
        else
            warn "perf record failed: $(head -n 2 "$TMP/perf.err")"
        fi
    fi
fi
