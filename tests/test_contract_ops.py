"""Operations contracts through the running app: the retention sweep deletes expired
authentication material, and trusted proxies decide which network a request is from."""

from __future__ import annotations

import asyncio
import uuid

from conftest import make_config
from odsmedia.app import make_app
from test_auth import new_email, sign_in


async def test_retention_sweep_deletes_expired_links_sessions_and_old_events(aiohttp_client, service_urls,
                                                                            tmp_path, db):
    config = make_config(service_urls, tmp_path / "data", ODS_PRIVACY_SWEEP_INTERVAL="0.2",
                         ODS_REDIS_PREFIX=f"{service_urls.prefix}{uuid.uuid4().hex[:8]}:")
    client = await aiohttp_client(make_app(config))
    old_email, kept_email = new_email(), new_email()
    _, old = await sign_in(client, old_email)
    client.session.cookie_jar.clear()
    _, kept = await sign_in(client, kept_email)

    async def counts(account: dict, email: str) -> tuple[int, int, int]:
        return (await db.fetchval("SELECT count(*) FROM magic_links WHERE email = $1", email),
                await db.fetchval("SELECT count(*) FROM sessions WHERE account_id = $1", account["id"]),
                await db.fetchval("SELECT count(*) FROM session_events WHERE account_id = $1", account["id"]))

    assert await counts(old, old_email) == (1, 1, 1) == await counts(kept, kept_email)
    # Age one person's material past each retention rule (link and session expired over a
    # day ago, the sign-in event older than privacy.session_event_days = 180).
    await db.execute("UPDATE magic_links SET expires_at = now() - interval '2 days' WHERE email = $1", old_email)
    await db.execute("UPDATE sessions SET expires_at = now() - interval '2 days' WHERE account_id = $1", old["id"])
    await db.execute("UPDATE session_events SET at = now() - interval '181 days' WHERE account_id = $1", old["id"])
    deadline = asyncio.get_running_loop().time() + 20
    while await counts(old, old_email) != (0, 0, 0):
        assert asyncio.get_running_loop().time() < deadline, await counts(old, old_email)
        await asyncio.sleep(0.1)   # the sweep runs on its own interval: poll its outcome
    assert await counts(kept, kept_email) == (1, 1, 1)


async def test_trusted_proxy_decides_the_network_of_a_request(aiohttp_client, service_urls, tmp_path):
    """The per-network magic-link limit counts the address the trusted proxy (loopback here)
    forwards; from an untrusted peer the header is ignored and the peer's network counts."""
    def app(**extra):
        return make_app(make_config(service_urls, tmp_path / uuid.uuid4().hex, ODS_AUTH_LINK_RATE_PER_NETWORK="2",
                                    ODS_REDIS_PREFIX=f"{service_urls.prefix}{uuid.uuid4().hex[:8]}:", **extra))

    async def statuses(client, forwarded_for: str, n: int) -> list[int]:
        out = []
        for _ in range(n):
            resp = await client.post("/auth/magic-link", json={"email": new_email()},
                                     headers={"X-Forwarded-For": forwarded_for})
            out.append(resp.status)
        return out

    behind_proxy = await aiohttp_client(app(ODS_TRUSTED_PROXIES="127.0.0.1/32"))
    assert await statuses(behind_proxy, "198.51.100.7", 3) == [202, 202, 429]
    assert await statuses(behind_proxy, "198.51.100.99", 1) == [429]        # same /24
    assert await statuses(behind_proxy, "203.0.113.5", 2) == [202, 202]     # another network
    # Nobody trusted: the forwarded address is a client's claim; all count as 127.0.0.1.
    direct = await aiohttp_client(app())
    assert await statuses(direct, "198.51.100.7", 1) + await statuses(direct, "203.0.113.5", 2) == [202, 202, 429]
