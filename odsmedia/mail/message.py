"""An e-mail message independent of how it is sent."""

from __future__ import annotations

import email.utils
from dataclasses import dataclass
from email.message import EmailMessage


@dataclass(frozen=True)
class Message:
    to: str
    subject: str
    text: str
    # Tags let templates be told apart in tests and provider dashboards.
    tag: str = ""

    def to_email(self, sender: str) -> EmailMessage:
        msg = EmailMessage()
        msg["From"] = sender
        msg["To"] = self.to
        msg["Subject"] = self.subject
        msg["Date"] = email.utils.formatdate(usegmt=True)
        msg["Message-ID"] = email.utils.make_msgid(domain=email.utils.parseaddr(sender)[1].partition("@")[2] or None)
        if self.tag:
            msg["X-ODS-Template"] = self.tag
        msg.set_content(self.text)
        return msg
