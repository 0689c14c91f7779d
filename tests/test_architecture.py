"""The seams, checked: who may import whom, who writes each table, where channels are named.

docs/architecture.md ("Who owns what") is the prose of these tables.  The
imports are read from the source with ``ast`` (``TYPE_CHECKING`` imports
count too: a type is a dependency), so a new reach across a seam fails here
rather than in review.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from conftest import REPO

PACKAGES = ("odsmedia", "signaling", "recorder", "web")

# Modules every feature may use; they import nothing of any feature.
CORE = {
    "odsmedia", "odsmedia.bus", "odsmedia.channels", "odsmedia.config", "odsmedia.errors", "odsmedia.files",
    "odsmedia.gate", "odsmedia.keys", "odsmedia.logs", "odsmedia.metrics", "odsmedia.wire", "odsmedia.names",
    "odsmedia.reauth", "odsmedia.node",
    "odsmedia.storage", "odsmedia.storage.db", "odsmedia.rooms.directory", "odsmedia.media.frame",
    "odsmedia.mail", "odsmedia.mail.backends", "odsmedia.mail.message", "odsmedia.mail.templates",
}
# The composition root and the command line put the features together; they may import anything.
WIRING = {"odsmedia.app", "odsmedia.cli", "odsmedia.__main__", "odsmedia.embedded", "odsmedia.workers", "recorder.cli"}

# Feature -> the modules other features may import (table owners, the feature object and its key,
# the types an observer or an edge is handed).  Everything else is the feature's inside.
PUBLIC = {
    "auth": {"odsmedia.auth.accounts", "odsmedia.auth.events", "odsmedia.auth.links", "odsmedia.auth.sessions",
             "odsmedia.auth.tokens", "odsmedia.auth.service", "odsmedia.auth.sessions_web",
             "odsmedia.auth.ratelimit"},
    # Per-network caps on open sockets and sessions (chat, signaling).
    "abuse": {"odsmedia.abuse"},
    "billing": {"odsmedia.billing.customers", "odsmedia.billing.orgs", "odsmedia.billing.service"},
    "chat": {"odsmedia.chat.store", "odsmedia.chat.feature"},
    "privacy": {"odsmedia.privacy.region", "odsmedia.privacy.requestlog"},
    # The sink is the one call features make; operators and policy are read by privacy's export.
    "analytics": {"odsmedia.analytics.sink", "odsmedia.analytics.operators", "odsmedia.analytics.policy"},
    "rooms": {"odsmedia.rooms.sfu", "odsmedia.rooms.errors", "odsmedia.rooms.room", "odsmedia.rooms.participant",
              "odsmedia.rooms.publication", "odsmedia.rooms.transport", "odsmedia.media.ice",
              "odsmedia.media.turn"},
    "recorder": {"recorder.episodes", "recorder.recorder"},
    "signaling": set(),
    "web": {"web.pages"},
}

# Table -> the one module that writes it (INSERT, UPDATE, DELETE).
TABLE_OWNERS = {
    "accounts": "odsmedia/auth/accounts.py",
    "sessions": "odsmedia/auth/sessions.py",
    "session_events": "odsmedia/auth/events.py",
    "magic_links": "odsmedia/auth/links.py",
    "api_tokens": "odsmedia/auth/tokens.py",
    "rooms": "odsmedia/rooms/directory.py",
    "room_members": "odsmedia/rooms/directory.py",
    "episodes": "recorder/episodes.py",
    "segments": "recorder/episodes.py",
    "episode_purges": "recorder/episodes.py",
    "episode_renditions": "recorder/episodes.py",
    "chat_items": "odsmedia/chat/store.py",
    "chat_votes": "odsmedia/chat/store.py",
    "chat_sanctions": "odsmedia/chat/store.py",
    "chat_rooms": "odsmedia/chat/store.py",
    "moderation_actions": "odsmedia/chat/moderation.py",
    "billing_customers": "odsmedia/billing/customers.py",
    "subscriptions": "odsmedia/billing/webhooks.py",
    "stripe_events": "odsmedia/billing/webhooks.py",
    "organizations": "odsmedia/billing/orgs.py",
    "org_members": "odsmedia/billing/orgs.py",
    "request_logs": "odsmedia/privacy/requestlog.py",
    "analytics_daily": "odsmedia/privacy/requestlog.py",
    "schema_migrations": "odsmedia/storage/db.py",
    "account_deletions": "odsmedia/privacy/rights.py",
    "analytics_salts": "odsmedia/analytics/store.py",
    "analytics_visitors": "odsmedia/analytics/store.py",
    "analytics_room_minutes": "odsmedia/analytics/store.py",
    "analytics_concurrency": "odsmedia/analytics/store.py",
    "analytics_room_days": "odsmedia/analytics/store.py",
    "analytics_episodes": "odsmedia/analytics/store.py",
    "analytics_replay_buckets": "odsmedia/analytics/store.py",
    "operators": "odsmedia/analytics/operators.py",
    "policy_versions": "odsmedia/analytics/policy.py",
    "policy_acknowledgements": "odsmedia/analytics/policy.py",
    "policy_mailings": "odsmedia/analytics/policy.py",
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_module(name: str) -> bool:
    path = REPO.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def sources() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (REPO / package).rglob("*.py"))


def imports_of(path: Path) -> set[str]:
    """The project modules ``path`` imports (relative imports resolved, ``from pkg import mod`` as ``pkg.mod``)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            submodules = {f"{target}.{a.name}" for a in node.names if is_module(f"{target}.{a.name}")}
            found |= submodules if len(submodules) == len(node.names) else submodules | {target}
    return {m for m in found if m.split(".")[0] in PACKAGES}


def feature_of(module: str) -> str | None:
    """The feature a module belongs to; None for core and wiring."""
    if module in CORE or module in WIRING:
        return None
    parts = module.split(".")
    if parts[0] != "odsmedia" or len(parts) == 1:
        return parts[0]
    # odsmedia.media is the SFU's aiortc integration: one feature with odsmedia.rooms.
    return "rooms" if parts[1] == "media" else parts[1]


def test_core_imports_no_feature():
    reaches = [(module_name(p), m) for p in sources() if module_name(p) in CORE
               for m in imports_of(p) if m not in CORE]
    assert reaches == []


def test_the_gate_imports_only_core():
    gate = REPO / "odsmedia" / "gate.py"
    assert imports_of(gate) <= CORE
    assert not [m for m in imports_of(gate) if m.startswith(("odsmedia.auth", "odsmedia.chat", "odsmedia.billing"))]


def test_features_reach_other_features_only_through_their_public_modules():
    assert set(PUBLIC) >= {feature_of(module_name(p)) for p in sources()} - {None}
    reaches = []
    for path in sources():
        importer = module_name(path)
        own = feature_of(importer)
        if own is None:
            continue
        for imported in imports_of(path):
            other = feature_of(imported)
            if other is not None and other != own and imported not in PUBLIC[other]:
                reaches.append((importer, imported))
    assert reaches == []


def test_routes_modules_are_loaded_only_by_the_application():
    importers = [(module_name(p), m) for p in sources() for m in imports_of(p)
                 if m.endswith(".routes") and module_name(p) not in WIRING
                 and feature_of(module_name(p)) != feature_of(m)]
    assert importers == []


def test_runtime_packages_do_not_ship_test_support():
    text = "\n".join(p.read_text() for p in sources())
    assert "testsupport" not in text and "import pytest" not in text
    assert not (REPO / "odsmedia" / "media" / "testing.py").exists()


_WRITE = re.compile(r"\b(?:INSERT INTO|UPDATE|DELETE FROM)\s+([a-z_]+)\b")


def test_every_table_has_one_writer():
    created = set()
    for migration in (REPO / "odsmedia" / "storage" / "migrations").glob("*.sql"):
        created |= set(re.findall(r"CREATE TABLE(?: IF NOT EXISTS)?\s+([a-z_]+)", migration.read_text()))
    assert created - {"schema_migrations"} <= set(TABLE_OWNERS), "a table without an owner"
    writers: dict[str, set[str]] = {}
    for path in sources():
        for table in _WRITE.findall(path.read_text()):
            writers.setdefault(table, set()).add(str(path.relative_to(REPO)))
    wrong = {table: paths for table, paths in writers.items() if paths != {TABLE_OWNERS.get(table)}}
    assert wrong == {}


def test_channels_are_named_in_one_module():
    """Bus publish/subscribe calls take their channel from odsmedia.channels, and no other module spells one."""
    spelled, unnamed = [], []
    for path in sources():
        if path.name == "channels.py" and path.parent.name == "odsmedia":
            continue
        tree = ast.parse(path.read_text())
        docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                      if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                      and node.body and isinstance(node.body[0], ast.Expr)}
        if any(isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
               and _CHANNEL.search(node.value) for node in ast.walk(tree)):
            spelled.append(str(path.relative_to(REPO)))
        from_channels = {alias.asname or alias.name for node in ast.walk(tree)
                         if isinstance(node, ast.ImportFrom) and (node.module or "").endswith("channels")
                         for alias in node.names}
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in ("publish", "subscribe") and _is_bus(node.func.value)):
                continue
            channel = node.args[0] if node.args else None
            named = (isinstance(channel, ast.Name) and channel.id in from_channels) or (
                isinstance(channel, ast.Call) and isinstance(channel.func, ast.Name)
                and channel.func.id in from_channels)
            if not named:
                unnamed.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert spelled == [] and unnamed == []


_CHANNEL = re.compile(r":control$|^room:.*:chat$|:chat$|^auth:sessions$|^billing:invalidate$")


def _is_bus(node: ast.expr) -> bool:
    if isinstance(node, ast.Name):
        return node.id == "bus"
    if isinstance(node, ast.Attribute):
        return node.attr == "bus"
    return isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Name) and node.slice.id == "BUS"
