"""A local coturn (Debian package ``coturn``, binary ``turnserver``).

``odsmedia dev`` starts one when ``dev.coturn`` is on and the binary is
installed; the tests start one on 127.0.0.1 with a test secret.  The
production configuration (docs/operations.md) has the same shape:
``use-auth-secret`` with the secret the server mints credentials from
(odsmedia.media.turn), a relay port range, and peers in private ranges
denied so a credential cannot be used to reach the operator's own networks.
"""

from __future__ import annotations

import logging
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..files import write_atomic

log = logging.getLogger("odsmedia.coturn")

# Peers a relay must never reach on a public deployment (RFC 1918, CGNAT,
# link-local, loopback, multicast, reserved, and the IPv6 equivalents).
DENIED_PEERS = (
    "0.0.0.0-0.255.255.255", "10.0.0.0-10.255.255.255", "100.64.0.0-100.127.255.255",
    "127.0.0.0-127.255.255.255", "169.254.0.0-169.254.255.255", "172.16.0.0-172.31.255.255",
    "192.0.0.0-192.0.0.255", "192.168.0.0-192.168.255.255", "198.18.0.0-198.19.255.255",
    "224.0.0.0-255.255.255.255", "::1", "fc00::-fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
    "fe80::-febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
)


def binary() -> str | None:
    return shutil.which("turnserver") or (
        "/usr/bin/turnserver" if Path("/usr/bin/turnserver").exists() else None)


@dataclass(frozen=True)
class CoturnConfig:
    secret: str
    listen_ip: str = "127.0.0.1"
    port: int = 3478
    relay_ip: str = "127.0.0.1"
    min_port: int = 49160
    max_port: int = 49200
    realm: str = "odsmedia"
    # Only for a coturn on loopback with loopback peers (dev, tests): the
    # production config keeps every private range denied.
    allow_loopback_peers: bool = False
    # TURN over TLS (turns:), e.g. on 443 where only HTTPS passes a firewall.
    tls_port: int = 0
    cert: str = ""
    pkey: str = ""
    extra: tuple[str, ...] = field(default=())

    def render(self) -> str:
        lines = [
            f"listening-ip={self.listen_ip}", f"listening-port={self.port}", f"relay-ip={self.relay_ip}",
            f"min-port={self.min_port}", f"max-port={self.max_port}", f"realm={self.realm}",
            "use-auth-secret", f"static-auth-secret={self.secret}", "fingerprint",
            "no-cli", "no-dtls", "no-multicast-peers", "no-software-attribute",
            "log-file=stdout", "simple-log",
        ]
        if self.tls_port:
            lines += [f"tls-listening-port={self.tls_port}", f"cert={self.cert}", f"pkey={self.pkey}"]
        else:
            lines.append("no-tls")
        if self.allow_loopback_peers:
            lines.append("allow-loopback-peers")
        lines += [f"denied-peer-ip={r}" for r in DENIED_PEERS
                  if not (self.allow_loopback_peers and r.startswith("127."))]
        lines += list(self.extra)
        return "\n".join(lines) + "\n"

    def urls(self) -> tuple[str, ...]:
        host = self.listen_ip if ":" not in self.listen_ip else f"[{self.listen_ip}]"
        return (f"turn:{host}:{self.port}?transport=udp", f"turn:{host}:{self.port}?transport=tcp")


class LocalCoturn:
    """One turnserver process with a rendered config file; stop() ends it."""

    def __init__(self, config: CoturnConfig, workdir: Path) -> None:
        self.config = config
        self.workdir = Path(workdir)
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 10.0) -> None:
        exe = binary()
        if exe is None:
            raise FileNotFoundError("turnserver (Debian package coturn) is not installed")
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "turnserver.conf"
        write_atomic(conf, self.config.render(), mode=0o600)  # holds the secret
        self.log_path = self.workdir / "turnserver.log"
        logfile = open(self.log_path, "wb")
        self.process = subprocess.Popen([exe, "-c", str(conf), "--pidfile", str(self.workdir / "turnserver.pid")],
                                        stdout=logfile, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        logfile.close()
        # Started means every listener answers: coturn opens the TLS port after the plain
        # one, and a client trying TLS in between is refused.
        ports = [self.config.port] + ([self.config.tls_port] if self.config.tls_port else [])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"turnserver exited: {self.log_path.read_text(errors='replace')[-2000:]}")
            if all(_tcp_answers(self.config.listen_ip, port) for port in ports):
                log.info("coturn listening on %s:%s", self.config.listen_ip, ",".join(map(str, ports)))
                return
            time.sleep(0.05)
        self.stop()
        raise TimeoutError("turnserver did not start listening")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.process = None


def _tcp_answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False
