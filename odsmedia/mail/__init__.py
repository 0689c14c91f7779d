"""Outgoing e-mail: one ``Message`` shape, backends chosen by ``mail.backend``.

- ``outbox``: every message becomes an ``.eml`` file under ``<data dir>/outbox``
  (the development default; tests read sign-in links from it).
- ``smtp``: the standard library's smtplib, run in a worker thread so the
  event loop never blocks on a slow relay.
- ``mailersend``: MailerSend's HTTP API through the app's aiohttp client.
"""

from __future__ import annotations

from .backends import MailError, Mailer, MailerSendMailer, OutboxMailer, SmtpMailer, make_mailer
from .message import Message
from .templates import render

__all__ = [
    "MailError", "Mailer", "MailerSendMailer", "Message", "OutboxMailer", "SmtpMailer", "make_mailer", "render",
]
