"""``fs`` backend: objects are files under a root directory.

Writes are atomic (a hidden temporary file in the target directory, fsync,
rename), so a reader never sees half an object. Every file is sealed
(AES-256-GCM, a data key per file wrapped by the key ring
``STORAGE_ENCRYPTION_KEYS``: :mod:`.sealed`); reads decrypt while streaming,
sizes are the plaintext's. Downloads and uploads go
through the gateway's ``/v1/files/<key>`` under URLs signed with the shared
secret (services.common.signing).

:class:`SignedFiles` is the one home of that layout: the path of a key, the
atomic write, the signed URLs and their check. The backend (here) and the
gateway's ``/v1/files`` routes (gateway/api/files.py, HTTP only) both use it.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from stat import S_ISREG
from typing import BinaryIO
from urllib.parse import parse_qs, unquote, urlsplit

from services.common import signing
from services.common.errors import payload_too_large

from . import sealed
from .base import ObjectInfo
from .keys import PUBLIC_PREFIX, InvalidKey, check_key, check_prefix
from .sealed import KeyRing, KeyRingError

log = logging.getLogger(__name__)

CHUNK = 1024 * 1024
TEMP_PREFIX = ".tmp-"
STALE_TEMP_SECONDS = 3600
# <root>/.keycheck-<key id>: a sealed canary per master key files may still be
# sealed with (hidden: never listed nor served)
KEYCHECK_PREFIX = ".keycheck-"
KEYCHECK_TEXT = b"darkroom storage key check"


class ShortStream(OSError):
    """The stream ended before the length it was declared with."""


class SignedFiles:
    """Files under ``root``, one per key (``<root>/<key>``), reached through
    ``<public_base_url>/v1/files/<key>`` URLs signed with ``url_secret``.

    Only ``objects/...``, ``staging/...`` and ``public/...`` keys are served
    over those URLs (:meth:`served_path`); no path leaves the root, not even
    through a symlink. Files are sealed with ``keys`` (:mod:`.sealed`).
    """

    SERVED_PREFIXES = ("objects/", "staging/", PUBLIC_PREFIX)

    def __init__(self, root: str | os.PathLike, url_secret: str, public_base_url: str = "", *,
                 keys: KeyRing):
        self.root = Path(root).resolve()
        self.url_secret = url_secret
        self.public_base_url = public_base_url.rstrip("/")
        self.keys = keys

    # ------------------------------------------------------------ paths

    def path_for(self, key: str) -> Path:
        """The file of ``key`` (raises :class:`InvalidKey` for anything outside the root)."""
        path = (self.root / check_key(key)).resolve()
        if not path.is_relative_to(self.root) or path == self.root:
            raise InvalidKey(f"invalid object key: {key!r}")
        return path

    def served_path(self, key: str) -> Path:
        """:meth:`path_for` of a key the signed URLs serve (:class:`InvalidKey` for others)."""
        path = self.path_for(key)
        if not key.startswith(self.SERVED_PREFIXES):
            raise InvalidKey(f"not a served key: {key!r}")
        return path

    # ------------------------------------------------------------ signed URLs

    def sign(self, method: str, key: str, ttl_seconds: int, *, max_bytes: int | None = None,
             content_type: str | None = None) -> str:
        """A URL for ``method`` on ``key``, expiring in ``ttl_seconds``."""
        return signing.sign_url(self.public_base_url, self.url_secret, method, check_key(key),
                                ttl_seconds, max_bytes=max_bytes, content_type=content_type)[0]

    def verify(self, method: str, key: str, expires, sig, max_bytes=None,
               content_type=None) -> bool:
        return signing.verify(self.url_secret, method, key, expires, sig, max_bytes=max_bytes,
                              content_type=content_type)

    def key_of_url(self, url: str, method: str = "PUT") -> str | None:
        """The key when ``url`` is one of these files' URLs, validly signed for
        ``method``; None otherwise."""
        parts = urlsplit(url)
        _, found, quoted_key = parts.path.partition(signing.FILES_PREFIX)
        if not found:
            return None
        key = unquote(quoted_key)
        query = parse_qs(parts.query)
        expires, sig, max_bytes = ((query.get(name) or [None])[0]
                                   for name in ("expires", "signature", "max_bytes"))
        return key if self.verify(method, key, expires, sig, max_bytes) else None

    # ------------------------------------------------------------ writing

    def write(self, key: str, stream: BinaryIO, length: int | None = None,
              max_bytes: int | None = None) -> int:
        """Store ``stream`` as ``key`` atomically, sealed; returns the
        (plaintext) byte count.

        With ``length``, exactly that many bytes are read (:class:`ShortStream`
        when the stream ends first); without, up to its end. 413
        ``payload_too_large`` past ``max_bytes``. ``OSError`` when the disk
        fails. Nothing is left behind on failure.
        """
        if max_bytes is not None and length is not None and length > max_bytes:
            raise payload_too_large(max_bytes)
        written = self.write_sealed(self.path_for(key),
                                    lambda out: _copy(stream, out, length, max_bytes))
        assert written is not None
        return written

    def write_sealed(self, path: Path, fill, expected_inode: tuple[int, int] | None = None
                     ) -> int | None:
        """Write a sealed temporary file with ``fill(writer)`` (which returns
        the byte count) and rename it to ``path``. With ``expected_inode``
        (device, inode) only while ``path`` is still that file: a file deleted
        or replaced meanwhile is left alone (None)."""
        fd, tmp = temp_file(path.parent)
        try:
            with os.fdopen(fd, "wb") as out:
                writer = sealed.SealingWriter(self.keys, out)
                written = fill(writer)
                writer.finish()
                out.flush()
                os.fsync(out.fileno())
            os.chmod(tmp, 0o644)
            if expected_inode is not None:
                try:
                    st = os.stat(path)
                except FileNotFoundError:
                    unlink_quietly(tmp)
                    return None
                if (st.st_dev, st.st_ino) != expected_inode:
                    unlink_quietly(tmp)
                    return None
            os.replace(tmp, path)
        except BaseException:
            unlink_quietly(tmp)
            raise
        fsync_dir(path.parent)
        return written

    # ------------------------------------------------------------ reading

    def open(self, path: Path) -> tuple[BinaryIO, int]:
        """The plaintext of the file at ``path`` (seekable) and its size;
        FileNotFoundError & co. when absent, :class:`~.sealed.TamperedObject`
        when it does not authenticate."""
        return sealed.open_file(path, self.keys)

    def size_of(self, path: Path, file_size: int) -> int:
        return sealed.stored_size(path, file_size)

    # ------------------------------------------------------------ keys

    def check_keys(self) -> None:
        """Refuse (:class:`KeyRingError`) a key ring that cannot read the files:
        a master key files may still be sealed with is missing, or one of the
        ring's keys is not the key of that id the files were sealed with. Then
        leave a canary for the current key (:data:`KEYCHECK_PREFIX`)."""
        self.root.mkdir(parents=True, exist_ok=True)
        for canary in sorted(self.root.glob(KEYCHECK_PREFIX + "*")):
            key_id = canary.name[len(KEYCHECK_PREFIX):]
            if key_id not in self.keys.ids():
                raise KeyRingError(
                    f"{sealed.ENV_VAR} lacks the master key {key_id!r}, which stored files may "
                    "still be sealed with (run `darkroom-ops storage rekey` before removing a key)")
            try:
                stream, _ = self.open(canary)
                with stream:
                    ok = stream.read() == KEYCHECK_TEXT
            except sealed.TamperedObject:
                ok = False
            if not ok:
                raise KeyRingError(f"the master key {key_id!r} in {sealed.ENV_VAR} is not the "
                                   "key of that id the stored files were sealed with")
        current = self.root / (KEYCHECK_PREFIX + self.keys.current_id)
        if not current.exists():
            self.write_sealed(current, lambda out: out.write(KEYCHECK_TEXT))

    def forget_old_keys(self) -> list[str]:
        """Remove the canaries of every key but the current one (once every
        file is sealed with it): those keys may then leave the ring."""
        removed = []
        for canary in self.root.glob(KEYCHECK_PREFIX + "*"):
            key_id = canary.name[len(KEYCHECK_PREFIX):]
            if key_id != self.keys.current_id:
                unlink_quietly(str(canary))
                removed.append(key_id)
        return sorted(removed)


def _copy(stream: BinaryIO, out: BinaryIO, length: int | None, max_bytes: int | None) -> int:
    written = 0
    while length is None or written < length:
        chunk = stream.read(CHUNK if length is None else min(CHUNK, length - written))
        if not chunk:
            if length is not None:
                raise ShortStream(f"stream ended {length - written} bytes short of {length}")
            break
        written += len(chunk)
        if max_bytes is not None and written > max_bytes:
            raise payload_too_large(max_bytes)
        out.write(chunk)
    return written


class FsBackend:
    name = "fs"

    def __init__(self, root: str | os.PathLike, public_base_url: str, url_secret: str, *,
                 keys: KeyRing):
        self.files = SignedFiles(root, url_secret, public_base_url, keys=keys)
        self.root = self.files.root

    def path_for(self, key: str) -> Path:
        return self.files.path_for(key)

    def _key_of(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    # ------------------------------------------------------------ Backend

    def ensure_ready(self, safety_expiry_days: int) -> None:
        """Create the root; remove temporary files a crashed write left behind.

        ``safety_expiry_days`` is an s3 lifecycle setting: a directory has no
        equivalent (the purge and the orphan sweep are the retention mechanism).
        Refuses a key ring that cannot read the stored files
        (:meth:`SignedFiles.check_keys`).
        """
        self.files.check_keys()
        cutoff = time.time() - STALE_TEMP_SECONDS
        for dirpath, _dirs, files in os.walk(self.root):
            for name in files:
                if name.startswith(TEMP_PREFIX):
                    path = os.path.join(dirpath, name)
                    try:
                        if os.stat(path).st_mtime < cutoff:
                            os.unlink(path)
                    except FileNotFoundError:
                        pass

    def put(self, key: str, data: BinaryIO, length: int, content_type: str) -> None:
        self.files.write(key, data, length)

    def copy(self, source: str, target: str) -> None:
        info = self.stat(source)
        if info is None:
            raise KeyError(source)
        with self.open(source) as stream:
            self.put(target, stream, info.size, "application/octet-stream")

    def open(self, key: str) -> BinaryIO:
        try:
            return self.files.open(self.path_for(key))[0]
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise KeyError(key) from None

    def stat(self, key: str) -> ObjectInfo | None:
        return self._info(key, self.path_for(key))

    def _info(self, key: str, path: Path) -> ObjectInfo | None:
        try:
            st = os.stat(path)
            if not S_ISREG(st.st_mode):
                return None
            size = self.files.size_of(path, st.st_size)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except sealed.TamperedObject:  # reading it fails; listings and sweeps go on
            log.warning("stored file %s is damaged (its size cannot be a sealed file's)", key)
            size = st.st_size
        return ObjectInfo(key, size, datetime.fromtimestamp(st.st_mtime, UTC))

    def delete_many(self, keys: Iterable[str]) -> list[str]:
        failed: list[str] = []
        parents: set[Path] = set()
        for key in keys:
            path = self.path_for(key)
            try:
                path.unlink()
            except FileNotFoundError:
                pass
            except OSError:
                failed.append(key)
                continue
            parents.add(path.parent)
        for parent in sorted(parents, key=lambda p: len(p.parts), reverse=True):
            self._prune(parent)
        return failed

    def _prune(self, directory: Path) -> None:
        """Remove ``directory`` and its ancestors while they are empty (never the root)."""
        while directory != self.root and directory.is_relative_to(self.root):
            try:
                directory.rmdir()
            except OSError:  # not empty (or already gone with a sibling's pruning)
                if directory.exists():
                    return
            directory = directory.parent

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        for key, path in self._walk(prefix):
            info = self._info(key, path)
            if info is not None:  # None: deleted while listing
                yield info

    def keys(self, prefix: str = "") -> Iterator[str]:
        """Every key under ``prefix``, without opening a file (sorted per directory)."""
        return (key for key, _ in self._walk(prefix))

    def _walk(self, prefix: str) -> Iterator[tuple[str, Path]]:
        check_prefix(prefix)
        # walk from the deepest directory the prefix names completely
        start = self.root / prefix.rsplit("/", 1)[0] if "/" in prefix else self.root
        for dirpath, dirs, files in os.walk(start):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(files):
                if name.startswith("."):
                    continue
                path = Path(dirpath, name)
                key = self._key_of(path)
                if key.startswith(prefix):
                    yield key, path

    # ------------------------------------------------------------ re-keying

    def rekey(self, key: str) -> str:
        """Bring one file under the current master key: ``"rewrapped"`` (its
        header rewritten in place), ``"sealed"`` (a plaintext file from before
        encryption, sealed atomically), ``"current"`` (nothing to do) or
        ``"gone"`` (deleted meanwhile). Idempotent: a rerun skips what is done."""
        path = self.path_for(key)
        try:
            if not sealed.needs_rekey(path, self.files.keys):
                return "current"
            with open(path, "rb") as raw:
                if not sealed.is_sealed(raw.read(len(sealed.MAGIC))):
                    raw.seek(0)
                    st = os.fstat(raw.fileno())
                    done = self.files.write_sealed(path, lambda out: _copy(raw, out, None, None),
                                                   expected_inode=(st.st_dev, st.st_ino))
                    return "gone" if done is None else "sealed"
            return "rewrapped" if sealed.rewrap_in_place(path, self.files.keys) else "current"
        except (FileNotFoundError, NotADirectoryError):
            return "gone"

    def presigned_get(self, key: str, ttl_seconds: int, internal: bool = False,
                      content_type: str | None = None) -> str:
        # one address: the gateway's /v1/files (make dev runs everything on one host)
        return self.files.sign("GET", key, ttl_seconds, content_type=content_type)

    def presigned_put(self, key: str, ttl_seconds: int, content_type: str,
                      max_bytes: int, internal: bool = False) -> tuple[str, dict[str, str]]:
        url = self.files.sign("PUT", key, ttl_seconds, max_bytes=max_bytes)
        return url, {"Content-Type": content_type}


# ------------------------------------------------------------ the pieces of an atomic write


def temp_file(directory: Path) -> tuple[int, str]:
    """A new temporary file (fd, path) in ``directory``, created if missing."""
    for attempt in range(3):  # a concurrent delete_many may prune the new directory
        directory.mkdir(parents=True, exist_ok=True)
        try:
            return tempfile.mkstemp(prefix=TEMP_PREFIX, dir=directory)
        except FileNotFoundError:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def fsync_dir(directory: Path) -> None:
    """Persist a rename (the directory entry) on POSIX filesystems."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
