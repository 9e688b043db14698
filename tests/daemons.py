"""Test access to the real-daemon harness (it lives in ``carmesh.dev.harness`` so the demo can use it)."""

from carmesh.dev.harness import MESHCTL, MESHD, Cluster, Daemon, free_udp_port, wait_until

__all__ = ["MESHCTL", "MESHD", "Cluster", "Daemon", "free_udp_port", "wait_until"]
