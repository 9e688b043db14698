"""meshd: identity, discovery, neighbour links, routing and the node daemon of carmesh."""

__version__ = "0.1.0"
PROTOCOL_VERSION = 1
ALPN = "carmesh/1"
DEFAULT_PORT = 7420

__all__ = ["ALPN", "DEFAULT_PORT", "PROTOCOL_VERSION", "__version__"]
