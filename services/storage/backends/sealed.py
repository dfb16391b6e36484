"""Encryption at rest of the ``fs`` backend's files (and the gateway's, which
writes and serves the same files).

Every file is sealed with AES-256-GCM under a fresh random data key; the data
key is wrapped (AES-256-GCM too) by a master key from the key ring
``STORAGE_ENCRYPTION_KEYS`` (``id:base64key,id:base64key``; the first entry
wraps new files, the others only unwrap). Files stream: a fixed-size header,
then the plaintext in chunks of ``chunk_size`` bytes, each sealed on its own::

    header (HEADER_SIZE bytes, fixed)
      magic "DRKSEAL" | version 1 | master key id (32 bytes, NUL-padded)
      | wrap nonce (12) | wrapped data key (32 + 16 tag)
      | nonce prefix (8) | chunk size (4, big-endian)
    chunk 0 .. n-1: ciphertext + 16-byte tag

Chunk ``i`` is sealed with the nonce ``prefix || i`` (32-bit big-endian) and
the associated data ``magic || version || final`` where ``final`` is 1 for the
last chunk only: reordered, dropped, duplicated or truncated chunks, appended
bytes and flipped bits all fail authentication (:class:`TamperedObject`),
never decrypt to garbage. Every chunk is full except the last, which holds 1
to ``chunk_size`` bytes (or 0 for an empty file), so the plaintext size
follows from the file size alone (:func:`plaintext_size`): stat and listings
need no decryption.

The wrapped data key is bound to the header (key id, nonce prefix, chunk
size) as associated data. Re-keying rewrites the header only: same data key,
same chunks, wrapped under the newest master key (:func:`rewrap_in_place`).

Files written before encryption existed (no magic) are read as they are; the
``storage rekey`` command seals them (:meth:`FsBackend.rekey
<services.storage.backends.fs.FsBackend.rekey>`).
"""

from __future__ import annotations

import io
import os
import struct
from dataclasses import dataclass
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from services.common.keyring import KeyNotInRing, KeyRingError, new_key_entry
from services.common.keyring import KeyRing as CommonKeyRing

__all__ = ["KeyRing", "KeyRingError", "TamperedObject", "UnknownKey", "new_key_entry"]

ENV_VAR = "STORAGE_ENCRYPTION_KEYS"
MAGIC = b"DRKSEAL"
VERSION = 1
KEY_ID_SIZE = 32
WRAP_NONCE_SIZE = 12
TAG_SIZE = 16
WRAPPED_KEY_SIZE = 32 + TAG_SIZE
PREFIX_SIZE = 8
_HEADER = struct.Struct(f">{len(MAGIC)}sB{KEY_ID_SIZE}s{WRAP_NONCE_SIZE}s{WRAPPED_KEY_SIZE}s"
                        f"{PREFIX_SIZE}sI")
HEADER_SIZE = _HEADER.size
CHUNK_SIZE = 64 * 1024
MAX_CHUNKS = 2 ** 32


class TamperedObject(OSError):
    """A sealed file failed authentication: altered, truncated, or not ours."""


class UnknownKey(TamperedObject):
    """A sealed file's master key is not in the key ring."""


# ------------------------------------------------------------------ the key ring
# (services/common/keyring.py: the one parser of every key ring)


class KeyRing(CommonKeyRing):
    """The master keys of ``STORAGE_ENCRYPTION_KEYS``."""

    @classmethod
    def parse(cls, value, variable: str = ENV_VAR) -> KeyRing:
        return super().parse(value, variable)


# ------------------------------------------------------------------ the header


@dataclass(frozen=True)
class Header:
    key_id: str
    wrap_nonce: bytes
    wrapped_key: bytes
    prefix: bytes
    chunk_size: int

    def pack(self) -> bytes:
        return _HEADER.pack(MAGIC, VERSION, self.key_id.encode(), self.wrap_nonce,
                            self.wrapped_key, self.prefix, self.chunk_size)

    @classmethod
    def unpack(cls, raw: bytes) -> Header:
        if len(raw) != HEADER_SIZE:
            raise TamperedObject("the sealed file's header is truncated")
        magic, version, key_id, wrap_nonce, wrapped, prefix, chunk_size = _HEADER.unpack(raw)
        if magic != MAGIC or version != VERSION:
            raise TamperedObject(f"unknown sealed file version {version}")
        if not 0 < chunk_size <= 16 * 1024 * 1024:
            raise TamperedObject("the sealed file's chunk size is invalid")
        try:
            name = key_id.rstrip(b"\0").decode()
        except UnicodeDecodeError:
            raise TamperedObject("the sealed file's key id is invalid") from None
        return cls(name, wrap_nonce, wrapped, prefix, chunk_size)

    def _wrap_aad(self) -> bytes:
        return MAGIC + bytes([VERSION]) + self.key_id.encode() + b"\0" + self.prefix \
            + self.chunk_size.to_bytes(4, "big")

    def unwrap(self, ring: KeyRing) -> bytes:
        """The data key (:class:`TamperedObject` when the header was altered)."""
        try:
            return AESGCM(ring.get(self.key_id)).decrypt(self.wrap_nonce, self.wrapped_key,
                                                         self._wrap_aad())
        except KeyNotInRing as exc:
            raise UnknownKey(str(exc)) from None
        except InvalidTag:
            raise TamperedObject("the sealed file's data key does not authenticate") from None

    @classmethod
    def wrap(cls, ring: KeyRing, data_key: bytes, prefix: bytes, chunk_size: int) -> Header:
        """A header holding ``data_key`` wrapped under the ring's current key."""
        draft = cls(ring.current_id, b"", b"", prefix, chunk_size)
        nonce = os.urandom(WRAP_NONCE_SIZE)
        wrapped = AESGCM(ring.get(ring.current_id)).encrypt(nonce, data_key, draft._wrap_aad())
        return cls(ring.current_id, nonce, wrapped, prefix, chunk_size)


def _chunk_aad(final: bool) -> bytes:
    return MAGIC + bytes([VERSION, 1 if final else 0])


def _nonce(prefix: bytes, index: int) -> bytes:
    if index >= MAX_CHUNKS:
        raise ValueError("too many chunks for one sealed file")
    return prefix + index.to_bytes(4, "big")


def is_sealed(head: bytes) -> bool:
    """Whether a file starting with ``head`` is sealed (else: a plaintext file from before)."""
    return head[: len(MAGIC)] == MAGIC


def plaintext_size(file_size: int, chunk_size: int = CHUNK_SIZE) -> int:
    """The plaintext size of a sealed file of ``file_size`` bytes
    (:class:`TamperedObject` when no sealed file can have that size)."""
    body = file_size - HEADER_SIZE
    if body < TAG_SIZE:
        raise TamperedObject("the sealed file is truncated")
    sealed_chunk = chunk_size + TAG_SIZE
    chunks = -(-body // sealed_chunk)
    last = body - (chunks - 1) * sealed_chunk
    if last < TAG_SIZE or (chunks > 1 and last == TAG_SIZE):
        raise TamperedObject("the sealed file is truncated")
    return body - chunks * TAG_SIZE


# ------------------------------------------------------------------ writing


class SealingWriter:
    """Seals what is written to it into ``out``: the header at once, every
    chunk as soon as the next byte shows it is not the last; :meth:`finish`
    seals the last one. Nothing but sealed bytes ever reaches ``out``."""

    def __init__(self, ring: KeyRing, out: BinaryIO, chunk_size: int = CHUNK_SIZE):
        data_key = AESGCM.generate_key(bit_length=256)
        prefix = os.urandom(PREFIX_SIZE)
        self._aead = AESGCM(data_key)
        self._prefix = prefix
        self._out = out
        self._chunk_size = chunk_size
        self._buffer = bytearray()
        self._index = 0
        self.plaintext_bytes = 0
        out.write(Header.wrap(ring, data_key, prefix, chunk_size).pack())

    def write(self, data: bytes) -> int:
        self._buffer += data
        self.plaintext_bytes += len(data)
        size, start = self._chunk_size, 0
        # keep the last (possibly full) chunk: only finish() knows it is the last
        while len(self._buffer) - start > size:
            self._seal(bytes(self._buffer[start:start + size]), final=False)
            start += size
        del self._buffer[:start]
        return len(data)

    def finish(self) -> None:
        self._seal(bytes(self._buffer), final=True)
        self._buffer.clear()

    def _seal(self, chunk: bytes, final: bool) -> None:
        nonce = _nonce(self._prefix, self._index)
        self._out.write(self._aead.encrypt(nonce, chunk, _chunk_aad(final)))
        self._index += 1


# ------------------------------------------------------------------ reading


class SealedReader(io.RawIOBase):
    """The plaintext of a sealed file, decrypted chunk by chunk as it is read;
    seekable (range requests decrypt only the chunks they cover). Reading a
    chunk that fails authentication raises :class:`TamperedObject`."""

    def __init__(self, raw: BinaryIO, ring: KeyRing):
        super().__init__()
        self._raw = raw
        raw.seek(0)
        header = Header.unpack(raw.read(HEADER_SIZE))
        self._aead = AESGCM(header.unwrap(ring))
        self._prefix = header.prefix
        self._chunk_size = header.chunk_size
        self.size = plaintext_size(os.fstat(raw.fileno()).st_size, header.chunk_size)
        self._chunks = max(1, -(-self.size // self._chunk_size))
        self._pos = 0
        self._cached: tuple[int, bytes] | None = None

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._pos = base + offset
        return self._pos

    def _chunk(self, index: int) -> bytes:
        if self._cached is not None and self._cached[0] == index:
            return self._cached[1]
        sealed_size = self._chunk_size + TAG_SIZE
        self._raw.seek(HEADER_SIZE + index * sealed_size)
        sealed = self._raw.read(sealed_size)
        final = index == self._chunks - 1
        try:
            plain = self._aead.decrypt(_nonce(self._prefix, index), sealed, _chunk_aad(final))
        except InvalidTag:
            raise TamperedObject(f"chunk {index} of a sealed file does not authenticate") from None
        self._cached = (index, plain)
        return plain

    def readinto(self, buffer) -> int:
        if self.size == 0:  # still authenticate the one empty chunk
            self._chunk(0)
            return 0
        if self._pos >= self.size:
            return 0
        index, offset = divmod(self._pos, self._chunk_size)
        plain = self._chunk(index)[offset: offset + len(buffer)]
        buffer[: len(plain)] = plain
        self._pos += len(plain)
        return len(plain)

    def close(self) -> None:
        if not self.closed:
            self._raw.close()
        super().close()


def open_file(path: str | os.PathLike, ring: KeyRing) -> tuple[BinaryIO, int]:
    """A readable, seekable stream of the plaintext at ``path`` and its size:
    decrypted when the file is sealed, as it is when it predates encryption."""
    raw = open(path, "rb")  # noqa: SIM115 - the caller closes the stream
    try:
        if is_sealed(raw.read(len(MAGIC))):
            reader = SealedReader(raw, ring)
            return io.BufferedReader(reader, CHUNK_SIZE), reader.size  # type: ignore[return-value]
        raw.seek(0)
        return raw, os.fstat(raw.fileno()).st_size
    except BaseException:
        raw.close()
        raise


def stored_size(path: str | os.PathLike, file_size: int) -> int:
    """The plaintext size of the file at ``path`` (``file_size`` on disk)."""
    with open(path, "rb") as raw:
        head = raw.read(HEADER_SIZE)
    if not is_sealed(head):
        return file_size
    return plaintext_size(file_size, Header.unpack(head).chunk_size)


# ------------------------------------------------------------------ re-keying


def rewrap_in_place(path: str | os.PathLike, ring: KeyRing) -> bool:
    """Re-wrap a sealed file's data key under the ring's current key by
    rewriting its header in place (one write of HEADER_SIZE bytes, fsynced);
    the chunks are untouched. False when it already uses the current key.
    In place, so a file deleted meanwhile is never brought back."""
    with open(path, "r+b") as raw:
        header = Header.unpack(raw.read(HEADER_SIZE))
        if header.key_id == ring.current_id:
            return False
        data_key = header.unwrap(ring)
        new = Header.wrap(ring, data_key, header.prefix, header.chunk_size)
        raw.seek(0)
        raw.write(new.pack())
        raw.flush()
        os.fsync(raw.fileno())
    return True


def needs_rekey(path: str | os.PathLike, ring: KeyRing) -> bool:
    """Whether the file is plaintext or wrapped under an older key."""
    with open(path, "rb") as raw:
        head = raw.read(HEADER_SIZE)
    return not is_sealed(head) or Header.unpack(head).key_id != ring.current_id
