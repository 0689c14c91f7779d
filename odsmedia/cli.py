"""The ``odsmedia`` command line.

serve    production: needs DATABASE_URL and REDIS_URL
dev      embedded PostgreSQL and Redis under the data dir, a public room `demo`
migrate  apply pending schema migrations
room     create rooms
token    mint a bearer token for a room and role (prints only the token)

Commands other than serve use the configured services, or the embedded ones
of the data dir (attaching to those of a running `odsmedia dev`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import signal
import sys
from pathlib import Path
from typing import Awaitable, Callable

from . import config as configmod
from . import logs
from .config import Config, ConfigError
from .files import kept


def _loop_factory():
    try:
        import uvloop
    except ImportError:  # pragma: no cover - Windows
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def run_async(coro: Awaitable) -> object:
    with asyncio.Runner(loop_factory=_loop_factory) as runner:
        return runner.run(coro)


def _dev_secret(data_dir: Path) -> str:
    """The dev signing key, generated once and kept in the data dir."""
    return kept(data_dir / "secrets.json", lambda text: json.loads(text)["secret_key"],
                lambda: secrets.token_urlsafe(48), lambda key: json.dumps({"secret_key": key}), mode=0o600)


class Services:
    """Resolves DATABASE_URL / REDIS_URL, starting embedded servers when unset."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.embedded = None

    def resolve(self, *, redis: bool) -> Config:
        changes: dict[str, str] = {}
        need_db = not self.config["database.url"]
        need_redis = redis and not self.config["redis.url"]
        if need_db or need_redis:
            from .embedded import EmbeddedServices

            self.embedded = EmbeddedServices(self.config.data_dir)
            if need_db:
                changes["database.url"] = self.embedded.start_postgres()
            if need_redis:
                changes["redis.url"] = self.embedded.start_redis()
        return self.config.replace(**changes) if changes else self.config

    def close(self) -> None:
        if self.embedded is not None:
            self.embedded.stop()


async def _serve(config: Config, announce: Callable[[int], None]) -> None:
    from aiohttp import web

    from .app import make_app
    from .storage import migrate

    await migrate(config["database.url"])
    app = make_app(config)
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=10)
    await runner.setup()
    site = web.TCPSite(runner, config["http.host"], config["http.port"])
    await site.start()
    port = runner.addresses[0][1]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    announce(port)
    await stop.wait()
    # Stops accepting, runs on_shutdown (peers, sockets) and cleanup (writers, bus, pool).
    await runner.cleanup()


def cmd_serve(args: argparse.Namespace, config: Config) -> int:
    missing = [env for key, env in (("database.url", "DATABASE_URL"), ("redis.url", "REDIS_URL")) if not config[key]]
    if missing:
        print(f"odsmedia serve: {' and '.join(missing)} must be set (use `odsmedia dev` for embedded services)",
              file=sys.stderr)
        return 2
    if not config["secret.key"]:
        print("odsmedia serve: ODS_SECRET_KEY must be set (32+ random characters)", file=sys.stderr)
        return 2
    if config["mail.backend"] == "outbox" and "mail.backend" not in config.explicit:
        # The outbox is dev's default; on a server it would keep live sign-in links in files
        # and send nobody anything, so it has to be asked for.
        print("odsmedia serve: set ODS_MAIL_BACKEND (smtp or mailersend; outbox only if meant: it writes "
              "sign-in links to files under the data dir instead of sending them)", file=sys.stderr)
        return 2
    logs.setup(config["log.level"], "text" if config["log.format"] == "text" else "json")
    run_async(_serve(config, lambda port: print(f"odsmedia listening on http://{config['http.host']}:{port}", flush=True)))
    return 0


def cmd_dev(args: argparse.Namespace, config: Config) -> int:
    logs.setup(config["log.level"], "json" if config["log.format"] == "json" else "text")
    if not config["secret.key"]:
        config = config.replace(**{"secret.key": _dev_secret(config.data_dir)})
    services = Services(config)
    try:
        config = services.resolve(redis=True)

        if not config["ice.addresses"]:
            # Every interface (what a browser elsewhere on the LAN reaches) plus
            # loopback, so a machine with no network still works for local tabs.
            import aioice.ice

            found = tuple(aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=False))
            config = config.replace(**{"ice.addresses": ",".join(found + ("127.0.0.1",))})

        async def prepare(pool) -> str:
            from .auth import tokens
            from .rooms import directory

            room = await directory.get(pool, "demo")
            if room is None:
                room = await directory.create(pool, "demo", title="Demo room", policy="public")
            # The host page needs a host identity before accounts exist: a
            # fresh short-lived host token for the demo room, printed below.
            token, _ = await tokens.mint(pool, room_id=room.id, role="host", ttl_seconds=12 * 3600,
                                         label="odsmedia dev")
            return token

        host_token = run_async(_migrated_pool_run(config["database.url"], prepare))

        def announce(port: int) -> None:
            base = config.public_url if config["http.public_url"] else f"http://{config['http.host']}:{port}"
            print(f"odsmedia listening on {base}", flush=True)
            print(f"  host page:   {base}/rooms/demo/host?token={host_token}", flush=True)
            print(f"  viewer page: {base}/rooms/demo", flush=True)

        run_async(_serve(config, announce))
    finally:
        services.close()
    return 0


def cmd_migrate(args: argparse.Namespace, config: Config) -> int:
    from .storage import migrate

    services = Services(config)
    try:
        config = services.resolve(redis=False)
        applied = run_async(migrate(config["database.url"]))
    finally:
        services.close()
    print("applied: " + ", ".join(applied) if applied else "schema up to date")
    return 0


async def _migrated_pool_run(database_url: str, work: Callable) -> object:
    """Migrate, then ``work(pool)`` on a small pool that is closed afterwards."""
    from .storage import connect, migrate

    await migrate(database_url)
    pool = await connect(database_url, max_size=2)
    try:
        return await work(pool)
    finally:
        await pool.close()


def _with_pool(config: Config, work: Callable) -> object:
    services = Services(config)
    try:
        config = services.resolve(redis=False)
        return run_async(_migrated_pool_run(config["database.url"], work))
    finally:
        services.close()


def cmd_room_create(args: argparse.Namespace, config: Config) -> int:
    from .errors import ApiError
    from .rooms import directory

    try:
        policy, plans = directory.parse_policy(args.policy)
    except ValueError as exc:
        print(f"odsmedia room create: {exc}", file=sys.stderr)
        return 2

    async def work(pool):
        return await directory.create(pool, args.slug, title=args.title, policy=policy, plans=plans)

    try:
        room = _with_pool(config, work)
    except ApiError as exc:
        print(f"odsmedia room create: {exc.reason}: {exc.message}", file=sys.stderr)
        return 1
    print(json.dumps(room.public()))
    return 0


def cmd_token(args: argparse.Namespace, config: Config) -> int:
    from .auth import tokens
    from .rooms import directory

    try:
        ttl = configmod._duration(args.ttl) if args.ttl else config["auth.token_ttl"]
    except ValueError as exc:
        print(f"odsmedia token: invalid --ttl={args.ttl!r}: expected {exc}", file=sys.stderr)
        return 2
    if ttl <= 0:
        print("odsmedia token: --ttl must be positive", file=sys.stderr)
        return 2

    async def work(pool):
        room = await directory.get(pool, args.room)
        if room is None:
            return None
        token, _ = await tokens.mint(pool, room_id=room.id, role=args.role, ttl_seconds=ttl, label=args.label)
        return token

    token = _with_pool(config, work)
    if token is None:
        print(f"odsmedia token: no room {args.room!r}", file=sys.stderr)
        return 1
    print(token)
    return 0


def cmd_config(args: argparse.Namespace, config: Config) -> int:
    if args.docs:
        print(configmod.markdown_table(), end="")
    else:
        print(json.dumps(configmod.describe(config), indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="odsmedia", description="ODS Media: live rooms, recording, chat.")
    parser.add_argument("--config", help="TOML configuration file (default: $ODS_CONFIG)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("serve", help="run the server against DATABASE_URL and REDIS_URL")
    p.set_defaults(func=cmd_serve)
    p = sub.add_parser("dev", help="run with embedded PostgreSQL and Redis and a public room `demo`")
    p.set_defaults(func=cmd_dev)
    p = sub.add_parser("migrate", help="apply pending schema migrations")
    p.set_defaults(func=cmd_migrate)

    p = sub.add_parser("config", help="print the effective configuration (secrets masked)")
    p.add_argument("--docs", action="store_true", help="print the settings table of docs/configuration.md")
    p.set_defaults(func=cmd_config)

    room = sub.add_parser("room", help="manage rooms")
    room_sub = room.add_subparsers(dest="room_command", required=True, metavar="ACTION")
    p = room_sub.add_parser("create", help="create a room")
    p.add_argument("slug")
    p.add_argument("--title", default="")
    p.add_argument("--policy", default="public", help="public | signed-in | plan:CODE[,CODE...]")
    p.set_defaults(func=cmd_room_create)

    from recorder.cli import add_commands as add_episode_commands

    add_episode_commands(sub)

    p = sub.add_parser("token", help="mint a bearer token; prints only the token")
    p.add_argument("--room", required=True, help="room slug")
    p.add_argument("--role", required=True, choices=("host", "moderator", "viewer"))
    p.add_argument("--ttl", default="", help="lifetime such as 1h or 7d (default: auth.token_ttl)")
    p.add_argument("--label", default="cli", help="label shown in token listings")
    p.set_defaults(func=cmd_token)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = configmod.load(file=args.config, dev=args.command == "dev")
    except ConfigError as exc:
        print(f"odsmedia: {exc}", file=sys.stderr)
        return 2
    return args.func(args, config)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
