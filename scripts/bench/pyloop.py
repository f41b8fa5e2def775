"""Python fd loop for scripts/bench-python.sh: per iteration a helper
opens, reads and closes a file through os (three fd syscalls, each a
creation or close record with Python frames under the shim), or through
open() (the io stack: the same three plus an fstat and an ioctl)."""
import os
import sys


def raw(path):
    fd = os.open(path, os.O_RDONLY)
    os.read(fd, 64)
    os.close(fd)


def buffered(path):
    with open(path, "rb") as f:
        f.read(64)


def main():
    n = int(sys.argv[1])
    step = buffered if len(sys.argv) > 2 and sys.argv[2] == "open" else raw
    for _ in range(n):
        step(__file__)


main()
