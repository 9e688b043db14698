"""Reading JSON-line output of processes running inside namespaces, with bounded waits."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

__all__ = ["JsonLines"]


class JsonLines:
    """Collects the JSON lines a process prints on stdout (a reader thread); waits are bounded.

    Lines that are not JSON objects are kept in ``other`` (useful in failure messages).
    """

    def __init__(self, proc: subprocess.Popen[str], label: str = "") -> None:
        if proc.stdout is None:
            raise ValueError("start the process with stdout=subprocess.PIPE, text=True")
        self.proc = proc
        self.label = label
        self.events: list[dict[str, Any]] = []
        self.other: list[str] = []
        self._cond = threading.Condition()
        self._eof = False
        self._thread = threading.Thread(target=self._read, name=f"jsonlines-{label}", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                obj = json.loads(line)
            except ValueError:
                obj = None
            with self._cond:
                if isinstance(obj, dict):
                    self.events.append(obj)
                else:
                    self.other.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def snapshot(self) -> list[dict[str, Any]]:
        """The events received so far."""
        with self._cond:
            return list(self.events)

    def wait_for(self, predicate: Callable[[list[dict[str, Any]]], bool],
                 timeout: float) -> bool:
        """Wait until ``predicate(events)`` holds (True) or ``timeout`` seconds pass / EOF (False)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self.events):
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._eof:
                    return predicate(self.events)
                self._cond.wait(remaining)
            return True

    def wait_event(self, name: str, timeout: float) -> dict[str, Any] | None:
        """The first event called ``name``, waiting up to ``timeout`` seconds for it."""
        def has(evs: list[dict[str, Any]]) -> bool:
            return any(e.get("event") == name for e in evs)

        if not self.wait_for(has, timeout):
            return None
        return next(e for e in self.snapshot() if e.get("event") == name)

    def join(self, timeout: float) -> None:
        """Wait for the process to end and its output to be read (bounded)."""
        self.proc.wait(timeout=timeout)
        self._thread.join(timeout)
