"""Personal fields encrypted in the databases, and blind indexes to find them.

A column that holds personal data (an address, a name, a bio, a user agent, a
network) is declared with :class:`Encrypted` (or :class:`EncryptedJSON`)
instead of ``sa.String``; the ORM then encrypts on write and decrypts on
read, and the database file, its dumps and its backups hold only
ciphertext::

    email: Mapped[str] = mapped_column(Encrypted("users.email"))

Each value is sealed with AES-256-GCM (cryptography) under the current key of
the key ring ``FIELD_ENCRYPTION_KEYS`` (``id:base64key`` entries, the first
encrypts new writes, every one decrypts: services/common/keyring.py) and
stored as text ``fc1:<key id>:<base64url(nonce || ciphertext || tag)>``. The
associated data binds the value to its *purpose* (the name given to the
type, by convention ``table.column``) and key id: a value copied into another
column, an altered byte or a truncated value fails authentication
(:class:`TamperedField`), it never decrypts to something else.

Encryption is randomised, so an encrypted column cannot be compared in SQL
(the comparator refuses everything but ``IS NULL``). A column looked up by
value gets a **blind index** beside it: HMAC-SHA256 under ``FIELD_INDEX_KEY``
(a key of its own, not in the ring) of the purpose and the normalised value
(:func:`email_index`), kept in a ``String(64)`` column with the index or
unique constraint the plain column had, filled on insert by the column
default :func:`email_index_of` and kept in step on change by the model
(``sqlalchemy.orm.validates``, see services/auth/models.py).

Rotation: put a new key first in the ring, run ``darkroom-ops fields rekey``
(:func:`rekey`: rows not under the current key are re-encrypted, in
committed batches, so it resumes where it stopped), then remove the old key.
A service refuses to start when its ring cannot read what its database holds
(:func:`check_readable`). docs/operations.md, "Encryption of personal
fields".

The keys are process-wide (:func:`configure`, called by the database
provider from the service's config): every service and ``darkroom-ops`` read
the same two variables. Unconfigured, development uses built-in keys and
production refuses (the secrets check names the variables first).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import types
from sqlalchemy.engine import Connection

from services.common.contracts.auth import normalise_email
from services.common.keyring import KeyNotInRing, KeyRing, KeyRingError
from services.common.secrets import ConfigurationRefused, is_production

ENV_VAR = "FIELD_ENCRYPTION_KEYS"
INDEX_ENV_VAR = "FIELD_INDEX_KEY"
DEV_KEYS = "dev-only-insecure:ZGV2LW9ubHktaW5zZWN1cmUtZmllbGQta2V5LTMyYnk="
DEV_INDEX_KEY = "dev-only-insecure-field-index-key"
PREFIX = "fc1"
NONCE_SIZE = 12
INDEX_MIN_LENGTH = 16


class TamperedField(ValueError):
    """A stored value failed authentication (altered, moved from another
    column, not ours) or names a key the ring does not hold."""


@dataclass(frozen=True)
class FieldKeys:
    ring: KeyRing
    index_key: bytes

    @classmethod
    def parse(cls, keys: Any, index_key: Any) -> FieldKeys:
        ring = KeyRing.parse(keys, ENV_VAR)
        index = str(index_key or "").strip()
        if len(index) < INDEX_MIN_LENGTH:
            raise KeyRingError(f"{INDEX_ENV_VAR} must be a random secret of at least "
                               f"{INDEX_MIN_LENGTH} characters")
        return cls(ring, index.encode())

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> FieldKeys:
        """From a process config's ``FIELD_ENCRYPTION_KEYS`` and ``FIELD_INDEX_KEY``."""
        return cls.parse(config.get(ENV_VAR), config.get(INDEX_ENV_VAR))

    # ------------------------------------------------------------ values

    def encrypt(self, plaintext: str, purpose: str) -> str:
        key_id = self.ring.current_id
        nonce = os.urandom(NONCE_SIZE)
        sealed = AESGCM(self.ring.get(key_id)).encrypt(nonce, plaintext.encode(),
                                                       _aad(purpose, key_id))
        return f"{PREFIX}:{key_id}:{base64.urlsafe_b64encode(nonce + sealed).decode()}"

    def decrypt(self, stored: str, purpose: str) -> str:
        key_id, raw = _split(stored)
        try:
            key = self.ring.get(key_id)
        except KeyNotInRing as exc:
            raise TamperedField(f"{purpose}: {exc}") from None
        try:
            return AESGCM(key).decrypt(raw[:NONCE_SIZE], raw[NONCE_SIZE:],
                                       _aad(purpose, key_id)).decode()
        except (InvalidTag, UnicodeDecodeError):
            raise TamperedField(f"{purpose}: a stored value does not authenticate "
                                f"under the key {key_id!r} of {ENV_VAR}") from None

    def blind_index(self, value: str, purpose: str) -> str:
        return hmac.new(self.index_key, purpose.encode() + b"\0" + value.encode(),
                        hashlib.sha256).hexdigest()


def _aad(purpose: str, key_id: str) -> bytes:
    return f"darkroom field {PREFIX}\0{purpose}\0{key_id}".encode()


def _split(stored: str) -> tuple[str, bytes]:
    prefix, _, rest = str(stored).partition(":")
    key_id, _, encoded = rest.partition(":")
    if prefix != PREFIX or not key_id or not encoded:
        raise TamperedField("a stored value is not an encrypted field")
    try:
        raw = base64.urlsafe_b64decode(encoded.encode())
    except (binascii.Error, ValueError):
        raise TamperedField("a stored value is not an encrypted field") from None
    if len(raw) < NONCE_SIZE + 16:
        raise TamperedField("a stored value is truncated")
    return key_id, raw


def key_id_of(stored: str) -> str:
    """The key id a stored value was encrypted under (:class:`TamperedField` if none)."""
    return _split(stored)[0]


# ------------------------------------------------------------ the process's keys

_configured: FieldKeys | None = None


def configure(keys: FieldKeys | None) -> None:
    """Use ``keys`` in this process (None: back to unconfigured)."""
    global _configured
    _configured = keys


def configure_from(config: Mapping[str, Any]) -> bool:
    """Configure from a process config that names the keys; False if it names none."""
    if ENV_VAR not in config and INDEX_ENV_VAR not in config:
        return False
    configure(FieldKeys.from_config(config))
    return True


def keys() -> FieldKeys:
    if _configured is not None:
        return _configured
    if is_production():
        raise ConfigurationRefused(f"{ENV_VAR} and {INDEX_ENV_VAR} are not configured: "
                                   "personal fields cannot be read or written")
    return _development()


_DEV: list[FieldKeys] = []


def _development() -> FieldKeys:
    if not _DEV:
        _DEV.append(FieldKeys.parse(DEV_KEYS, DEV_INDEX_KEY))
    return _DEV[0]


def email_index(email: str) -> str:
    """The blind index of an address (normalised first), for every ``*_index``
    column of an email: equal addresses give equal indexes in every table."""
    return keys().blind_index(normalise_email(email), "email")


def email_index_of(column: str) -> Callable:
    """A column default: the blind index of the address inserted in ``column``
    (a Core insert as well as the ORM's; a change is the model's to follow)."""

    def default(context) -> str | None:
        value = context.get_current_parameters().get(column)
        return None if value is None else email_index(value)

    return default


# ------------------------------------------------------------ column types


class _NoSqlComparison(types.TypeDecorator.Comparator):
    def operate(self, op, *other, **kwargs):
        if op in (sa.sql.operators.is_, sa.sql.operators.is_not):
            return super().operate(op, *other, **kwargs)
        raise TypeError("an encrypted column cannot be compared in SQL: "
                        "look it up by its blind index")


class Encrypted(types.TypeDecorator):
    """A text column encrypted under ``FIELD_ENCRYPTION_KEYS`` (module doc)."""

    impl = sa.Text
    cache_ok = True
    comparator_factory = _NoSqlComparison

    def __init__(self, purpose: str):
        super().__init__()
        self.purpose = purpose

    def serialise(self, value: Any) -> str:
        return str(value)

    def deserialise(self, text: str) -> Any:
        return text

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        return keys().encrypt(self.serialise(value), self.purpose)

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        return self.deserialise(keys().decrypt(value, self.purpose))


class EncryptedJSON(Encrypted):
    """A JSON value, encrypted as its text."""

    def serialise(self, value: Any) -> str:
        return json.dumps(value, sort_keys=True)

    def deserialise(self, text: str) -> Any:
        return json.loads(text)


def encrypted_columns(metadata: sa.MetaData) -> Iterator[tuple[sa.Table, list[sa.Column]]]:
    """Every table of ``metadata`` with encrypted columns, and those columns."""
    for table in metadata.sorted_tables:
        columns = [c for c in table.columns if isinstance(c.type, Encrypted)]
        if columns:
            yield table, columns


# ------------------------------------------------------------ start-up check


def check_readable(connection: Connection, metadata: sa.MetaData, sample: int = 1000) -> None:
    """Refuse (:class:`KeyRingError`, naming the variable and the key id, never a
    key) a ring that cannot read the stored fields: a value under a key id the
    ring lacks, or a ring key that is not the key of that id the values were
    encrypted with. Up to ``sample`` values per column are looked at (a start
    must not scan a large table), one per key id is decrypted."""
    ring = keys().ring
    for table, columns in encrypted_columns(metadata):
        for column in columns:
            raw = sa.column(column.name, sa.Text)
            values = connection.scalars(sa.select(raw).select_from(sa.table(table.name, raw))
                                        .where(raw.is_not(None)).limit(sample)).all()
            tried: set[str] = set()
            for value in values:
                try:
                    key_id = key_id_of(value)
                except TamperedField:
                    raise KeyRingError(f"{table.name}.{column.name} holds a value that is not "
                                       "encrypted (or not in the fc1 format)") from None
                if key_id in tried:
                    continue
                tried.add(key_id)
                if key_id not in ring.ids():
                    raise KeyRingError(f"{table.name}.{column.name} holds values under the key "
                                       f"{key_id!r}, which {ENV_VAR} lacks (run `darkroom-ops "
                                       "fields rekey` before removing a key)")
                try:
                    keys().decrypt(value, column.type.purpose)
                except TamperedField:
                    raise KeyRingError(
                        f"the key {key_id!r} in {ENV_VAR} does not decrypt {table.name}."
                        f"{column.name}: it is not the key of that id the values were "
                        "encrypted with, or a stored value was altered") from None


# ------------------------------------------------------------ conversion and rotation


def _primary_key(table: sa.Table) -> list[str]:
    return [c.name for c in table.primary_key.columns]


def convert_rows(connection: Connection, table: str, key: list[str], columns: dict[str, str],
                 transform: Callable[[str, str | None], str | None],
                 where: sa.ColumnElement | None = None, batch: int = 500,
                 max_batches: int | None = None) -> int:
    """Rewrite ``columns`` (name → purpose) of every row of ``table`` (raw text,
    no type applied) with ``transform(purpose, value)``; rows in batches by
    primary key ``key``, at most ``max_batches`` of them. Returns the rows
    changed. Migrations (encrypt, decrypt) and :func:`rekey` use it."""
    cols = {name: sa.column(name) for name in [*key, *columns]}
    source = sa.table(table, *cols.values())
    changed = 0
    last = None
    batches = 0
    while max_batches is None or batches < max_batches:
        batches += 1
        stmt = sa.select(*cols.values()).select_from(source).order_by(*(cols[k] for k in key))
        if where is not None:
            stmt = stmt.where(where)
        if last is not None:
            stmt = stmt.where(sa.tuple_(*(cols[k] for k in key)) > sa.tuple_(*last))
        rows = connection.execute(stmt.limit(batch)).mappings().all()
        if not rows:
            return changed
        for row in rows:
            values = {name: transform(purpose, row[name]) for name, purpose in columns.items()}
            values = {name: value for name, value in values.items() if value != row[name]}
            if values:
                connection.execute(sa.update(source)
                                   .where(*(cols[k] == row[k] for k in key)).values(**values))
                changed += 1
        last = [rows[-1][k] for k in key]
    return changed


def encrypt_value(purpose: str, value: str | None) -> str | None:
    """A migration's transform: plaintext → encrypted (an encrypted value is kept)."""
    if value is None or str(value).startswith(PREFIX + ":"):
        return value
    return keys().encrypt(str(value), purpose)


def decrypt_value(purpose: str, value: str | None) -> str | None:
    """A migration's downgrade transform: encrypted → plaintext."""
    if value is None or not str(value).startswith(PREFIX + ":"):
        return value
    return keys().decrypt(value, purpose)


def rekey_value(purpose: str, value: str | None) -> str | None:
    if value is None or key_id_of(value) == keys().ring.current_id:
        return value
    return keys().encrypt(keys().decrypt(value, purpose), purpose)


def stale_rows(table: sa.Table, columns: list[sa.Column]) -> sa.ColumnElement:
    """Rows with a value not under the ring's current key."""
    current = f"{PREFIX}:{keys().ring.current_id}:"
    conditions = []
    for column in columns:
        raw = sa.column(column.name, sa.Text)
        conditions.append(sa.and_(raw.is_not(None),
                                  sa.not_(raw.startswith(current, autoescape=True))))
    return sa.or_(*conditions)


def count_stale(connection: Connection, metadata: sa.MetaData) -> int:
    total = 0
    for table, columns in encrypted_columns(metadata):
        total += connection.scalar(sa.select(sa.func.count()).select_from(sa.table(table.name))
                                   .where(stale_rows(table, columns))) or 0
    return total


def rekey(engine: sa.Engine, metadata: sa.MetaData, batch: int = 500,
          progress: Callable[[int], None] | None = None) -> int:
    """Re-encrypt under the current key every row of ``metadata``'s encrypted
    columns that is not; each batch is committed (an interrupted run resumes
    where it stopped). Returns the rows rewritten."""
    rewritten = 0
    for table, columns in encrypted_columns(metadata):
        purposes = {c.name: c.type.purpose for c in columns}
        while True:  # a batch per transaction: what is committed stays done
            with engine.begin() as connection:
                done = convert_rows(connection, table.name, _primary_key(table), purposes,
                                    rekey_value, where=stale_rows(table, columns), batch=batch,
                                    max_batches=1)
            if not done:
                break
            rewritten += done
            if progress is not None:
                progress(done)
    return rewritten
