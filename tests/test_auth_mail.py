"""Mail backends against local stand-ins: an SMTP listener and a MailerSend-shaped HTTP API."""

from __future__ import annotations

import asyncio
import email
from email import policy

from aiohttp import web

from odsmedia.mail import MailerSendMailer, MailError, OutboxMailer, SmtpMailer, render


class SmtpSink:
    """Just enough SMTP (RFC 5321) to accept messages on loopback."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], bytes]] = []
        self.received = asyncio.Event()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sender, rcpts = "", []
        writer.write(b"220 sink ESMTP\r\n")
        while True:
            line = await asyncio.wait_for(reader.readline(), 5)
            if not line:
                break
            verb = line[:4].upper()
            if verb in (b"EHLO", b"HELO"):
                writer.write(b"250 sink\r\n")
            elif verb == b"MAIL":
                sender = line.decode().split(":", 1)[1].strip()
                writer.write(b"250 ok\r\n")
            elif verb == b"RCPT":
                rcpts.append(line.decode().split(":", 1)[1].strip())
                writer.write(b"250 ok\r\n")
            elif verb == b"DATA":
                writer.write(b"354 go\r\n")
                await writer.drain()
                data = await asyncio.wait_for(reader.readuntil(b"\r\n.\r\n"), 5)
                self.messages.append((sender, rcpts, data[:-5]))
                self.received.set()
                writer.write(b"250 queued\r\n")
            elif verb == b"QUIT":
                writer.write(b"221 bye\r\n")
                await writer.drain()
                break
            else:
                writer.write(b"502 no\r\n")
            await writer.drain()
        writer.close()


def magic_message():
    return render("magic_link", "someone@example.test", url="http://127.0.0.1/auth/confirm#token=a.b", minutes=15)


async def test_smtp_backend_delivers():
    sink = SmtpSink()
    server = await asyncio.start_server(sink.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        mailer = SmtpMailer("127.0.0.1", port, "ODS Media <no-reply@ods.test>")
        await mailer.send(magic_message())
        assert sink.received.is_set()
        sender, rcpts, data = sink.messages[0]
        assert sender == "<no-reply@ods.test>" and rcpts == ["<someone@example.test>"]
        msg = email.message_from_bytes(data, policy=policy.default)
        assert msg["Subject"] == "Your ODS Media sign-in link"
        assert "http://127.0.0.1/auth/confirm#token=a.b" in msg.get_content()
    finally:
        server.close()
        await server.wait_closed()


async def test_smtp_backend_reports_unreachable_relay():
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    mailer = SmtpMailer("127.0.0.1", port, "no-reply@ods.test", timeout=2)
    try:
        await mailer.send(magic_message())
    except MailError as exc:
        assert "SMTP" in str(exc)
    else:
        raise AssertionError("expected MailError")


async def test_mailersend_backend(aiohttp_server):
    seen: list[tuple[str, dict]] = []

    async def send(request: web.Request) -> web.Response:
        seen.append((request.headers.get("Authorization", ""), await request.json()))
        if request.headers.get("Authorization") != "Bearer ms-key":
            return web.json_response({"message": "Unauthenticated."}, status=401)
        return web.Response(status=202, headers={"X-Message-Id": "m1"})

    app = web.Application()
    app.router.add_post("/v1/email", send)
    server = await aiohttp_server(app)
    base = str(server.make_url("/")).rstrip("/")
    mailer = MailerSendMailer(base, "ms-key", "ODS Media <no-reply@ods.test>")
    try:
        await mailer.send(magic_message())
    finally:
        await mailer.close()
    auth, body = seen[0]
    assert auth == "Bearer ms-key"
    assert body["from"] == {"email": "no-reply@ods.test", "name": "ODS Media"}
    assert body["to"] == [{"email": "someone@example.test"}]
    assert body["subject"] == "Your ODS Media sign-in link" and "token=a.b" in body["text"]
    assert body["tags"] == ["magic_link"]

    wrong = MailerSendMailer(base, "bad-key", "no-reply@ods.test")
    try:
        await wrong.send(magic_message())
    except MailError as exc:
        assert "401" in str(exc)
    else:
        raise AssertionError("expected MailError")
    finally:
        await wrong.close()
    missing = MailerSendMailer(base, "", "no-reply@ods.test")
    try:
        await missing.send(magic_message())
    except MailError as exc:
        assert "MAILERSEND_API_KEY" in str(exc)
    else:
        raise AssertionError("expected MailError")


async def test_outbox_files_are_complete(tmp_path):
    mailer = OutboxMailer(tmp_path / "outbox", "no-reply@ods.test")
    await asyncio.gather(*(mailer.send(magic_message()) for _ in range(5)))
    files = sorted((tmp_path / "outbox").iterdir())
    assert len(files) == 5 and all(f.suffix == ".eml" for f in files)  # no temp files left
    for f in files:
        msg = email.message_from_bytes(f.read_bytes(), policy=policy.default)
        assert msg["To"] == "someone@example.test" and msg["X-ODS-Template"] == "magic_link"


def test_billing_templates_render():
    failed = render("payment_failed", "a@example.test", plan="Pro", grace_until="2026-12-01",
                    portal_url="http://127.0.0.1/account")
    assert "Pro" in failed.subject and "2026-12-01" in failed.text
    canceled = render("subscription_canceled", "a@example.test", plan="Pro", ends_at="2026-12-31",
                      plans_url="http://127.0.0.1/plans")
    assert "2026-12-31" in canceled.text
