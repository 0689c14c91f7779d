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
    for args in ([], ["serve"], ["dev"], ["migrate"], ["room"], ["room", "create"], ["token"]):
        out = run_cli(env, *args, "--help")
        assert out.returncode == 0, (args, out.stderr)
        assert "usage: odsmedia" in out.stdout


def test_room_create_and_token(service_urls, tmp_path):
    env = odsmedia_env(service_urls, tmp_path)
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
