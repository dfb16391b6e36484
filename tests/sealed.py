"""The fs backend's files are sealed (services/storage/backends/sealed.py):
tests read their plaintext with the key ring they were written with."""

from __future__ import annotations

import os

from services.storage.backends.sealed import KeyRing, open_file
from services.storage.settings import DEV_ENCRYPTION_KEYS

DEV_KEYS = KeyRing.parse(DEV_ENCRYPTION_KEYS)


def plaintext(path: str | os.PathLike, keys: KeyRing = DEV_KEYS) -> bytes:
    """The decrypted content of a file under an fs root (a file from before
    encryption as it is)."""
    stream, _ = open_file(path, keys)
    with stream:
        return stream.read()
