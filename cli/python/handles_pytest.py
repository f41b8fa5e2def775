"""pytest plugin that `handles run --leak-check` makes available through
PYTEST_PLUGINS: each test's handles still open at its end are reported
under its node id (docs/per-test.md).

A test owns the handles created while it runs: its setup (function-scoped
fixtures), its call and its teardown. Fixtures of a wider scope (class,
module, package, session) are set up during the first test that uses
them, but what they create is theirs, not that test's: the plugin pauses
the test around their setup.
"""

import pytest

from handles_checkpoint import checkpoint

_current = None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    global _current
    _current = item.nodeid
    checkpoint(_current)
    try:
        yield
    finally:
        _current = None
        checkpoint(None)


@pytest.hookimpl(hookwrapper=True)
def pytest_fixture_setup(fixturedef, request):
    wide = fixturedef.scope != "function" and _current is not None
    if wide:
        checkpoint("")
    try:
        yield
    finally:
        if wide:
            checkpoint(_current)
