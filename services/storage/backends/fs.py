"""``fs`` backend: objects are files under a root directory.

Writes are atomic (a hidden temporary file in the target directory, fsync,
rename), so a reader never sees half an object. Downloads and uploads go
through the gateway's ``/v1/files/<key>`` under URLs signed with the shared
secret (services.common.signing).
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from stat import S_ISREG
from typing import BinaryIO

from services.common import signing

from .base import ObjectInfo
from .keys import InvalidKey, check_key, check_prefix

CHUNK = 1024 * 1024
TEMP_PREFIX = ".tmp-"
STALE_TEMP_SECONDS = 3600


class FsBackend:
    name = "fs"

    def __init__(self, root: str | os.PathLike, public_base_url: str, url_secret: str):
        self.root = Path(root).resolve()
        self.public_base_url = public_base_url.rstrip("/")
        self.url_secret = url_secret

    # ------------------------------------------------------------ paths

    def path_for(self, key: str) -> Path:
        """The file of ``key`` (raises :class:`InvalidKey` for anything outside the root)."""
        path = (self.root / check_key(key)).resolve()
        if not path.is_relative_to(self.root) or path == self.root:
            raise InvalidKey(f"invalid object key: {key!r}")
        return path

    def _key_of(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    # ------------------------------------------------------------ Backend

    def ensure_ready(self, safety_expiry_days: int) -> None:
        """Create the root; remove temporary files a crashed write left behind.

        ``safety_expiry_days`` is an s3 lifecycle setting: a directory has no
        equivalent (the purge and the orphan sweep are the retention mechanism).
        """
        self.root.mkdir(parents=True, exist_ok=True)
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
        path = self.path_for(key)
        fd, tmp = temp_file(path.parent)
        try:
            with os.fdopen(fd, "wb") as out:
                remaining = length
                while remaining > 0:
                    chunk = data.read(min(CHUNK, remaining))
                    if not chunk:
                        raise OSError(f"stream ended {remaining} bytes short of {length}")
                    out.write(chunk)
                    remaining -= len(chunk)
                out.flush()
                os.fsync(out.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            unlink_quietly(tmp)
            raise
        fsync_dir(path.parent)

    def copy(self, source: str, target: str) -> None:
        info = self.stat(source)
        if info is None:
            raise KeyError(source)
        with self.open(source) as stream:
            self.put(target, stream, info.size, "application/octet-stream")

    def open(self, key: str) -> BinaryIO:
        try:
            return open(self.path_for(key), "rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise KeyError(key) from None

    def stat(self, key: str) -> ObjectInfo | None:
        try:
            st = os.stat(self.path_for(key))
        except (FileNotFoundError, NotADirectoryError):
            return None
        if not S_ISREG(st.st_mode):
            return None
        return ObjectInfo(key, st.st_size, datetime.fromtimestamp(st.st_mtime, UTC))

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
                if not key.startswith(prefix):
                    continue
                try:
                    st = path.stat()
                except FileNotFoundError:  # deleted while listing
                    continue
                yield ObjectInfo(key, st.st_size, datetime.fromtimestamp(st.st_mtime, UTC))

    def presigned_get(self, key: str, ttl_seconds: int, internal: bool = False,
                      content_type: str | None = None) -> str:
        # one address: the gateway's /v1/files (make dev runs everything on one host)
        return signing.sign_url(self.public_base_url, self.url_secret, "GET", check_key(key),
                                ttl_seconds, content_type=content_type)[0]

    def presigned_put(self, key: str, ttl_seconds: int, content_type: str,
                      max_bytes: int, internal: bool = False) -> tuple[str, dict[str, str]]:
        url, _ = signing.sign_url(self.public_base_url, self.url_secret, "PUT", check_key(key),
                                  ttl_seconds, max_bytes=max_bytes)
        return url, {"Content-Type": content_type}


# The pieces of an atomic write, shared with the gateway's /v1/files route
# (gateway/api/files.py), which writes into the same directory.


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
