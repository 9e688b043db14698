"""Test access to the real-daemon harness (it lives in ``carmesh.dev.harness`` so the demo can use it)."""

from collections.abc import Callable
from typing import Any

from carmesh.dev.harness import MESHCTL, MESHD, Cluster, Daemon, free_udp_port, wait_until

__all__ = ["MESHCTL", "MESHD", "Cluster", "Daemon", "free_udp_port", "meshctl_ok",
           "meshctl_until", "wait_until"]


def meshctl_ok(d: Daemon, *args: str, timeout: float = 60.0) -> Any:
    """``meshctl --json ARGS`` at ``d``; its JSON answer, which must have exit code 0."""
    rc, res = d.meshctl(*args, timeout=timeout)
    assert rc == 0, (d.name, args, rc, res)
    return res


def meshctl_until(d: Daemon, pred: Callable[[Any], Any], *args: str, timeout: float = 30.0,
                  step: float = 0.3, what: str = "") -> Any:
    """Ask ``meshctl --json ARGS`` at ``d`` until ``pred`` of a successful answer is truthy."""
    def probe() -> Any:
        rc, res = d.meshctl(*args)
        return pred(res) if rc == 0 else None

    return wait_until(probe, timeout, step, what or f"{d.name}: {' '.join(args)}")
