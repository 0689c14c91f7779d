"""Mail backends. Each ``send`` either delivers (or hands off) or raises MailError."""

from __future__ import annotations

import asyncio
import email.utils
import logging
import os
import smtplib
import time
import uuid
from pathlib import Path
from typing import Protocol

import aiohttp

from ..config import Config
from .message import Message

log = logging.getLogger("odsmedia.mail")


class MailError(RuntimeError):
    """The backend could not hand the message off."""


class Mailer(Protocol):
    async def send(self, message: Message) -> None: ...

    async def close(self) -> None: ...


class OutboxMailer:
    """Writes ``<outbox>/<time>-<id>.eml``; the file appears complete or not at all.

    A message holds a live sign-in link: the directory is 0700 and each file 0600,
    whatever the umask."""

    def __init__(self, directory: Path, sender: str) -> None:
        self.directory = directory
        self.sender = sender

    def _write(self, data: bytes) -> Path:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.directory, 0o700)
        name = f"{time.time_ns()}-{uuid.uuid4().hex[:8]}.eml"
        tmp = self.directory / ("." + name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, self.directory / name)
        return self.directory / name

    async def send(self, message: Message) -> None:
        data = message.to_email(self.sender).as_bytes()
        try:
            path = await asyncio.to_thread(self._write, data)
        except OSError as exc:
            raise MailError(f"outbox write failed: {exc}") from exc
        # Where to find it (a dev's sign-in link); the path carries no address.
        log.info("mail written", extra={"subject": message.subject, "path": str(path)})

    async def close(self) -> None:
        return None


class SmtpMailer:
    def __init__(self, host: str, port: int, sender: str, *, starttls: bool = False,
                 username: str = "", password: str = "", timeout: float = 15.0) -> None:
        self.host, self.port, self.sender = host, port, sender
        self.starttls, self.username, self.password, self.timeout = starttls, username, password, timeout

    def _send(self, msg) -> None:
        with smtplib.SMTP(self.host, self.port, timeout=self.timeout) as smtp:
            if self.starttls:
                smtp.starttls()
            if self.username:
                smtp.login(self.username, self.password)
            smtp.send_message(msg)

    async def send(self, message: Message) -> None:
        try:
            await asyncio.to_thread(self._send, message.to_email(self.sender))
        except (OSError, smtplib.SMTPException) as exc:
            raise MailError(f"SMTP delivery failed: {exc}") from exc

    async def close(self) -> None:
        return None


class MailerSendMailer:
    """POST /v1/email (https://developers.mailersend.com/api/v1/email.html); 202 means queued."""

    def __init__(self, base_url: str, api_key: str, sender: str, *, timeout: float = 15.0) -> None:
        self.url = base_url.rstrip("/") + "/v1/email"
        self.api_key = api_key
        name, addr = email.utils.parseaddr(sender)
        self.sender = {"email": addr, **({"name": name} if name else {})}
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    async def send(self, message: Message) -> None:
        if not self.api_key:
            raise MailError("MAILERSEND_API_KEY is not set")
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self.timeout)
        body = {
            "from": self.sender,
            "to": [{"email": message.to}],
            "subject": message.subject,
            "text": message.text,
        }
        if message.tag:
            body["tags"] = [message.tag]
        try:
            async with self._session.post(
                self.url, json=body, headers={"Authorization": f"Bearer {self.api_key}"}
            ) as resp:
                if resp.status not in (200, 202):
                    detail = (await resp.text())[:200]
                    raise MailError(f"MailerSend answered {resp.status}: {detail}")
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise MailError(f"MailerSend unreachable: {exc}") from exc

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def make_mailer(config: Config) -> Mailer:
    backend = config["mail.backend"]
    sender = config["mail.from"]
    if backend == "smtp":
        return SmtpMailer(
            config["mail.smtp_host"], config["mail.smtp_port"], sender,
            starttls=config["mail.smtp_starttls"], username=config["mail.smtp_username"],
            password=config["mail.smtp_password"],
        )
    if backend == "mailersend":
        return MailerSendMailer(config["mail.mailersend_base_url"], config["mail.mailersend_api_key"], sender)
    return OutboxMailer(config.data_dir / "outbox", sender)
