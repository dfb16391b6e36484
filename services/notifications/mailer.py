"""Sending mail: one interface, the backend chosen by ``MAIL.URL``.

- ``smtp://[user:pass@]host[:port][?starttls=true]`` plain SMTP (port 25 by
  default), upgraded with STARTTLS when asked;
- ``smtps://[user:pass@]host[:port]`` SMTP over implicit TLS (port 465);
- ``file://<dir>`` each message written to ``<dir>`` as an ``.eml`` file
  (``file://var/mail`` is relative to the working directory, ``file:///srv/mail``
  absolute); a file appears complete or not at all (written, then renamed).

Every network operation has a timeout. A failure raises, so the event that
asked for the mail is retried and finally dead-lettered.
"""

from __future__ import annotations

import os
import smtplib
import ssl
import uuid
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Protocol
from urllib.parse import parse_qsl, unquote, urlsplit

from nameko.extensions import DependencyProvider

from services.common.ids import utcnow

DEFAULT_URL = "file://var/mail"
DEFAULT_TIMEOUT_SECONDS = 10.0
TRUE = ("1", "true", "yes", "on")
FALSE = ("0", "false", "no", "off")


class Mailer(Protocol):
    def send(self, message: EmailMessage) -> None: ...


@dataclass(frozen=True)
class SmtpSettings:
    host: str
    port: int
    implicit_tls: bool = False
    starttls: bool = False
    username: str | None = None
    password: str | None = None


def parse_mail_url(url: str) -> SmtpSettings | Path:
    """``MAIL.URL`` → SMTP settings, or the directory of the file backend.

    Raises ValueError (with the reason) for anything else, so a service with a
    bad URL fails at start, not at its first mail.
    """
    url = (url or "").strip()
    if url.startswith("file://"):
        path = unquote(url[len("file://"):])
        if not path:
            raise ValueError("MAIL.URL file:// needs a directory, e.g. file://var/mail")
        return Path(path)
    parts = urlsplit(url)
    if parts.scheme not in ("smtp", "smtps"):
        raise ValueError(f"MAIL.URL must start with smtp://, smtps:// or file:// (got {parts.scheme or url!r})")
    if not parts.hostname:
        raise ValueError("MAIL.URL has no host")
    try:
        port = parts.port
    except ValueError:
        raise ValueError("MAIL.URL has an invalid port") from None
    starttls = False
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key != "starttls" or value.lower() not in TRUE + FALSE:
            raise ValueError(f"MAIL.URL: unknown option {key}={value} (only starttls=true|false)")
        starttls = value.lower() in TRUE
    implicit_tls = parts.scheme == "smtps"
    if implicit_tls and starttls:
        raise ValueError("MAIL.URL: smtps:// is already TLS; starttls applies to smtp:// only")
    return SmtpSettings(
        host=parts.hostname,
        port=port or (465 if implicit_tls else 25),
        implicit_tls=implicit_tls,
        starttls=starttls,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
    )


class SmtpMailer:
    """One connection per message: simple, and nothing stale to recover from."""

    def __init__(self, settings: SmtpSettings, timeout: float = DEFAULT_TIMEOUT_SECONDS,
                 tls_context: ssl.SSLContext | None = None):
        self.settings = settings
        self.timeout = timeout
        self.tls_context = tls_context or ssl.create_default_context()

    def send(self, message: EmailMessage) -> None:
        s = self.settings
        if s.implicit_tls:
            client = smtplib.SMTP_SSL(s.host, s.port, timeout=self.timeout, context=self.tls_context)
        else:
            client = smtplib.SMTP(s.host, s.port, timeout=self.timeout)
        with client:
            client.ehlo()
            if s.starttls:
                client.starttls(context=self.tls_context)
                client.ehlo()
            if s.username:
                client.login(s.username, s.password or "")
            client.send_message(message)


class FileMailer:
    """Writes ``<UTC time>-<random>.eml`` files into a directory (development)."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)

    def send(self, message: EmailMessage) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        name = f"{utcnow():%Y%m%dT%H%M%S%f}Z-{uuid.uuid4().hex[:12]}.eml"
        final = self.directory / name
        temp = self.directory / f".{name}.tmp"
        try:
            with open(temp, "wb") as fh:
                fh.write(message.as_bytes())
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(temp, final)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        return final


def make_mailer(url: str, timeout: float = DEFAULT_TIMEOUT_SECONDS) -> SmtpMailer | FileMailer:
    target = parse_mail_url(url)
    if isinstance(target, Path):
        return FileMailer(target)
    return SmtpMailer(target, timeout=timeout)


class MailerProvider(DependencyProvider):
    """``mailer = MailerProvider()``: the backend ``MAIL.URL`` names, built at start."""

    def setup(self):
        settings = self.container.config.get("MAIL") or {}
        self.mailer = make_mailer(
            settings.get("URL") or DEFAULT_URL,
            timeout=float(settings.get("TIMEOUT_SECONDS") or DEFAULT_TIMEOUT_SECONDS),
        )

    def get_dependency(self, worker_ctx):
        return self.mailer
