#!/usr/bin/env python3
"""List the exception contexts of a `handles run --report FILE` JSON report.

Usage: report-contexts.py REPORT.json [LOG]

One line per context: its count, kind and call (that of the first report),
and the innermost frame of the offending stack that has a file:line outside
libc (glibc's syscall wrappers, which --no-shim stacks start with, say
nothing about the caller; libc's own frame is shown when there is no other).
With LOG (the run's stdout and stderr as one stream, from a unittest run
with -v) the line ends with the test that was running when the context's
first report was written.
"""
import json
import re
import sys
from collections import defaultdict, deque

TEST = re.compile(r"^(\w+) \(([\w.]+)\)")
MARK = "handles: <== policy exception"


def tests_of_reports(log):
    """(pid, call) -> the tests running at each full report, in order."""
    found = defaultdict(deque)
    test = None
    pending = None  # a report whose process and syscall lines are to come
    with open(log, errors="replace") as f:
        for line in f:
            m = TEST.match(line)
            if m:
                test = m.group(2)
            if MARK in line:  # may follow a test's "name ... " on its line
                pending = {"test": test}
                continue
            if pending is None or not line.startswith("handles:"):
                continue
            body = line[len("handles:"):].strip()
            if body.startswith("process "):
                pending["pid"] = int(body.split()[1])
            elif body.startswith("syscall "):
                found[(pending.get("pid"), body[len("syscall "):])].append(pending["test"])
                pending = None
    return found


def where(frames):
    known = [f for f in frames if f.get("file") and f.get("line")]
    if not known:
        return "(no frame with a file:line)"
    # handles.run.v3: every key of a frame is present, null when unknown
    # (a Python frame has no module).
    outside = [f for f in known if "/libc.so" not in (f.get("module") or "")]
    f = (outside or known)[0]
    path = "/".join(f["file"].split("/")[-2:]).lstrip("./")
    return f"{f.get('function') or '?'} at {path}:{f['line']}"


def main():
    with open(sys.argv[1]) as f:
        report = json.load(f)
    tests = tests_of_reports(sys.argv[2]) if len(sys.argv) > 2 else {}
    # The report lists contexts in the order of their first report, which is
    # the order of the full reports in the log.
    for e in report["exceptions"]:
        frames = e["stacks"][0]["frames"] if e.get("stacks") else []
        line = f"{e['count']:4}x {e['kind']:16} {e['syscall']:34} {where(frames)}"
        queue = tests.get((e.get("pid"), e["syscall"]))
        if queue:
            line += f"  [{queue.popleft()}]"
        print(line)


main()
