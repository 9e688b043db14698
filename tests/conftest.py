"""Settings for the whole test session."""

from __future__ import annotations

import signal

import pytest


def pytest_configure(config: pytest.Config) -> None:
    # A shell starts a background job (`make test &`, CI wrappers) with SIGINT ignored, and an
    # ignored signal stays ignored in every child: the tests that press Ctrl-C on a real
    # `meshctl ping` or a DevNet owner would then wait in vain. Children of a process with a
    # handler get the default disposition, so install Python's own.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
