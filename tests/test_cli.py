"""The CLI as a user runs it: subprocesses against real services."""

import json
import os
import re
import signal
import subprocess
import time
import urllib.error
import urllib.request


from conftest import ODSMEDIA, REPO, odsmedia_env, unique_slug


def run_cli(env, *args, timeout=60):
    return subprocess.run(ODSMEDIA + list(args), env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO)


def test_help_everywhere(service_urls, tmp_path):
    env = odsmedia_env(service_urls, tmp_path)
    commands = ([], ["serve"], ["dev"], ["migrate"], ["room"], ["room", "create"], ["token"])
    # The real entry point each time, started together: each process spends its time importing.
    running = [(args, subprocess.Popen(ODSMEDIA + [*args, "--help"], env=env, cwd=REPO, text=True,
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)) for args in commands]
    for args, process in running:
        stdout, stderr = process.communicate(timeout=120)
        assert process.returncode == 0, (args, stderr)
        assert stdout.startswith(" ".join(["usage: odsmedia", *args]) + " ["), (args, stdout[:200])


PLANS_TOML = """
[plans.pro]
price = "price_pro"
label = "Pro"

[plans.team]
price = "price_team"
label = "Team"
seats = true
"""


def test_room_create_and_token(service_urls, tmp_path):
    (tmp_path / "plans.toml").write_text(PLANS_TOML)
    env = odsmedia_env(service_urls, tmp_path, ODS_CONFIG=str(tmp_path / "plans.toml"))
    slug = unique_slug("cli")
    out = run_cli(env, "room", "create", slug, "--title", "CLI room", "--policy", "plan:pro,team")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"slug": slug, "title": "CLI room", "access": {"policy": "plans", "plans": ["pro", "team"]}}
    again = run_cli(env, "room", "create", slug)
    assert again.returncode == 1 and "room_exists" in again.stderr
    tok = run_cli(env, "token", "--room", slug, "--role", "host", "--ttl", "1h")
    assert tok.returncode == 0, tok.stderr
    assert re.fullmatch(r"ods_[A-Za-z0-9_-]{43}\n", tok.stdout)
    missing = run_cli(env, "token", "--room", "no-such-room-x", "--role", "viewer")
    assert missing.returncode == 1 and missing.stdout == ""


def test_bad_policy_and_ttl_are_refused(service_urls, tmp_path):
    env = odsmedia_env(service_urls, tmp_path)
    out = run_cli(env, "room", "create", unique_slug(), "--policy", "vip")
    assert out.returncode == 2 and "policy must be" in out.stderr
    out = run_cli(env, "token", "--room", "demo", "--role", "host", "--ttl", "soon")
    assert out.returncode == 2 and "--ttl" in out.stderr


def test_mistyped_config_is_one_line_naming_the_key(service_urls, tmp_path):
    env = odsmedia_env(service_urls, tmp_path, ODS_HTTP_PORT="80a")
    out = run_cli(env, "dev")
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "ODS_HTTP_PORT" in lines[0] and "integer" in lines[0]


def test_serve_refuses_without_service_urls(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env["ODS_DATA_DIR"] = str(tmp_path)
    out = run_cli(env, "serve")
    assert out.returncode == 2
    assert "DATABASE_URL and REDIS_URL must be set" in out.stderr


def _get(url, timeout=2):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def _start(env, *args):
    proc = subprocess.Popen(ODSMEDIA + list(args), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=REPO)
    deadline = time.monotonic() + 90
    lines = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        match = re.search(r"listening on (http://\S+)", line)
        if match:
            return proc, match.group(1)
    proc.kill()
    raise AssertionError("server did not start: " + "".join(lines) + proc.stderr.read())


def test_dev_with_embedded_services(tmp_path):
    """The README's first command's core: no URLs configured -> embedded services, readyz 200;
    a CLI command shares them; killing the embedded Redis makes readyz 503 naming it;
    SIGTERM exits 0 and stops the embedded servers."""
    data = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ODS_") and k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(ODS_DATA_DIR=str(data), ODS_HTTP_PORT="0", PYTHONUNBUFFERED="1")
    proc, base = _start(env, "dev")
    try:
        status, body = _get(base + "/readyz")
        assert status == 200, body
        # A CLI command attaches to the same embedded PostgreSQL (the demo room exists there).
        tok = run_cli(env, "token", "--room", "demo", "--role", "host")
        assert tok.returncode == 0, tok.stderr
        assert tok.stdout.startswith("ods_")
        assert _get(base + "/readyz")[0] == 200
        state = json.loads((data / "services" / "state.json").read_text())
        # Its own session: a terminal's Ctrl-C reaches dev, which releases its room claims
        # in Redis before it stops Redis, never Redis first.
        assert os.getsid(state["redis_pid"]) != os.getsid(proc.pid)
        os.kill(state["redis_pid"], signal.SIGKILL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            status, body = _get(base + "/readyz", timeout=5)
            if status == 503:
                break
        assert status == 503
        assert body["down"] == ["redis"]
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=60)
    assert rc == 0
    pg_pid_file = data / "services" / "postgres" / "postmaster.pid"
    assert not pg_pid_file.exists()


def test_plans_rooms_and_config_in_words(service_urls, tmp_path):
    (tmp_path / "plans.toml").write_text(PLANS_TOML)
    env = odsmedia_env(service_urls, tmp_path, ODS_CONFIG=str(tmp_path / "plans.toml"))
    slug = unique_slug("cli")
    out = run_cli(env, "room", "create", slug, "--policy", "plan:pro,gold")
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.strip() == ("odsmedia room create: unknown plan code gold; configured plans: pro, team")
    bare = odsmedia_env(service_urls, tmp_path)
    out = run_cli(bare, "room", "create", slug, "--policy", "plan:pro")
    assert out.returncode == 2 and "configured plans: none" in out.stderr
    assert run_cli(env, "room", "create", slug, "--title", "Listed room", "--policy", "plan:pro").returncode == 0
    listed = run_cli(env, "room", "list")
    assert listed.returncode == 0, listed.stderr
    line = next(line for line in listed.stdout.splitlines() if line.startswith(slug + " "))
    assert line.split() == [slug, "plan:pro", "Listed", "room"]
    rows = [json.loads(line) for line in run_cli(env, "room", "list", "--json").stdout.splitlines()]
    assert {"slug": slug, "title": "Listed room", "access": {"policy": "plans", "plans": ["pro"]},
            "live": False} in rows
    shown = json.loads(run_cli(env, "config").stdout)
    assert shown["plans"] == {"pro": {"label": "Pro", "price": "price_pro", "seats": False},
                              "team": {"label": "Team", "price": "price_team", "seats": True}}


def test_startup_problems_are_one_line_naming_the_setting(service_urls, tmp_path):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        out = run_cli(odsmedia_env(service_urls, tmp_path, ODS_HTTP_PORT=str(port)), "serve")
    assert out.returncode == 2
    assert out.stderr.strip() == (f"odsmedia serve: port {port} on 127.0.0.1 is already in use (ODS_HTTP_PORT): "
                                  "stop the other server or set ODS_HTTP_PORT to a free port (0 picks one).")
    cases = [("DATABASE_URL", "postgresql://postgres:hunter2@127.0.0.1:9/nowhere", "PostgreSQL at 127.0.0.1:9"),
             ("REDIS_URL", "redis://127.0.0.1:9/0", "Redis at 127.0.0.1:9")]
    for setting, url, what in cases:
        for command in ("serve", "dev"):
            out = run_cli(odsmedia_env(service_urls, tmp_path, **{setting: url}), command)
            lines = out.stderr.strip().splitlines()
            assert out.returncode == 2 and len(lines) == 1, (command, out.stderr)
            assert lines[0].startswith(f"odsmedia {command}: cannot ") and what in lines[0]
            assert f"({setting})" in lines[0] and "hunter2" not in lines[0]
    env = odsmedia_env(service_urls, tmp_path)
    env.pop("ODS_SECRET_KEY")
    out = run_cli(env, "serve")
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1
    assert out.stderr.startswith("odsmedia serve: ODS_SECRET_KEY must be set")
