"""The ``odsmedia`` command line.

serve    production: needs DATABASE_URL and REDIS_URL
dev      embedded PostgreSQL and Redis under the data dir, a public room `demo`
migrate  apply pending schema migrations
room     create and list rooms
token    mint a bearer token for a room and role (prints only the token)
operator grant or revoke the operator role of an account
account  delete an account on request (the same deletion as self-service, audited)
policy   publish a version of the privacy policy

Commands other than serve use the configured services, or the embedded ones
of the data dir (attaching to those of a running `odsmedia dev`).
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import json
import secrets
import signal
import socket
import sys
from pathlib import Path
from typing import Awaitable, Callable, Sequence

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


class StartupError(Exception):
    """What stops the server from starting, in one line naming the setting to change."""


def _where(url: str) -> str:
    """host:port of a service URL, never its credentials."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        if parts.hostname:
            return f"{parts.hostname}:{parts.port}" if parts.port else parts.hostname
    except ValueError:
        pass
    return "the configured address"


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return text or type(exc).__name__


async def _migrate_checked(database_url: str) -> list[str]:
    """Migrations, or a StartupError naming DATABASE_URL when PostgreSQL cannot be used."""
    import asyncpg

    from .storage import migrate

    try:
        return await asyncio.wait_for(migrate(database_url), 60)
    except (OSError, asyncio.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise StartupError(f"cannot use PostgreSQL at {_where(database_url)} (DATABASE_URL): {_reason(exc)}. "
                           "Start PostgreSQL or set DATABASE_URL to a reachable database.") from None


async def _check_redis(redis_url: str) -> None:
    import redis.asyncio as redis
    from redis.exceptions import RedisError

    client = redis.from_url(redis_url, socket_connect_timeout=3, socket_timeout=3)
    try:
        await client.ping()
    except (OSError, RedisError, asyncio.TimeoutError) as exc:
        raise StartupError(f"cannot reach Redis at {_where(redis_url)} (REDIS_URL): {_reason(exc)}. "
                           "Start Redis or set REDIS_URL to a reachable server.") from None
    finally:
        await client.aclose()


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
            where = self.embedded.root
            if need_db:
                try:
                    changes["database.url"] = self.embedded.start_postgres()
                except Exception as exc:
                    raise StartupError(f"cannot start the embedded PostgreSQL under {where}: {_reason(exc)}. "
                                       "Set DATABASE_URL to use a running PostgreSQL instead.") from None
            if need_redis:
                try:
                    changes["redis.url"] = self.embedded.start_redis()
                except Exception as exc:
                    self.close()
                    raise StartupError(f"cannot start the embedded Redis under {where}: {_reason(exc)}. "
                                       "Set REDIS_URL to use a running Redis instead.") from None
        return self.config.replace(**changes) if changes else self.config

    def close(self) -> None:
        if self.embedded is not None:
            self.embedded.stop()


def _listen(host: str, port: int, setting: str) -> socket.socket:
    """A listening TCP socket, or a StartupError naming the setting (the supervisor binds for its workers)."""
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        return socket.create_server((host, port), family=family, backlog=1024)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise StartupError(f"port {port} on {host} is already in use ({setting}): stop the other server "
                               f"or set {setting} to a free port (0 picks one).") from None
        raise StartupError(f"cannot listen on {host}:{port} (ODS_HTTP_HOST, {setting}): {_reason(exc)}.") from None


async def _serve(config: Config, announce: Callable[[int], None], *, listeners: Sequence[socket.socket] = (),
                 prepare: bool = True, stop: asyncio.Event | None = None) -> None:
    """Run the application until SIGTERM/SIGINT (or ``stop``). A worker of ``serve --workers`` passes the
    sockets its supervisor bound (shared, then private) and leaves migrations to the supervisor."""
    from aiohttp import web

    from .app import make_app

    if prepare:
        await _migrate_checked(config["database.url"])
        await _check_redis(config["redis.url"])
    app = make_app(config)
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=10)
    await runner.setup()
    if listeners:
        for sock in listeners:
            await web.SockSite(runner, sock).start()
        port = listeners[-1].getsockname()[1]
    else:
        host, port = config["http.host"], config["http.port"]
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            if exc.errno == errno.EADDRINUSE:
                raise StartupError(f"port {port} on {host} is already in use (ODS_HTTP_PORT): stop the other server "
                                   "or set ODS_HTTP_PORT to a free port (0 picks one).") from None
            raise StartupError(f"cannot listen on {host}:{port} (ODS_HTTP_HOST, ODS_HTTP_PORT): "
                               f"{_reason(exc)}.") from None
        port = runner.addresses[0][1]
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    announce(port)
    await stop.wait()
    # Stops accepting, runs on_shutdown (peers, sockets) and cleanup (writers, bus, pool).
    await runner.cleanup()


async def _supervise(config: Config, count: int, announce: Callable[[int], None]) -> None:
    """``count`` worker processes behind one HTTP port (odsmedia.workers); migrations run here, once."""
    from .workers import Supervisor, WorkerFailed

    await _migrate_checked(config["database.url"])
    await _check_redis(config["redis.url"])
    host, base = config["http.host"], config["workers.port_base"]
    shared = _listen(host, config["http.port"], "ODS_HTTP_PORT")
    privates: list[socket.socket] = []
    try:
        for index in range(count):
            privates.append(_listen(host, base + index if base else 0, "ODS_WORKERS_PORT_BASE"))
        await Supervisor(config, shared, privates).run(announce)
    except WorkerFailed as exc:
        raise StartupError(str(exc)) from None
    finally:
        for sock in (shared, *privates):
            sock.close()


def _worker_count(args: argparse.Namespace, config: Config, default: int) -> int:
    """--workers, else workers.count when set, else ``default``; 0 means one per core."""
    from .workers import default_count

    count = args.workers if args.workers is not None else (
        config["workers.count"] if "workers.count" in config.explicit else default)
    return count or default_count()


def _run(config: Config, count: int, announce: Callable[[int], None]) -> None:
    if count > 1 and config["http.node_url"] and "{port}" not in config["http.node_url"]:
        raise StartupError("ODS_NODE_URL must contain {port} with more than one worker (each worker is a node "
                           "with its own URL)")
    if count == 1:
        run_async(_serve(config, announce))
    else:
        run_async(_supervise(config, count, announce))


def cmd_serve(args: argparse.Namespace, config: Config) -> int:
    missing = [env for key, env in (("database.url", "DATABASE_URL"), ("redis.url", "REDIS_URL")) if not config[key]]
    if missing:
        print(f"odsmedia serve: {' and '.join(missing)} must be set (use `odsmedia dev` for embedded services)",
              file=sys.stderr)
        return 2
    if not config["secret.key"]:
        print("odsmedia serve: ODS_SECRET_KEY must be set to 32+ random characters, for example the output of "
              "`python3 -c 'import secrets; print(secrets.token_urlsafe(48))'`", file=sys.stderr)
        return 2
    if config["mail.backend"] == "outbox" and "mail.backend" not in config.explicit:
        # The outbox is dev's default; on a server it would keep live sign-in links in files
        # and send nobody anything, so it has to be asked for.
        print("odsmedia serve: set ODS_MAIL_BACKEND (smtp or mailersend; outbox only if meant: it writes "
              "sign-in links to files under the data dir instead of sending them)", file=sys.stderr)
        return 2
    logs.setup(config["log.level"], "text" if config["log.format"] == "text" else "json")
    count = _worker_count(args, config, 0)
    _run(config, count, lambda port: print(f"odsmedia listening on http://{config['http.host']}:{port}"
                                           + (f" ({count} workers)" if count > 1 else ""), flush=True))
    return 0


def cmd_dev(args: argparse.Namespace, config: Config) -> int:
    logs.setup(config["log.level"], "json" if config["log.format"] == "json" else "text")
    if not config["secret.key"]:
        config = config.replace(**{"secret.key": _dev_secret(config.data_dir)})
    services = Services(config)
    coturn = None
    try:
        config = services.resolve(redis=True)
        if config["ice.dev_coturn_port"]:
            config, coturn = _dev_coturn(config)

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

        _run(config, _worker_count(args, config, 1), announce)
    finally:
        if coturn is not None:
            coturn.stop()
        services.close()
    return 0


def _dev_coturn(config: Config):
    """A local coturn for `odsmedia dev` (ice.dev_coturn), or none when it is not installed."""
    from .media.coturn import CoturnConfig, LocalCoturn, binary

    if binary() is None:
        print("odsmedia dev: ODS_ICE_DEV_COTURN_PORT is set but coturn is not installed (apt-get install coturn); "
              "going on without TURN", file=sys.stderr)
        return config, None
    secret = kept(config.data_dir / "coturn.json", lambda text: json.loads(text)["secret"],
                  lambda: secrets.token_urlsafe(32), lambda key: json.dumps({"secret": key}), mode=0o600)
    # Loopback peers: the dev node itself is on 127.0.0.1.  Never in production (docs/operations.md).
    settings = CoturnConfig(secret=secret, port=config["ice.dev_coturn_port"], allow_loopback_peers=True)
    coturn = LocalCoturn(settings, config.data_dir / "services" / "coturn")
    coturn.start()
    print(f"odsmedia dev: coturn on {settings.listen_ip}:{settings.port}", flush=True)
    return config.replace(**{"ice.turn_secret": secret, "ice.turn_urls": ",".join(settings.urls())}), coturn


def cmd_migrate(args: argparse.Namespace, config: Config) -> int:
    services = Services(config)
    try:
        config = services.resolve(redis=False)
        applied = run_async(_migrate_checked(config["database.url"]))
    finally:
        services.close()
    print("applied: " + ", ".join(applied) if applied else "schema up to date")
    return 0


async def _migrated_pool_run(database_url: str, work: Callable) -> object:
    """Migrate, then ``work(pool)`` on a small pool that is closed afterwards."""
    from .storage import connect

    await _migrate_checked(database_url)
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

    from .billing.plans import catalog

    try:
        policy, plans = directory.parse_policy(args.policy)
    except ValueError as exc:
        print(f"odsmedia room create: {exc}", file=sys.stderr)
        return 2
    known = catalog(config).plans
    unknown = [code for code in plans if code not in known]
    if unknown:
        have = ", ".join(sorted(known)) or "none (add [plans.CODE] with a price to the config file)"
        print(f"odsmedia room create: unknown plan code {', '.join(unknown)}; configured plans: {have}",
              file=sys.stderr)
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


def cmd_room_list(args: argparse.Namespace, config: Config) -> int:
    from .rooms import directory

    from recorder import episodes

    async def work(pool):
        live = await episodes.live_room_ids(pool)
        rooms = await directory.listing(pool, everything=True, limit=10_000)
        return sorted(((r, r.id in live) for r in rooms), key=lambda pair: not pair[1])

    rooms = _with_pool(config, work)
    if args.json:
        for room, live in rooms:
            print(json.dumps({**room.public(), "live": live}))
        return 0
    if not rooms:
        print("no rooms yet: odsmedia room create SLUG --title TITLE")
        return 0
    width = max(len(r.slug) for r, _ in rooms)
    for room, live in rooms:
        access = room.access_policy if room.access_policy != "plans" else "plan:" + ",".join(room.access_plans)
        print(f"{room.slug:<{width}}  {'LIVE' if live else '    '}  {access:<12}  {room.title}")
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


def cmd_operator(args: argparse.Namespace, config: Config) -> int:
    from .analytics import operators

    async def work(pool):
        if args.operator_command == "grant":
            await operators.grant(pool, args.email, by="cli")
            return f"{args.email}: operator"
        if args.operator_command == "revoke":
            return f"{args.email}: " + ("no longer an operator" if await operators.revoke(pool, args.email)
                                        else "was not an operator")
        rows = await pool.fetch("SELECT a.email, o.granted_at FROM operators o JOIN accounts a ON a.id = o.account_id "
                                "ORDER BY a.email")
        return "\n".join(f"{r['email']}\t{r['granted_at'].isoformat()}" for r in rows) or "no operators"

    try:
        print(_with_pool(config, work))
    except operators.NoSuchAccount:
        print(f"odsmedia operator: no account with e-mail {args.email!r} (it is created at first sign-in)",
              file=sys.stderr)
        return 1
    return 0


def cmd_account_delete(args: argparse.Namespace, config: Config) -> int:
    from .errors import ApiError
    from .privacy import rights

    async def work(pool):
        account_id, counts = await rights.delete_on_request(pool, args.email, actor="cli", reason=args.reason)
        return {"deleted": True, "account_id": account_id, "removed": counts}

    try:
        result = _with_pool(config, work)
    except ApiError as exc:
        print(f"odsmedia account delete: {exc.reason}: {exc.message}", file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0


def cmd_policy_publish(args: argparse.Namespace, config: Config) -> int:
    from .analytics import policy
    from .mail import make_mailer

    try:
        body = Path(args.file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        print(f"odsmedia policy publish: cannot read {args.file}: {exc}", file=sys.stderr)
        return 2

    async def work(pool):
        published = await policy.publish(pool, body, version=args.version, material=args.material)
        sent = 0
        if published.material:
            mailer = make_mailer(config)
            try:
                sent = await policy.send_pending(pool, mailer, public_url=config.public_url, limit=10**9)
            finally:
                await mailer.close()
        return published, sent

    try:
        published, sent = _with_pool(config, work)
    except policy.PolicyError as exc:
        print(f"odsmedia policy publish: {exc}", file=sys.stderr)
        return 1
    print(f"published version {published.version}" + (f" (material: {sent} notice e-mails sent)"
                                                       if published.material else ""))
    return 0


def cmd_config(args: argparse.Namespace, config: Config) -> int:
    if args.docs:
        print(configmod.markdown_table(), end="")
    else:
        from .billing.plans import catalog

        shown = configmod.describe(config)
        # The plan catalog (rooms sold by plan name these codes): code -> label, Stripe price, seats.
        shown["plans"] = {code: {"label": p.label, "price": p.price, "seats": p.seats}
                          for code, p in catalog(config).plans.items()}
        print(json.dumps(shown, indent=2))
    return 0


def _workers_arg(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("expected a whole number (0: one per core)") from None
    if not 0 <= value <= 1024:
        raise argparse.ArgumentTypeError("expected 0 to 1024")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="odsmedia", description="ODS Media: live rooms, recording, chat.")
    parser.add_argument("--config", help="TOML configuration file (default: $ODS_CONFIG)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("serve", help="run the server against DATABASE_URL and REDIS_URL")
    p.add_argument("--workers", type=_workers_arg, default=None, metavar="N",
                   help="media processes behind the one HTTP port, each a node (default: workers.count, "
                        "0 = one per core; 1: one process, no supervisor)")
    p.set_defaults(func=cmd_serve)
    p = sub.add_parser("dev", help="run with embedded PostgreSQL and Redis and a public room `demo`")
    p.add_argument("--workers", type=_workers_arg, default=None, metavar="N",
                   help="media processes behind the one HTTP port (default 1)")
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
    p = room_sub.add_parser("list", help="list rooms (live first): slug, LIVE, access, title")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=cmd_room_list)

    from recorder.cli import add_commands as add_episode_commands

    add_episode_commands(sub)

    p = sub.add_parser("token", help="mint a bearer token; prints only the token")
    p.add_argument("--room", required=True, help="room slug")
    p.add_argument("--role", required=True, choices=("host", "moderator", "viewer"))
    p.add_argument("--ttl", default="", help="lifetime such as 1h or 7d (default: auth.token_ttl)")
    p.add_argument("--label", default="cli", help="label shown in token listings")
    p.set_defaults(func=cmd_token)

    op = sub.add_parser("operator", help="grant or revoke the operator role")
    op_sub = op.add_subparsers(dest="operator_command", required=True, metavar="ACTION")
    for action, text in (("grant", "make the account with this e-mail an operator"),
                         ("revoke", "take the operator role away")):
        p = op_sub.add_parser(action, help=text)
        p.add_argument("email")
        p.set_defaults(func=cmd_operator)
    p = op_sub.add_parser("list", help="list operators")
    p.set_defaults(func=cmd_operator)

    account = sub.add_parser("account", help="act on accounts")
    account_sub = account.add_subparsers(dest="account_command", required=True, metavar="ACTION")
    p = account_sub.add_parser("delete", help="delete an account on request (audited; same path as self-service)")
    p.add_argument("email")
    p.add_argument("--reason", required=True, help="why (recorded in the audit row), e.g. 'under-16 report'")
    p.set_defaults(func=cmd_account_delete)

    policy = sub.add_parser("policy", help="publish the privacy policy")
    policy_sub = policy.add_subparsers(dest="policy_command", required=True, metavar="ACTION")
    p = policy_sub.add_parser("publish", help="publish FILE as the new version served at /privacy")
    p.add_argument("file")
    p.add_argument("--version", default="", help="version name (default: the 'Last updated:' date in the file)")
    p.add_argument("--material", action="store_true",
                   help="a material change: e-mail every account once and ask signed-in people to acknowledge")
    p.set_defaults(func=cmd_policy_publish)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = configmod.load(file=args.config, dev=args.command == "dev")
    except ConfigError as exc:
        print(f"odsmedia: {exc}", file=sys.stderr)
        return 2
    try:
        return args.func(args, config)
    except StartupError as exc:
        print(f"odsmedia {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
