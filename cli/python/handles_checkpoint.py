"""Test boundaries for `handles run --leak-check` (docs/per-test.md).

    from handles_checkpoint import checkpoint
    checkpoint("tests/test_db.py::test_insert")  # a test begins (or resumes)
    checkpoint("")                               # pause: handles belong to no test
    checkpoint(None)                             # the test ended: report its leaks

Under `handles run` with the shim this calls the shim's exported
`handles_checkpoint(const char *name)`; without the shim (`--no-shim`) it
makes the raw syscall that function makes, `fcntl(-1, CHECKPOINT_CMD,
name)`, which the supervisor answers. Anywhere else the kernel fails it
with EBADF and nothing happens. Returns True when a supervisor took it.
"""

_SYS_FCNTL = 72  # x86_64
_CHECKPOINT_CMD = int.from_bytes(b"HCKP", "little")

try:
    import ctypes

    _libc = ctypes.CDLL(None, use_errno=True)
    try:
        _shim = _libc.handles_checkpoint
        _shim.argtypes = [ctypes.c_char_p]
        _shim.restype = ctypes.c_int
    except AttributeError:
        _shim = None
    _syscall = _libc.syscall
    _syscall.restype = ctypes.c_long
except Exception:  # no ctypes (a minimal build): boundaries cannot be marked
    ctypes = None


def checkpoint(name):
    if ctypes is None:
        return False
    arg = None if name is None else name.encode("utf-8", "surrogateescape")
    if _shim is not None:
        return _shim(arg) == 0
    return (
        _syscall(
            ctypes.c_long(_SYS_FCNTL),
            ctypes.c_long(-1),
            ctypes.c_long(_CHECKPOINT_CMD),
            ctypes.c_char_p(arg),
        )
        == 0
    )
