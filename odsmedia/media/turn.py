"""TURN credentials for clients, in coturn's REST-API scheme.

coturn started with ``use-auth-secret`` and ``static-auth-secret=<secret>``
accepts any username of the form ``<expiry>:<subject>`` whose password is
base64(HMAC-SHA1(secret, username)), until the Unix time ``expiry`` has
passed.  The server and coturn share only the secret: nothing per user is
stored on either side, and a leaked credential dies at its expiry.

The subject is the participant id (an opaque per-session id), not the
account: coturn's logs then name a session the operator can look up in the
server's own logs, and no account id travels to another program.

Without ``ice.turn_secret`` the static ``ice.turn_username`` /
``ice.turn_credential`` pair (if any) is handed out as configured.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class TurnCredential:
    username: str
    password: str
    expires_at: int


def rest_credential(secret: str, subject: str, ttl: float, now: float | None = None) -> TurnCredential:
    """coturn REST-API credential for ``subject`` valid ``ttl`` seconds from ``now``."""
    expires_at = int((time.time() if now is None else now) + ttl)
    username = f"{expires_at}:{subject}"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return TurnCredential(username, base64.b64encode(digest).decode("ascii"), expires_at)


@dataclass(frozen=True)
class IceServer:
    """One entry of RTCConfiguration.iceServers."""
    urls: tuple[str, ...]
    username: str = ""
    credential: str = ""

    def as_browser(self) -> dict[str, Any]:
        out: dict[str, Any] = {"urls": list(self.urls)}
        if self.username or self.credential:
            out["username"], out["credential"] = self.username, self.credential
        return out

    def as_links(self) -> list[str]:
        """RFC 9725 section 4.6 Link header values (one per URL)."""
        links = []
        for url in self.urls:
            link = f'<{url}>; rel="ice-server"'
            if self.username or self.credential:
                link += (f'; username="{_quoted(self.username)}"; credential="{_quoted(self.credential)}"'
                         '; credential-type="password"')
            links.append(link)
        return links


def _quoted(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def ice_servers(config: Any, subject: str | None) -> list[IceServer]:
    """STUN and TURN servers for one client.

    ``subject`` is the participant the credential is for; ``None`` (a page
    that has not joined yet) gets no secret-derived TURN credential.
    """
    servers: list[IceServer] = []
    if config["ice.stun_urls"]:
        servers.append(IceServer(tuple(config["ice.stun_urls"])))
    turn_urls = tuple(config["ice.turn_urls"])
    if not turn_urls:
        return servers
    if config["ice.turn_secret"]:
        if subject is not None:
            cred = rest_credential(config["ice.turn_secret"], subject, config["ice.turn_ttl"])
            servers.append(IceServer(turn_urls, cred.username, cred.password))
    else:
        servers.append(IceServer(turn_urls, config["ice.turn_username"], config["ice.turn_credential"]))
    return servers
