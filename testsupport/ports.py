"""Free loopback ports for servers that must be told a port number (they cannot be given 0).

Engineers and CI run the suite side by side on one machine: a fixed port in a test
makes two runs meet (one run's client reaching the other's server).  The kernel
hands out a port nothing is bound to now; the server binds it right after.
"""

from __future__ import annotations

import socket


def free_port(*, udp: bool = False, tcp: bool = True) -> int:
    """A port on 127.0.0.1 free now for TCP, and for UDP too when ``udp`` (TURN listens on both)."""
    for _ in range(100):
        kind = socket.SOCK_STREAM if tcp else socket.SOCK_DGRAM
        with socket.socket(socket.AF_INET, kind) as first:
            first.bind(("127.0.0.1", 0))
            port = first.getsockname()[1]
            if not (tcp and udp):
                return port
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as second:
                try:
                    second.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise OSError("no free loopback port")
