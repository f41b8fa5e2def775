#!/usr/bin/env bash
# One measured run for scripts/bench-attach.sh: starts PROG held at a gate
# (a shell blocked opening a fifo), attaches TOOL to that live process,
# opens the gate and waits for PROG to finish; the tool's window ends
# when the process exits. Usage: attached.sh none|handles|strace PROG [ARGS...]
# (HANDLES names the handles binary, HANDLES_ARGS adds options).
set -euo pipefail
tool=$1
shift
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
mkfifo "$dir/gate"
bash -c 'read -r _ < "$0"; exec "$@"' "$dir/gate" "$@" &
pid=$!
tp=
case $tool in
none) ;;
handles) "$HANDLES" attach ${HANDLES_ARGS:-} "$pid" 2>/dev/null & tp=$! ;;
strace) strace -f -o /dev/null -p "$pid" 2>/dev/null & tp=$! ;;
*) echo "unknown tool $tool" >&2; exit 2 ;;
esac
if [ -n "$tp" ]; then
    # Attached: the gate's shell has a tracer.
    until [ "$(awk '/^TracerPid:/ {print $2}' "/proc/$pid/status")" != 0 ]; do
        sleep 0.005
    done
fi
echo go >"$dir/gate"
wait "$pid"
if [ -n "$tp" ]; then
    wait "$tp" || true
fi
