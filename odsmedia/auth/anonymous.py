"""Anonymous viewers: a random id in a cookie signed with ``secret.key``.

The id is stable across visits (one year), carries no personal data, and
cannot be chosen by the client: a forged or altered cookie fails the HMAC
and is replaced.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

COOKIE = "ods_anon"
MAX_AGE = 365 * 86400


def _mac(secret: str, anon_id: str) -> str:
    mac = hmac.new(secret.encode(), b"anon:" + anon_id.encode("utf-8", "surrogatepass"), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac[:18]).decode()


def new_id() -> str:
    return secrets.token_urlsafe(12)


def sign(secret: str, anon_id: str) -> str:
    return f"{anon_id}.{_mac(secret, anon_id)}"


def verify(secret: str, value: str) -> str | None:
    """The anonymous id in a cookie value, or None if it is not ours."""
    if not value or len(value) > 80:
        return None
    anon_id, dot, mac = value.partition(".")
    if not dot or not anon_id:
        return None
    if not hmac.compare_digest(_mac(secret, anon_id).encode(), mac.encode("utf-8", "surrogatepass")):
        return None
    return anon_id
