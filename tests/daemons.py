"""Test access to the real-daemon harness (it lives in ``meshd.harness`` so the demo can use it)."""

from meshd.harness import MESHCTL, MESHD, Cluster, Daemon, free_udp_port, wait_until

__all__ = ["MESHCTL", "MESHD", "Cluster", "Daemon", "free_udp_port", "wait_until"]
