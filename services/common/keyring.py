"""Key rings: master keys by id, the first one used for new writes.

One format for every key ring Darkroom reads: ``id:base64key`` entries (a
comma-separated string or a list), each key 32 random bytes, ids of 1 to 32
letters, digits, ``_``, ``-`` or ``.``. The storage fs backend's
``STORAGE_ENCRYPTION_KEYS`` (services/storage/backends/sealed.py) and the
personal fields' ``FIELD_ENCRYPTION_KEYS`` (services/common/fieldcrypt.py)
are parsed here. Errors name the variable and the entry, never a key.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass

KEY_ID = re.compile(r"[A-Za-z0-9_.\-]{1,32}")
MASTER_KEY_BYTES = 32


class KeyRingError(ValueError):
    """The key ring is missing or malformed, or cannot read what is stored
    (the message names the variable, never a key)."""


class KeyNotInRing(LookupError):
    """A stored value names a key id the ring does not hold."""


@dataclass(frozen=True)
class KeyRing:
    """Master keys by id; ``current`` (the first) encrypts new writes."""

    keys: tuple[tuple[str, bytes], ...]
    variable: str = "the key ring"

    @classmethod
    def parse(cls, value: str | Iterable[str] | None, variable: str) -> KeyRing:
        """From ``id:base64key`` entries (a comma-separated string or a list)."""
        if value is None:
            entries: list[str] = []
        elif isinstance(value, str):
            entries = [e.strip() for e in value.split(",") if e.strip()]
        else:
            entries = [str(e).strip() for e in value if str(e).strip()]
        if not entries:
            raise KeyRingError(f"{variable} is empty: set it to id:base64key entries "
                               "(32 random bytes each, the first used for new writes)")
        keys: list[tuple[str, bytes]] = []
        for number, entry in enumerate(entries, 1):
            key_id, sep, encoded = entry.partition(":")
            if not sep or not KEY_ID.fullmatch(key_id):
                raise KeyRingError(f"{variable} entry {number} is not id:base64key "
                                   "(an id of 1 to 32 letters, digits, '_', '-', '.')")
            try:
                key = base64.b64decode(encoded.strip(), validate=True)
            except (binascii.Error, ValueError):
                raise KeyRingError(f"{variable} entry {number} ({key_id}): the key is not base64") from None
            if len(key) != MASTER_KEY_BYTES:
                raise KeyRingError(f"{variable} entry {number} ({key_id}): the key must be "
                                   f"{MASTER_KEY_BYTES} bytes, not {len(key)}")
            if any(key_id == known for known, _ in keys):
                raise KeyRingError(f"{variable} lists the key id {key_id} twice")
            keys.append((key_id, key))
        return cls(tuple(keys), variable)

    @property
    def current_id(self) -> str:
        return self.keys[0][0]

    def get(self, key_id: str) -> bytes:
        for known, key in self.keys:
            if known == key_id:
                return key
        raise KeyNotInRing(f"the master key {key_id!r} is not in {self.variable}")

    def ids(self) -> list[str]:
        return [key_id for key_id, _ in self.keys]


def new_key_entry(key_id: str) -> str:
    """A fresh ``id:base64key`` entry (``make dev``, docs/operations.md)."""
    if not KEY_ID.fullmatch(key_id):
        raise KeyRingError(f"invalid key id {key_id!r}")
    return f"{key_id}:{base64.b64encode(os.urandom(MASTER_KEY_BYTES)).decode()}"
