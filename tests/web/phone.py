"""Phones in network namespaces: cars started on their mesh links only, chromium run inside
a phone's namespace (its only network is its car's), NSS databases that trust a web CA.

Shared by the namespace browser tests (``test_browser_call``, ``test_phone_netns``).
"""

from __future__ import annotations

import shutil
import stat
import subprocess
from collections.abc import Sequence
from pathlib import Path

from carmesh.dev.devnet import DevNet, NetNode
from tests.daemons import Cluster, Daemon

__all__ = ["CERTUTIL", "CHROMIUM", "WEB_PORT", "chromium_in", "ns", "nss_home", "start_car"]

CHROMIUM = shutil.which("chromium")
CERTUTIL = shutil.which("certutil")
WEB_PORT = 7443


def ns(node: NetNode) -> list[str]:
    """The command prefix that runs a program inside ``node``'s namespace."""
    return ["ip", "netns", "exec", node.netns]


def start_car(net: DevNet, cl: Cluster, node: NetNode, dial: Sequence[NetNode],
              extra: Sequence[str], phones: Sequence[str] = ("p", "q")) -> Daemon:
    """meshd at ``node``: QUIC listeners on its links to other cars (not to ``phones``),
    dialling the cars in ``dial``."""
    args: list[str] = []
    for other in net.neighbours(node):
        if other.name not in phones:
            args += ["--listen", f"{net.address(node, other)}:7420"]
    for other in dial:
        args += ["--peer", f"{net.address(other, node)}:7420"]
    return cl.add(node.name, [*args, *extra], prefix=ns(node))


def chromium_in(root: Path, phone: NetNode) -> Path:
    """An executable that runs Debian's chromium inside ``phone``'s namespace (for
    Playwright's ``executable_path``; the environment, HOME among it, passes through)."""
    assert CHROMIUM is not None
    wrapper = root / f"chromium-in-{phone.name}"
    wrapper.write_text(f'#!/bin/sh\nexec ip netns exec {phone.netns} {CHROMIUM} "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    return wrapper


def nss_home(home: Path, ca: Path | None) -> Path:
    """A HOME whose NSS database (what chromium on Linux trusts) holds ``ca`` as a TLS CA
    (what the dealer's visit does to a citizen's phone)."""
    assert CERTUTIL is not None
    nss = home / ".pki" / "nssdb"
    nss.mkdir(parents=True)
    subprocess.run([CERTUTIL, "-N", "-d", f"sql:{nss}", "--empty-password"], check=True)
    if ca is not None:
        subprocess.run([CERTUTIL, "-A", "-d", f"sql:{nss}", "-n", "carmesh web CA",
                        "-t", "C,,", "-i", str(ca)], check=True)
    return home
