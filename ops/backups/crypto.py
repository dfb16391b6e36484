"""The encrypted file format of a backup: AES-256-GCM over chunks of
:data:`CHUNK_BYTES`, streamed (no file is ever held whole in memory).

A file is ``MAGIC``, the key's 8-byte fingerprint, a 16-byte random salt,
then chunks, each a 4-byte big-endian length and its ciphertext (tag
included). Each file has its own key, HKDF-SHA256(operator key, salt), so
the nonce can be the chunk's number (11 bytes) and a last-chunk flag (1
byte): a reordered, cut or altered file fails to decrypt; it never yields
garbage. The operator's key is ``BACKUP_ENCRYPTION_KEY``: 32 random bytes in
base64 (``python -c "import os,base64;print(base64.b64encode(os.urandom(32)).decode())"``),
or any random secret of 40 characters or more (``make up`` writes 48 hex digits).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import struct
from collections.abc import Iterator
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

MAGIC = b"DRBACKUP1\n"
CHUNK_BYTES = 1 << 20
MIN_SECRET_CHARS = 40
_LENGTH = struct.Struct(">I")


class BackupCryptoError(Exception):
    """A wrong key, or a file that is not what was written."""


def parse_key(value: str | bytes | None) -> bytes:
    """The operator's key: 32 bytes in base64, or any secret of at least
    :data:`MIN_SECRET_CHARS` characters (``make up`` writes 48 hex digits),
    hashed to 32 bytes. ValueError naming the variable."""
    if not value:
        raise ValueError("BACKUP_ENCRYPTION_KEY is not set (32 random bytes, base64)")
    text = value.decode() if isinstance(value, bytes) else str(value)
    try:
        key = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) == 32:
        return key
    if len(text) >= MIN_SECRET_CHARS:
        return hashlib.sha256(b"darkroom-backup-secret" + text.encode()).digest()
    raise ValueError("BACKUP_ENCRYPTION_KEY must be 32 random bytes in base64, "
                     f"or a random secret of at least {MIN_SECRET_CHARS} characters")


def fingerprint(key: bytes) -> bytes:
    return hashlib.sha256(b"darkroom-backup-key" + key).digest()[:8]


def _file_key(key: bytes, salt: bytes) -> AESGCM:
    derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=salt,
                   info=b"darkroom backup file").derive(key)
    return AESGCM(derived)


def _nonce(number: int, last: bool) -> bytes:
    return number.to_bytes(11, "big") + (b"\x01" if last else b"\x00")


def _chunks(source: BinaryIO, size: int) -> Iterator[tuple[bytes, bool]]:
    """(chunk, is it the last) for every chunk of ``source``; one empty last
    chunk for an empty source."""
    current = source.read(size)
    while True:
        following = source.read(size) if len(current) == size else b""
        last = not following
        yield current, last
        if last:
            return
        current = following


def encrypt(key: bytes, source: BinaryIO, target: BinaryIO, chunk_bytes: int = CHUNK_BYTES) -> int:
    """Encrypt ``source`` into ``target``; returns the plaintext's size."""
    salt = os.urandom(16)
    aead = _file_key(key, salt)
    target.write(MAGIC + fingerprint(key) + salt)
    size = 0
    for number, (chunk, last) in enumerate(_chunks(source, chunk_bytes)):
        sealed = aead.encrypt(_nonce(number, last), chunk, None)
        target.write(_LENGTH.pack(len(sealed)) + sealed)
        size += len(chunk)
    return size


def _read_exactly(source: BinaryIO, n: int) -> bytes:
    data = source.read(n)
    if len(data) != n:
        raise BackupCryptoError("the file is cut short")
    return data


def decrypt(key: bytes, source: BinaryIO, target: BinaryIO) -> int:
    """Decrypt ``source`` into ``target``; returns the plaintext's size.
    BackupCryptoError for another key's file, or a cut or altered one."""
    head = source.read(len(MAGIC) + 8 + 16)
    if len(head) != len(MAGIC) + 24 or not head.startswith(MAGIC):
        raise BackupCryptoError("not a Darkroom backup file")
    if head[len(MAGIC):len(MAGIC) + 8] != fingerprint(key):
        raise BackupCryptoError("encrypted with another key than BACKUP_ENCRYPTION_KEY")
    aead = _file_key(key, head[len(MAGIC) + 8:])
    size, number = 0, 0
    length = source.read(_LENGTH.size)
    while True:
        if len(length) != _LENGTH.size:
            raise BackupCryptoError("the file is cut short")
        sealed = _read_exactly(source, _LENGTH.unpack(length)[0])
        following = source.read(_LENGTH.size)
        last = not following
        try:
            chunk = aead.decrypt(_nonce(number, last), sealed, None)
        except InvalidTag:
            raise BackupCryptoError("the file was altered or cut short") from None
        target.write(chunk)
        size += len(chunk)
        if last:
            return size
        number, length = number + 1, following


class HashingWriter:
    """A write-only stream that counts and hashes what passes through it
    into ``inner`` (None: nowhere)."""

    def __init__(self, inner: BinaryIO | None = None):
        self.inner = inner
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        self.size += len(data)
        if self.inner is not None:
            self.inner.write(data)
        return len(data)

    def hexdigest(self) -> str:
        return self.sha256.hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK_BYTES), b""):
            digest.update(block)
    return digest.hexdigest()
