"""MAIL.URL parsing and the mail backends (file, SMTP against a local server)."""

from __future__ import annotations

import email
import email.policy
import smtplib
from email.message import EmailMessage
from pathlib import Path

import pytest

from services.notifications.mailer import (
    FileMailer,
    SmtpMailer,
    SmtpSettings,
    make_mailer,
    parse_mail_url,
)


@pytest.mark.parametrize("url, expected", [
    ("smtp://mail.example", SmtpSettings("mail.example", 25)),
    ("smtp://mail.example:2525", SmtpSettings("mail.example", 2525)),
    ("smtp://u%40x:p%3Aw@mail.example:587?starttls=true",
     SmtpSettings("mail.example", 587, starttls=True, username="u@x", password="p:w")),
    ("smtp://mail.example:587?starttls=false", SmtpSettings("mail.example", 587)),
    ("smtps://mail.example", SmtpSettings("mail.example", 465, implicit_tls=True)),
    ("smtps://user:secret@mail.example:1465",
     SmtpSettings("mail.example", 1465, implicit_tls=True, username="user", password="secret")),
])
def test_smtp_urls(url, expected):
    assert parse_mail_url(url) == expected


@pytest.mark.parametrize("url, expected", [
    ("file://var/mail", Path("var/mail")),
    ("file:///srv/mail", Path("/srv/mail")),
    ("file:///tmp/with%20space", Path("/tmp/with space")),
])
def test_file_urls(url, expected):
    assert parse_mail_url(url) == expected


@pytest.mark.parametrize("url, reason", [
    ("", "must start with"),
    ("http://mail.example", "must start with"),
    ("smtp://", "no host"),
    ("smtp://mail.example:notaport", "invalid port"),
    ("smtp://mail.example?starttls=maybe", "unknown option"),
    ("smtp://mail.example?tls=true", "unknown option"),
    ("smtps://mail.example?starttls=true", "already TLS"),
    ("file://", "needs a directory"),
])
def test_bad_urls_are_refused_with_a_reason(url, reason):
    with pytest.raises(ValueError, match=reason):
        parse_mail_url(url)


def message(to: str = "ada@example.com") -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "Darkroom <no-reply@darkroom.local>"
    msg["To"] = to
    msg["Subject"] = "Hello"
    msg.set_content("code 123456\n")
    return msg


def test_file_backend_writes_one_complete_eml_per_message(tmp_path):
    mailer = make_mailer(f"file://{tmp_path}/mail")
    assert isinstance(mailer, FileMailer)
    first = mailer.send(message("a@example.com"))
    second = mailer.send(message("b@example.com"))
    files = sorted((tmp_path / "mail").iterdir())
    assert files == sorted([first, second])  # no temp files left behind
    assert all(f.suffix == ".eml" for f in files)
    parsed = email.message_from_bytes(first.read_bytes(), policy=email.policy.default)
    assert parsed["To"] == "a@example.com"
    assert parsed.get_content() == "code 123456\n"


def test_file_backend_relative_dir_is_under_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = make_mailer("file://var/mail").send(message())
    assert path.resolve().parent == (tmp_path / "var" / "mail").resolve()


def test_file_backend_leaves_nothing_when_the_write_fails(tmp_path, monkeypatch):
    mailer = FileMailer(tmp_path)

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr("services.notifications.mailer.os.replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        mailer.send(message())
    assert list(tmp_path.iterdir()) == []


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def smtp_server():
    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult, LoginPassword

    class Handler:
        def __init__(self):
            self.messages = []

        async def handle_DATA(self, server, session, envelope):
            self.messages.append((envelope.rcpt_tos, envelope.content, session.authenticated))
            return "250 OK"

    def authenticator(server, session, envelope, mechanism, auth_data):
        ok = isinstance(auth_data, LoginPassword) and auth_data.login == b"u" and auth_data.password == b"p"
        return AuthResult(success=ok, handled=False)

    handler = Handler()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port, authenticator=authenticator,
                            auth_require_tls=False)
    controller.start()
    yield handler, port
    controller.stop()


def test_smtp_backend_delivers(smtp_server):
    handler, port = smtp_server
    mailer = make_mailer(f"smtp://127.0.0.1:{port}", timeout=5)
    assert isinstance(mailer, SmtpMailer)
    mailer.send(message("ada@example.com"))
    [(rcpts, content, authenticated)] = handler.messages
    assert rcpts == ["ada@example.com"]
    assert b"code 123456" in content
    assert not authenticated


def test_smtp_backend_logs_in_when_given_credentials(smtp_server):
    handler, port = smtp_server
    make_mailer(f"smtp://u:p@127.0.0.1:{port}", timeout=5).send(message())
    assert handler.messages[0][2] is True
    with pytest.raises(smtplib.SMTPAuthenticationError):
        make_mailer(f"smtp://u:wrong@127.0.0.1:{port}", timeout=5).send(message())


def test_smtp_backend_raises_when_unreachable():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: refused
        with pytest.raises(OSError):
            make_mailer(f"smtp://127.0.0.1:{port}", timeout=2).send(message())
