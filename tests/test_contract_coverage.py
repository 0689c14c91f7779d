"""Every contract docs/protocol.md and docs/recording.md state is exercised by some test,
and every command `odsmedia --help` lists is run by some test.

The tables are parsed from the docs, so a message type, error code, close code or
HTTP method added there without a test fails here.  "Exercised" is a static scan:
the name appears as a string literal (or the close code as a number) in another
test module.  That is weaker than recording what the suite really sends and
receives, but it needs no full-suite run to answer and it names what is missing.

There is no list of excused gaps: a documented contract with no test fails.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from odsmedia.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
PROTOCOL = (ROOT / "docs" / "protocol.md").read_text()
RECORDING = (ROOT / "docs" / "recording.md").read_text()
TICKED = re.compile(r"`([a-z][a-z0-9_]*)`")

def section(text: str, heading: str) -> str:
    """The body of the markdown section ``heading`` (up to the next heading of any level)."""
    start = text.index(heading) + len(heading)
    following = re.search(r"^#{1,6} ", text[start:], re.M)
    return text[start:start + following.start()] if following else text[start:]


def table_rows(body: str) -> list[list[str]]:
    rows = []
    for line in body.splitlines():
        if line.startswith("|") and not line.startswith("|---"):
            rows.append([cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip("|"))])
    return rows[1:] if rows else rows   # the header row


def signaling_contracts() -> set[str]:
    names: set[str] = set()
    for row in table_rows(section(PROTOCOL, "### Errors")):
        names |= {f"signaling error {n}" for n in TICKED.findall(row[0])}
    client = section(PROTOCOL, "### Client -> server")
    for heading in re.findall(r"^\*\*([a-z /]+)\*\*", client, re.M):
        names |= {f"signaling request {n.strip()}" for n in heading.split("/")}
    for row in table_rows(section(PROTOCOL, "### Server -> client events")):
        names |= {f"signaling event {n}" for n in TICKED.findall(row[0])}
    return names


def chat_contracts() -> set[str]:
    names: set[str] = set()
    requests = section(PROTOCOL, "### Requests (client -> server)")
    for row in table_rows(requests):
        names |= {f"chat request {n}" for n in re.findall(r'"type": "([a-z_]+)"', row[0])}
        names |= {f"chat request {n}" for n in re.findall(r'"type": "[a-z_]+" \\\| "([a-z_]+)"', row[0])}
        names |= {f"chat refusal {n}" for n in TICKED.findall(row[3])}
    names |= {f"chat refusal {n}" for n in TICKED.findall(requests.split("|---|")[-1].split("\n\n", 1)[1])}
    events = section(PROTOCOL, "### Live events (server -> client)")
    for row in table_rows(events):
        names |= {f"chat event {n}" for n in TICKED.findall(row[0])}
        names |= {f"chat error {n}" for n in re.findall(r'"([a-z_]+)"', row[1])}
    return names


def close_codes() -> set[str]:
    return {f"close {code}" for code in re.findall(r"`?\b(4\d\d\d|1011|1001)\b`?", PROTOCOL)} - {"close 4000"}


def http_methods() -> set[str]:
    """Each (method, endpoint) the docs name: WHIP/WHEP sessions and the replay API."""
    names = {f"http {m} {p}" for m, p in re.findall(r"`(GET|POST|DELETE|PATCH|HEAD|OPTIONS) (/[^`]*)`",
                                                    PROTOCOL + RECORDING)}
    whip = section(PROTOCOL, "## WHIP: `POST /rooms/{slug}/whip` (RFC 9725)")
    names |= {f"http {m} whip session" for m in re.findall(r"`(DELETE|PATCH|OPTIONS)`", whip)}
    return names


def documented() -> set[str]:
    return signaling_contracts() | chat_contracts() | close_codes() | http_methods()


def other_test_sources() -> str:
    return "\n".join(p.read_text() for p in sorted((ROOT / "tests").glob("test_*.py"))
                     if p.name != Path(__file__).name)


def exercised(name: str, source: str) -> bool:
    kind, _, rest = name.partition(" ")
    if kind == "close":
        return re.search(rf"\b{rest}\b", source) is not None
    if kind == "http":
        method, _, path = rest.partition(" ")
        call = rf"\.{method.lower()}\(|\"{method}\"" + (r"|ws_connect\(" if method == "GET" else "")
        calls = re.findall(rf"(?:{call})[^\n]*", source)
        path = path.split("?", 1)[0]
        if path == "whip session":
            return any("whip" in c.lower() for c in calls)   # a call on a WHIP session URL, not a WHEP one
        # The last fixed segment of the route (e.g. "whip", "episodes", "index.m3u8").
        words = [w for w in re.split(r"[/{}]", path) if w and not w.startswith(("slug", "id", "init", "NNNNN"))]
        marker = words[-1] if words else ""
        return any(marker in c for c in calls) or (method in ("GET", "HEAD") and bool(calls) and not marker)
    word = name.rsplit(" ", 1)[1]
    if " request " in f" {name} ":
        return re.search(rf"""["']type["']: ["']{word}["']""", source) is not None
    return f'"{word}"' in source or f"'{word}'" in source


def test_the_contract_tables_parse_to_something():
    names = documented()
    # Guards against a docs reshuffle silently emptying the check.
    assert {"signaling error invalid_candidate", "signaling request unsubscribe", "signaling request candidate",
            "chat request ping", "chat refusal slow_mode", "chat error too_slow", "close 4008", "close 4408",
            "http PATCH whip session", "http OPTIONS whip session"} <= names
    assert len(names) > 120


def test_every_documented_contract_is_exercised():
    source = other_test_sources()
    missing = {name for name in documented() if not exercised(name, source)}
    assert sorted(missing) == [], "documented but no test exercises it"


def test_a_documented_code_no_test_names_fails_the_check():
    source = other_test_sources()
    for name in ("signaling error code_only_the_docs_know", "chat error code_only_the_docs_know", "close 4999",
                 "signaling request request_only_the_docs_know", "http PATCH /rooms/{slug}/nowhere"):
        assert not exercised(name, source), name


def cli_commands() -> set[tuple[str, ...]]:
    """Every runnable command path of the CLI: ("migrate",), ("room", "create"), ..."""
    def walk(parser: argparse.ArgumentParser, path: tuple[str, ...]) -> set[tuple[str, ...]]:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            return {path}
        return {p for action in subs for name, child in action.choices.items() for p in walk(child, (*path, name))}
    return walk(build_parser(), ())


# A line that starts the CLI: the module (conftest.ODSMEDIA), test_cli.run_cli or a server start helper.
INVOCATION = re.compile(r"ODSMEDIA|\brun_cli\b|\b_start\(")


def cli_invocations(source: str) -> set[tuple[str, ...]]:
    """Each run of consecutive string literals on a line that invokes the CLI, and its prefixes."""
    runs: set[tuple[str, ...]] = set()
    for line in source.splitlines():
        if INVOCATION.search(line):
            words = re.findall(r"""["']([a-z][a-z-]*)["']""", line)
            runs |= {tuple(words[i:j]) for i in range(len(words)) for j in range(i + 1, min(i + 2, len(words)) + 1)}
    return runs


def test_every_cli_command_is_run_by_a_test():
    commands = cli_commands()
    assert {("migrate",), ("config",), ("episode", "finalize"), ("room", "create"), ("policy", "publish")} <= commands
    assert len(commands) > 15
    run = cli_invocations(other_test_sources())
    assert sorted(c for c in commands if c not in run) == [], "a CLI command no test runs"


def test_a_cli_command_no_test_runs_fails_the_check():
    run = cli_invocations(other_test_sources())
    assert ("episode", "finalize") in run
    assert ("episode", "command-only-the-cli-knows") not in run and ("command-only-the-cli-knows",) not in run
    # A name in a line that does not start the CLI does not count.
    assert not cli_invocations('frames = ["episode", "finalize"]')


def metric_families() -> set[str]:
    """Every ods_* family a node's /metrics can carry: the app's, the recorder's and the relays'."""
    from prometheus_client import REGISTRY

    import odsmedia.app  # noqa: F401  (registers the app's families and the live collector)
    import recorder.metrics  # noqa: F401
    return {family.name for family in REGISTRY.collect() if family.name.startswith("ods_")}


def test_every_metric_family_is_named_by_a_test():
    families = metric_families()
    assert {"ods_http_requests", "ods_recorder_uploads", "ods_relay_pipe_rebuilds", "ods_node_info"} <= families
    source = other_test_sources()
    # A sample's name: the family's, or with the suffix a counter or histogram gives it.
    named = {f for f in families if re.search(rf"\b{f}(?:_total|_count|_sum|_bucket)?\b", source)}
    assert sorted(families - named) == [], "a metric family no test names"
