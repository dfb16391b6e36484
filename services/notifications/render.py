"""Mail bodies from the templates in ``templates/``.

Each template is one ``<name>.eml.j2`` file with three blocks: ``subject``
(one line), ``text`` (the plain body) and ``html`` (optional, autoescaped).
Rendering is strict: a variable the template uses but the caller did not give
is an error, never an empty string in a mail.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, parseaddr
from functools import cache
from pathlib import Path
from urllib.parse import quote

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from services.common.ids import utcnow

TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"


@dataclass(frozen=True)
class Rendered:
    subject: str
    text: str
    html: str | None


def format_utc(value: datetime | str) -> str:
    """``2026-11-22 03:18 UTC``."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


# ISO-4217 currencies whose minor unit is not a hundredth (as Stripe counts them).
ZERO_DECIMAL = frozenset(
    "bif clp djf gnf jpy kmf krw mga pyg rwf ugx vnd vuv xaf xof xpf".split()
)
THREE_DECIMAL = frozenset("bhd jod kwd omr tnd".split())


def format_money(amount: int, currency: str) -> str:
    """Minor units to a readable amount: ``(1999, "eur")`` → ``19.99 EUR``,
    ``(500, "jpy")`` → ``500 JPY``. Integer arithmetic: no float rounding."""
    code = str(currency).lower()
    digits = 0 if code in ZERO_DECIMAL else 3 if code in THREE_DECIMAL else 2
    amount = int(amount)
    sign, amount = ("-" if amount < 0 else ""), abs(amount)
    major, minor = divmod(amount, 10 ** digits)
    text = f"{major:,}" + (f".{minor:0{digits}d}" if digits else "")
    return f"{sign}{text} {code.upper()}"


@cache
def environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(TEMPLATES_DIR),
        undefined=StrictUndefined,
        autoescape=False,  # the html block turns it on for itself
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["utc"] = format_utc
    env.filters["money"] = format_money
    return env


def render(name: str, context: dict) -> Rendered:
    template = environment().get_template(f"{name}.eml.j2")
    ctx = template.new_context(dict(context))

    def block(block_name: str) -> str | None:
        if block_name not in template.blocks:
            return None
        return "".join(template.blocks[block_name](ctx)).strip()

    subject = " ".join((block("subject") or "").split())
    text = block("text")
    if not subject or not text:
        raise ValueError(f"template {name} must render a subject and a text body")
    html = block("html")
    return Rendered(subject=subject, text=text + "\n", html=(html + "\n") if html else None)


def reset_url(app_base_url: str, token: str) -> str:
    """The password-reset link: it ends with ``?token=<token>``."""
    return f"{app_base_url.rstrip('/')}/reset-password?token={quote(token, safe='')}"


def cancel_erasure_url(app_base_url: str, request_id, token: str) -> str:
    """The erasure's cancel link: its page POSTs the token to
    ``/v1/privacy/requests/<id>/cancel``."""
    return (f"{app_base_url.rstrip('/')}/privacy/requests/{quote(str(request_id), safe='')}"
            f"/cancel?token={quote(token, safe='')}")


def build_message(rendered: Rendered, *, sender: str, recipient: str, message_key: str,
                  headers: dict[str, str] | None = None) -> EmailMessage:
    """A MIME message whose bodies stay readable in the raw .eml (no
    quoted-printable folding of links and codes when they are ASCII)."""
    message = EmailMessage()
    message["From"] = sender
    message["To"] = recipient
    message["Subject"] = rendered.subject
    message["Date"] = format_datetime(utcnow())
    domain = parseaddr(sender)[1].rpartition("@")[2] or "darkroom.local"
    message["Message-ID"] = f"<{message_key}@{domain}>"
    for name, value in (headers or {}).items():
        message[name] = value
    message.set_content(rendered.text, subtype="plain", charset="utf-8", cte=_cte(rendered.text))
    if rendered.html:
        message.add_alternative(rendered.html, subtype="html", charset="utf-8", cte=_cte(rendered.html))
    return message


def _cte(body: str) -> str:
    return "7bit" if body.isascii() and max(map(len, body.splitlines() or [""])) <= 998 else "8bit"
