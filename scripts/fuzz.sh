#!/usr/bin/env bash
# Coverage-guided fuzzing of every parser of outside input (fuzz/, cargo-fuzz
# and libFuzzer): the policy parser, the suppression parser, the fdinfo and
# link-target parsers, the sock_diag message parser and the shared-table
# reader.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#
# Runs each target (default: all) for SECONDS (default 60) and prints the
# executions per target. Works on a stable toolchain: RUSTC_BOOTSTRAP=1 lets
# stable rustc take the -Z flags cargo-fuzz passes. Installs cargo-fuzz if
# it is missing. The corpus grows in fuzz/corpus/TARGET (not committed),
# seeded from fuzz/seeds/TARGET; crashes land in fuzz/artifacts/TARGET and
# make this script exit 1.
set -euo pipefail
cd "$(dirname "$0")/.."

secs=${1:-60}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(policy suppress fdinfo link sockdiag table)

export RUSTC_BOOTSTRAP=1
export PATH="$HOME/.cargo/bin:$PATH"
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install --locked cargo-fuzz
fi

# AddressSanitizer needs nightly's sanitizer runtime only at link time; it
# works with RUSTC_BOOTSTRAP on the toolchains tried. FUZZ_SANITIZER=none
# turns it off (faster, still coverage-guided; catches panics and aborts).
sanitizer=${FUZZ_SANITIZER:-address}

mkdir -p fuzz/artifacts
if ! cargo fuzz build -O --sanitizer "$sanitizer" >fuzz/artifacts/build.log 2>&1; then
    tail -30 fuzz/artifacts/build.log
    echo "fuzz.sh: cargo fuzz build failed (fuzz/artifacts/build.log)" >&2
    exit 2
fi

status=0
total=0
printf '%-10s %8s %14s %10s %8s %s\n' target seconds executions exec/s corpus result
for t in "${targets[@]}"; do
    mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t"
    log="fuzz/artifacts/$t/last-run.log"
    # -rss_limit_mb: a parser that allocates unboundedly on small input is
    # a finding too. -timeout: one input taking over 10 s is a hang.
    if cargo fuzz run -O --sanitizer "$sanitizer" "$t" "fuzz/corpus/$t" "fuzz/seeds/$t" -- \
        -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        >"$log" 2>&1; then
        result=ok
    else
        result="FAILED (see $log and fuzz/artifacts/$t/)"
        status=1
    fi
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    corpus=$(find "fuzz/corpus/$t" -type f | wc -l)
    printf '%-10s %8s %14s %10s %8s %s\n' "$t" "$secs" "${execs:-?}" "${rate:-?}" "$corpus" "$result"
    total=$((total + ${execs:-0}))
done
echo "total executions: $total"
exit $status
