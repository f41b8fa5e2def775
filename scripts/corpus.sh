#!/usr/bin/env bash
# Transparency corpus: runs real programs natively and under `handles run`
# (supervisor alone: --no-shim; shim + supervisor: the default) and requires
# identical stdout, stderr (less `handles:` lines), exit status and files
# written, and no `handles:` line at all. A case whose program is not
# installed is skipped, with a line saying so (nothing is installed here).
#
# CPython's fd-heavy regression tests run as two "suite" rows, each against
# one native run: `--policy bad-handle=deny` (no report may appear) and
# `--on-exception=continue`, where the reports of the tests' deliberate uses
# of closed fds are expected: that row passes when the suite's verdict lines
# (`Total tests`, `Result`) and exit status equal the native run's, and the
# script prints its ERROR SUMMARY and one line per report context.
# Usage: scripts/corpus.sh   (prints one line per case and a summary)
# The cases are shell text for bash -c: their $ expand there.
# shellcheck disable=SC2016
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
# --workspace: a plain `cargo build` would not rebuild the LD_PRELOAD shim.
cargo build --release --workspace -q || exit 1
H=$CARGO_TARGET_DIR/release/handles
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
PY=$(python3 -c 'import sys; print(sys.executable)')
CONTEXTS=$PWD/scripts/report-contexts.py

# A small C project for make -j2.
mkdir -p "$work/proj"
for i in 1 2 3 4 5 6; do
    printf 'int f%d(void) { return %d; }\n' "$i" "$i" > "$work/proj/f$i.c"
done
printf 'int f1(void);\nint main(void) { return f1() - 1; }\n' > "$work/proj/main.c"
cat > "$work/proj/Makefile" <<'MK'
OBJS = main.o f1.o f2.o f3.o f4.o f5.o f6.o
prog: $(OBJS)
	$(CC) -o $@ $(OBJS)
%.o: %.c
	$(CC) -c -o $@ $<
clean:
	rm -f prog $(OBJS)
MK

# Programs too long for a one-liner live here (the same path in every mode).
mkdir -p "$work/prog"
cat > "$work/prog/io.pl" <<'PL'
# File, pipe and fork I/O: write, read back, read a child's output through
# a pipe open, and a pipe to a forked child.
open(my $o, ">", "p.txt") or die "open: $!";
print $o "$_\n" for 1 .. 2000;
close $o or die "close: $!";
open(my $i, "<", "p.txt") or die "open: $!";
my $n = () = <$i>;
close $i;
open(my $s, "-|", "sort", "-rn", "p.txt") or die "sort: $!";
my @top = (<$s>)[0, 1];
close $s;
chomp @top;
pipe(my $r, my $w) or die "pipe: $!";
my $pid = fork // die "fork: $!";
if (!$pid) { close $r; print $w "child says hi\n"; close $w; exit 7 }
close $w;
my $c = <$r>;
close $r;
waitpid($pid, 0);
print "$n @top ", $? >> 8, " $c";
PL
cat > "$work/prog/io.js" <<'JS'
// Sync and async file I/O (libuv's thread pool), a child with pipes both
// ways, and a read stream.
const fs = require("fs"), cp = require("child_process");
(async () => {
    fs.writeFileSync("n.txt", Array.from({length: 1000}, (_, i) => i).join("\n") + "\n");
    const r = cp.spawnSync("sort", ["-rn", "n.txt"]);
    console.log("sort", r.status, r.stdout.toString().split("\n")[0]);
    const wc = cp.spawn("wc", ["-l"], {stdio: ["pipe", "pipe", "inherit"]});
    let out = "";
    wc.stdout.on("data", d => { out += d; });
    wc.stdin.end(fs.readFileSync("n.txt"));
    const code = await new Promise(res => wc.on("close", res));
    console.log("wc", code, out.trim());
    const fh = await fs.promises.open("n.txt");
    const st = await fh.stat();
    await fh.close();
    await fs.promises.writeFile("m.txt", "x".repeat(st.size));
    let n = 0;
    for await (const chunk of fs.createReadStream("m.txt")) n += chunk.length;
    console.log("size", st.size, "stream", n);
})();
JS
cat > "$work/prog/tmux.sh" <<'SH'
# A detached session whose command writes a file, then the server's view of
# it, then kill-server. The socket name is this shell's pid: a stale server
# of an earlier run cannot answer.
unset TMUX
s=corpus-$$
tmux -L "$s" -f /dev/null new-session -d -x 80 -y 24 'echo hello > tm.txt; sleep 5'
for _ in $(seq 50); do [ -s tm.txt ] && break; sleep 0.1; done
tmux -L "$s" list-sessions -F '#{session_windows} #{window_width}x#{window_height}'
tmux -L "$s" kill-server
echo "kill-server $?"
cat tm.txt
SH
# libevent 2.1's event_reinit() (called by tmux's client after its fork)
# closes the signal socketpair and does not forget it, then the backend's
# dealloc (evsig_dealloc_) closes the same two numbers again: a real double
# close (harmless there: one thread, nothing opened in between). The
# default policy rightly traps it, so the tmux case accepts exactly it.
cat > "$work/libevent.supp" <<'SUPP'
[libevent-2.1-event-reinit-double-close]
report = bad-handle
kind = double-close
type = pipe
frame = fun:evsig_dealloc_
frame = fun:event_reinit
SUPP

# name, command, handles flags, kind (plain or suite), programs it needs,
# `handles:` lines it may print that are not reports (an ERE; they are
# listed after the table)
declare -a NAMES CMDS FLAGS KINDS NEEDS ALLOW
add() { NAMES+=("$1"); CMDS+=("$2"); FLAGS+=("${3:-}"); KINDS+=("${4:-plain}"); NEEDS+=("${5:-}"); ALLOW+=("${6:-}"); }
add "bash pipeline"        'seq 1 20000 | sort -rn | head -3; echo "${PIPESTATUS[@]}"'
add "bash job control"     'sleep 0.2 & wait $!; echo $?; (exit 3); echo $?'
add "sort"                 'seq 1 5000 | shuf --random-source=/dev/zero | sort -n | tail -1'
add "tar"                  'mkdir -p t/a && echo x > t/a/f && tar --mtime=@0 --owner=0 --group=0 --numeric-owner -cf t.tar t && tar tf t.tar | sort'
add "find -exec"           'mkdir -p d/e && touch d/1 d/e/2 && find d -type f -exec wc -c {} + | sort'
add "xargs -P"             'seq 1 40 | xargs -P 4 -n 5 echo | wc -l'
add "python subprocess"    "$PY -c 'import subprocess; print(subprocess.run([\"echo\",\"hi\"],capture_output=True,text=True).stdout.strip())'"
add "python asyncio"       "$PY -c 'import asyncio
async def m():
    p = await asyncio.create_subprocess_exec(\"true\"); return await p.wait()
print(asyncio.run(m()))'"
add "python multiprocessing" "$PY -c 'import multiprocessing as mp
if __name__ == \"__main__\":
    with mp.Pool(2) as p: print(sum(p.map(abs, range(-50, 50))))'"
add "python sockets+selectors" "$PY -c 'import socket, selectors
a, b = socket.socketpair(); s = selectors.DefaultSelector(); s.register(b, selectors.EVENT_READ)
a.send(b\"ping\"); print([k.fileobj.recv(4) for k, _ in s.select(1)]); a.close(); b.close()'"
add "perl file+pipe+fork"  "perl '$work/prog/io.pl'" "" plain perl
add "node fs+child_process" "node '$work/prog/io.js'" "" plain node
add "git"                  'git init -q r && cd r && git config user.email a@b && git config user.name a && echo x > f && git add f && git commit -qm m && git log --format=%s && git gc -q && git count-objects | cut -d" " -f1'
add "git push/clone file://" 'export GIT_AUTHOR_DATE=2000-01-01T00:00:00Z GIT_COMMITTER_DATE=2000-01-01T00:00:00Z
git init -q -b main --bare b.git && git init -q -b main w && cd w && git config user.email a@b && git config user.name a &&
seq 1 100 > f && git add f && git commit -qm one && git push -q ../b.git main &&
echo two >> f && git commit -qam two && git push -q "file://$PWD/../b.git" main && cd .. &&
git clone -q "file://$PWD/b.git" c && git -C c log --format=%s && git -C c rev-parse HEAD && git -C b.git fsck --no-progress 2>&1' "" plain git
add "make -j2"             'cd proj && make -s clean && make -s -j2 && ./prog; echo $?' "" plain make
add "openssl dgst/enc"     'seq 1 20000 > o.txt && openssl dgst -sha256 o.txt &&
openssl enc -aes-256-cbc -pbkdf2 -S 0102030405060708 -pass pass:corpus -in o.txt -out o.enc &&
openssl enc -d -aes-256-cbc -pbkdf2 -pass pass:corpus -in o.enc | cmp - o.txt && openssl dgst -sha256 -r o.enc && seq 1 10 | openssl dgst -sha1' "" plain openssl
add "gpg symmetric"        'export GNUPGHOME=gh && mkdir -m 700 gh && gpg --version | head -1 && seq 1 5000 > g.txt &&
gpg --batch --quiet --pinentry-mode loopback --passphrase corpus --symmetric -o g.gpg g.txt &&
gpg --batch --quiet --pinentry-mode loopback --passphrase corpus -d g.gpg | cmp - g.txt && echo roundtrip
gpgconf --kill gpg-agent; rm -rf gh g.gpg' "" plain gpg
add "tar czf/xzf, cJf"     'mkdir -p a/b && seq 1 3000 > a/b/f && echo y > a/g && tar czf a.tgz a && mkdir x && tar xzf a.tgz -C x && diff -r a x/a && echo tgz same &&
tar cJf a.txz a && tar tJf a.txz | sort && rm a.tgz a.txz' "" plain tar
add "gzip, xz -T2"         'seq 1 50000 > s && gzip -n -9 -k s && xz -k -T2 s && gzip -dc s.gz | cmp - s && xz -dc s.xz | cmp - s && gzip -t s.gz && xz -t s.xz && md5sum s.gz s.xz' "" plain "gzip xz"
add "zip/unzip"            'mkdir -p z/y && seq 1 500 > z/y/f && echo q > z/q && zip -qr z.zip z && unzip -qo z.zip -d u && diff -r z u/z && unzip -Z1 z.zip | sort && rm z.zip' "" plain "zip unzip"
# tmux also runs its set-group-ID helper utempter (utmp entries for the
# pane), which under ptrace runs without its privileges (and without the
# shim): handles says so in a line; the suppressed double closes make the
# ERROR SUMMARY appear with nothing but suppressed ones.
add "tmux new-session -d"  "bash '$work/prog/tmux.sh'" "--suppressions $work/libevent.supp" plain tmux \
    '^handles: .*/utempter is set-group-ID: |^handles: ERROR SUMMARY: 0 exceptions from 0 contexts \([0-9]+ suppressed\)$'

add "lsof -p \$\$"         'lsof -w -a -p $$ -d 0,rtd,txt -Ffn | grep -v "^p"; echo "lsof ${PIPESTATUS[0]}"' "" plain lsof

# CPython's fd-heavy regression tests (-v and unbuffered so that each
# report can be placed in the test that was running). Left out:
# - *VSOCK*: test_socket's AF_VSOCK tests block in accept() natively on a
#   machine with /dev/vsock but no vsock peer (an environment matter).
# - test_fd_leak (test_os's two fwalk tests) compares os.dup()'s number
#   before and after fwalk, and test_failed_child_execute_fd_leak
#   (test_subprocess, two classes) compares /proc/self/fd listings that
#   include the listing's own fd: both assert that a new fd gets the lowest
#   free number, which the quarantine breaks by design above fd 2.
PYTESTS="test_os test_subprocess test_epoll test_tempfile test_selectors test_pty test_fcntl test_fileio test_pipes test_poll test_socket test_io test_signal"
SUITE="PYTHONUNBUFFERED=1 $PY -m test -v $PYTESTS -i '*VSOCK*' -i test_fd_leak -i test_failed_child_execute_fd_leak"
# `deny` gives a deliberate misuse the EBADF the test expects, with no report.
add "cpython tests, deny"     "$SUITE" "--policy bad-handle=deny" suite
# `continue` reports each deliberate misuse once per context and goes on.
add "cpython tests, continue" "$SUITE" "--on-exception=continue" suite

# shellcheck disable=SC2086 # $flags are words
invoke() ( # mode dir cmd flags (a subshell: it changes directory)
    mode=$1 dir=$2 cmd=$3 flags=$4
    cd "$dir" || exit 99
    case $mode in
        native) bash -c "$cmd" ;;
        supervisor) "$H" run --no-shim $flags -- bash -c "$cmd" ;;
        shim) "$H" run $flags -- bash -c "$cmd" ;;
    esac < /dev/null
)

run_case() { # mode dir cmd flags kind -> dir.{out,err,status,files,secs}
    local mode=$1 dir=$2 cmd=$3 flags=$4 kind=$5 start=$SECONDS
    mkdir -p "$dir" && cp -r "$work/proj" "$dir/"
    # A suite writes one stream (its stdout and stderr and our reports), so
    # that each report lands among the names of the tests; what is compared
    # is the suite's verdict lines and its exit status.
    [ "$kind" = suite ] && [ "$mode" != native ] && flags="$flags --report $dir.json"
    if [ "$kind" = suite ]; then
        invoke "$mode" "$dir" "$cmd" "$flags" > "$dir.log" 2>&1
    else
        invoke "$mode" "$dir" "$cmd" "$flags" > "$dir.out" 2> "$dir.err"
    fi
    echo $? > "$dir.status"
    echo $((SECONDS - start)) > "$dir.secs"
    if [ "$kind" = suite ]; then
        grep -E '^(Total tests|Total test files|Result)' "$dir.log" > "$dir.out"
        grep -o 'handles: .*' "$dir.log" > "$dir.err"
    fi
    (cd "$dir" && find . -type f ! -path '*.git/*' ! -path './proj/*.o' -newer "$work/proj/Makefile" -print0 2>/dev/null | sort -z | xargs -0 -r cat 2>/dev/null | md5sum) > "$dir.files"
}

verdict_of() { # native-dir dir kind flags allow -> a verdict word
    local n=$1 d=$2 kind=$3 flags=$4 allow=${5:-}
    if [ "$kind" = suite ]; then
        # The suite's own verdict must be the native one. Under `continue`
        # the reports are expected and end in an ERROR SUMMARY; otherwise
        # no report may appear.
        cmp -s "$n.out" "$d.out" || { echo "FAIL(verdict)"; return; }
        cmp -s "$n.status" "$d.status" || { echo "FAIL(status)"; return; }
        cmp -s "$n.files" "$d.files" || { echo "FAIL(files)"; return; }
        case $flags in
            *--on-exception=continue*)
                grep -q '^handles: ERROR SUMMARY:' "$d.err" || { echo "FAIL(summary)"; return; } ;;
            *) [ -s "$d.err" ] && { echo "FAIL(report)"; return; } ;;
        esac
        echo pass; return
    fi
    local v=pass
    grep -v '^handles:' "$d.err" > "$d.err.own"
    cmp -s "$n.err" "$d.err.own" || v="FAIL(stderr)"
    cmp -s "$n.out" "$d.out" || v="FAIL(stdout)"
    cmp -s "$n.status" "$d.status" || v="FAIL(status)"
    cmp -s "$n.files" "$d.files" || v="FAIL(files)"
    if [ -n "$allow" ]; then
        grep '^handles:' "$d.err" | grep -Evq "$allow" && v="FAIL(report)"
    else
        grep -q '^handles:' "$d.err" && v="FAIL(report)"
    fi
    echo "$v"
}

pass=0; fail=0; skipped=0
declare -A NATIVE  # command -> the directory of its native run (run once)
notes=$work/notes othernotes=$work/othernotes
: > "$notes"; : > "$othernotes"
printf '%-26s %-13s %-13s %s\n' case --no-shim default 'seconds (native/--no-shim/default)'
for i in "${!NAMES[@]}"; do
    name=${NAMES[$i]} cmd=${CMDS[$i]} flags=${FLAGS[$i]} kind=${KINDS[$i]}
    missing=
    for p in ${NEEDS[$i]}; do command -v "$p" > /dev/null || missing="$missing $p"; done
    if [ -n "$missing" ]; then
        printf '%-26s SKIPPED (not installed:%s)\n' "$name" "$missing"
        skipped=$((skipped + 1)); continue
    fi
    n=${NATIVE[$cmd]:-}
    if [ -z "$n" ]; then
        n=$work/n$i
        run_case native "$n" "$cmd" "" "$kind"
        NATIVE[$cmd]=$n
    fi
    row=$(printf '%-26s' "$name") secs=$(cat "$n.secs")
    for mode in supervisor shim; do
        d="$work/$mode$i"
        run_case "$mode" "$d" "$cmd" "$flags" "$kind"
        verdict=$(verdict_of "$n" "$d" "$kind" "$flags" "${ALLOW[$i]}")
        if [ "$kind" = plain ] && grep -q '^handles:' "$d.err"; then
            {
                echo "== $name, $([ $mode = shim ] && echo default || echo --no-shim): $verdict"
                grep '^handles:' "$d.err" | grep -v '^handles:     #'
            } >> "$othernotes"
        fi
        if [ "$verdict" = pass ]; then pass=$((pass + 1)); else fail=$((fail + 1)); fi
        row="$row $(printf '%-13s' "$verdict")" secs="$secs/$(cat "$d.secs")"
        if [ "$kind" = suite ]; then
            {
                echo "== $name, $([ $mode = shim ] && echo default || echo --no-shim): $(tr '\n' ' ' < "$d.out")"
                grep '^handles: ERROR SUMMARY' "$d.err"
                [ -s "$d.json" ] && "$PY" "$CONTEXTS" "$d.json" "$d.log"
            } >> "$notes"
        fi
    done
    echo "$row $secs"
done
echo "corpus: $pass passed, $fail failed, $skipped skipped (in ${SECONDS}s)"
if [ -s "$othernotes" ]; then
    echo
    echo "handles: lines of the other cases (stack frames left out)"
    cat "$othernotes"
fi
if [ -s "$notes" ]; then
    echo
    echo "CPython suite: verdicts, ERROR SUMMARY and report contexts"
    echo "(count, kind, call, innermost frame outside libc with a file:line, test)"
    cat "$notes"
fi
[ "$fail" -eq 0 ]
