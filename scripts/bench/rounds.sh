# Shared by scripts/bench-run.sh and scripts/bench-shim.sh (sourced, not
# run): a table of rows measured in interleaved rounds.
#
# Each round runs every row once in turn, so that a drift in the machine's
# speed (these VMs drift by 10 % and more within a minute) falls on all
# rows alike rather than on the rows that happened to run during it.

# Rows: a name and a command line (quoted for eval); the first row is the
# baseline (native).
NAMES=() CMDS=()
row() {
    NAMES+=("$1")
    shift
    CMDS+=("$(printf '%q ' "$@")")
}

# Runs the rows in RUNS rounds. Leaves, per row i, the space-separated
# wall times in WALLS[i] and cpu times (user + sys) in CPUS[i], seconds.
# $tmp must name a scratch directory.
rounds() {
    local n=${#NAMES[@]} i r t0 t1 u sy
    WALLS=() CPUS=()
    for ((r = 0; r < RUNS; r++)); do
        for ((i = 0; i < n; i++)); do
            t0=$(date +%s.%N)
            eval "/usr/bin/time -o $tmp/time -f '%U %S' ${CMDS[i]}" >/dev/null 2>&1 || true
            t1=$(date +%s.%N)
            read -r u sy < <(tail -1 "$tmp/time")
            WALLS[i]+="$(echo "$t1 - $t0" | bc -l) "
            CPUS[i]+="$(echo "$u + $sy" | bc -l) "
        done
    done
}

# The median of a space-separated list of numbers.
median() {
    # shellcheck disable=SC2086 # the list splits on purpose
    printf '%s\n' $1 | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'
}
