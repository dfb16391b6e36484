"""``darkroom-ops backup run | verify | restore | list``: the work, without the
command line (``ops/backup.py``)."""

from __future__ import annotations

import fcntl
import io
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager as ContextManager
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from ops.backups import crypto, erasures, sets, sources
from ops.output import silent
from services.common.ids import isoformat, utcnow
from services.common.version import darkroom_version
from services.storage.settings import StorageSettings

# progress(label, steps) -> a context manager giving a bar, bar.update(n):
# ops.output.progress draws one; ops.output.silent (the default) draws nothing
Progress = Callable[[str, int], ContextManager[Any]]
LOCK = ".lock"


class BackupError(Exception):
    """An expected failure of a backup command; the message says why."""


@dataclass(frozen=True)
class BackupSettings:
    root: Path
    key: bytes
    rotation: sets.Rotation
    interval_seconds: float

    @classmethod
    def from_config(cls, config: dict) -> BackupSettings:
        """From the ops config: ``BACKUP_DIR``, ``BACKUP_ENCRYPTION_KEY``,
        ``BACKUP_KEEP_DAILY``/``WEEKLY``/``MONTHLY``, ``BACKUP_INTERVAL_SECONDS``."""
        try:
            key = crypto.parse_key(config.get("BACKUP_ENCRYPTION_KEY"))
            rotation = sets.Rotation.from_config(config)
            interval = float(config.get("BACKUP_INTERVAL_SECONDS") or 86400)
        except ValueError as exc:
            raise BackupError(str(exc)) from None
        if interval <= 0:
            raise BackupError("BACKUP_INTERVAL_SECONDS must be more than 0")
        return cls(Path(str(config.get("BACKUP_DIR") or "var/backups")), key, rotation, interval)


def _safe(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


@contextmanager
def _locked(root: Path) -> Iterator[None]:
    root.mkdir(parents=True, exist_ok=True)
    with open(root / LOCK, "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BackupError(f"another backup command is using {root}") from None
        yield


def _seal_file(key: bytes, plain: Path, target: Path) -> dict:
    """Encrypt ``plain`` to ``target``: sizes and checksums of both."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(plain, "rb") as src, open(target, "wb") as raw:
        sealed = crypto.HashingWriter(raw)
        plain_size = crypto.encrypt(key, src, sealed)
    return {"size": sealed.size, "sha256": sealed.hexdigest(),
            "plain_size": plain_size, "plain_sha256": crypto.sha256_file(plain)}


def _seal_json(key: bytes, data, directory: Path, name: str) -> dict:
    with open(directory / name, "wb") as raw:
        sealed = crypto.HashingWriter(raw)
        crypto.encrypt(key, io.BytesIO(json.dumps(data).encode()), sealed)
    return {"file": name, "size": sealed.size, "sha256": sealed.hexdigest()}


def _open_json(key: bytes, directory: Path, entry: dict):
    _check_sha(directory / entry["file"], entry)
    out = io.BytesIO()
    with open(directory / entry["file"], "rb") as fh:
        crypto.decrypt(key, fh, out)
    return json.loads(out.getvalue())


def _check_sha(path: Path, entry: dict) -> None:
    if not path.is_file():
        raise BackupError(f"{path.name} is missing")
    if crypto.sha256_file(path) != entry["sha256"]:
        raise BackupError(f"{path.name}: checksum does not match the manifest")


def _decrypt_to(key: bytes, source: Path, target: Path) -> int:
    with open(source, "rb") as fh, open(target, "wb") as out:
        try:
            return crypto.decrypt(key, fh, out)
        except crypto.BackupCryptoError as exc:
            raise BackupError(f"{source.name}: {exc}") from None


# ---------------------------------------------------------------- run


def _previous_objects(settings: BackupSettings) -> tuple[Path | None, dict[tuple, dict]]:
    """The newest set's objects by (key, size, time): unchanged objects are
    hard-linked from it rather than read and encrypted again."""
    names = sets.complete_sets(settings.root)
    if not names:
        return None, {}
    directory = settings.root / names[-1]
    try:
        manifest = sets.read_manifest(directory)
        if manifest.get("key_fingerprint") != crypto.fingerprint(settings.key).hex():
            return None, {}
        index = _open_json(settings.key, directory, manifest["objects"]["index"])
    except (BackupError, crypto.BackupCryptoError, KeyError, ValueError):
        return None, {}
    return directory, {(o["key"], o["size"], o["last_modified"]): o for o in index}


def _backup_objects(settings: BackupSettings, directory: Path, backend, progress: Progress) -> dict:
    previous_dir, previous = _previous_objects(settings)
    (directory / "objects").mkdir()
    index, total, linked = [], 0, 0
    listed = list(backend.list(""))
    with progress("copying objects", len(listed)) as bar:
        for number, info in enumerate(listed):
            when = isoformat(info.last_modified)
            file = f"objects/{number:08d}.enc"
            old = previous.get((info.key, info.size, when))
            if old is not None and previous_dir is not None and (previous_dir / old["file"]).is_file():
                try:
                    os.link(previous_dir / old["file"], directory / file)
                except OSError:
                    shutil.copyfile(previous_dir / old["file"], directory / file)
                sha, linked = old["sha256"], linked + 1
            else:
                with backend.open(info.key) as src, open(directory / file, "wb") as raw:
                    sealed = crypto.HashingWriter(raw)
                    crypto.encrypt(settings.key, src, sealed)
                sha = sealed.hexdigest()
            index.append({"key": info.key, "size": info.size, "last_modified": when,
                          "file": file, "sha256": sha})
            total += info.size
            bar.update(1)
    entry = _seal_json(settings.key, index, directory, "objects.json.enc")
    return {"backend": backend.name, "count": len(index), "bytes": total, "unchanged": linked,
            "index": entry}


def _backup_database(settings: BackupSettings, directory: Path, service: str, url: str) -> dict:
    """One service's database dumped, sealed into ``databases/<service>.enc``:
    its manifest entry."""
    kind = sources.engine_kind(url)
    plain = directory / f"{service}.plain"
    try:
        sources.dump(url, plain)
        entry = _seal_file(settings.key, plain, directory / "databases" / f"{service}.enc")
    except sources.DumpError as exc:
        raise BackupError(f"{service}: {exc}") from None
    finally:
        plain.unlink(missing_ok=True)
    try:
        described = sources.describe(url)
    except SQLAlchemyError as exc:
        raise BackupError(f"{service}: cannot read its migration heads: "
                          f"{type(exc).__name__}") from None
    entry.update(engine=kind, file=f"databases/{service}.enc", **described)
    return entry


def run(settings: BackupSettings, progress: Progress = silent, now: datetime | None = None) -> dict:
    """Take a backup set of every database and the object store, then rotate.
    Returns the manifest, with ``kept`` and ``deleted`` set names."""
    now = now or utcnow()
    name = sets.set_name(now)
    with _locked(settings.root):
        if (settings.root / name).exists():
            raise BackupError(f"a backup set named {name} exists already")
        directory = settings.root / (sets.PARTIAL + name)
        shutil.rmtree(directory, ignore_errors=True)
        (directory / "databases").mkdir(parents=True)
        manifest = {"format": sets.FORMAT_VERSION, "name": name, "created_at": isoformat(now),
                    "darkroom_version": darkroom_version(),
                    "key_fingerprint": crypto.fingerprint(settings.key).hex(), "databases": {}}
        urls = sources.database_urls()
        with progress("dumping databases", len(sources.SERVICES)) as bar:
            for service in sources.SERVICES:
                manifest["databases"][service] = _backup_database(settings, directory, service,
                                                                  urls[service])
                bar.update(1)
        manifest["objects"] = _backup_objects(settings, directory, sources.object_backend(), progress)
        log = erasures.read_log(urls["privacy"])
        manifest["erasures"] = {**_seal_json(settings.key, log, directory, "erasures.json.enc"),
                                "subjects": len(log)}
        manifest["finished_at"] = isoformat(utcnow())
        sets.write_manifest(directory, manifest)
        os.rename(directory, settings.root / name)
        kept, deleted = sets.rotate(settings.root, settings.rotation)
    return {**manifest, "kept": kept, "deleted": deleted}


# ---------------------------------------------------------------- verify


def _set_dir(settings: BackupSettings, name: str | None) -> Path:
    names = sets.complete_sets(settings.root)
    if not names:
        raise BackupError(f"no backup set in {settings.root}")
    if name is None:
        return settings.root / names[-1]
    if name not in names:
        raise BackupError(f"no complete backup set named {name} in {settings.root}")
    return settings.root / name


def _manifest(settings: BackupSettings, directory: Path) -> dict:
    manifest = sets.read_manifest(directory)
    if manifest.get("key_fingerprint") != crypto.fingerprint(settings.key).hex():
        raise BackupError(f"{directory.name} was encrypted with another key than BACKUP_ENCRYPTION_KEY")
    return manifest


def _check_database(settings: BackupSettings, directory: Path, entry: dict | None,
                    plain: Path) -> str:
    """One dump of the set: checksummed, decrypted (to ``plain``, then
    deleted) and restorable; its one-line summary (BackupError or DumpError)."""
    if entry is None:
        raise BackupError("no dump in the set")
    try:
        _check_sha(directory / entry["file"], entry)
        _decrypt_to(settings.key, directory / entry["file"], plain)
        if crypto.sha256_file(plain) != entry["plain_sha256"]:
            raise BackupError("decrypted dump does not match its checksum")
        return sources.check_dump(entry["engine"], plain)
    finally:
        plain.unlink(missing_ok=True)


def verify(settings: BackupSettings, name: str | None = None, progress: Progress = silent) -> dict:
    """Check a set (the newest by default): every service's database present,
    its checksums right, decryptable and restorable (``pg_restore --list`` /
    SQLite's integrity check); every object present, checksummed and
    decryptable. ``problems`` lists what is wrong (empty: all good)."""
    directory = _set_dir(settings, name)
    manifest = _manifest(settings, directory)
    problems: list[str] = []
    databases: dict[str, str] = {}
    with (tempfile.TemporaryDirectory(prefix="darkroom-verify-") as tmp,
          progress("checking databases", len(sources.SERVICES)) as bar):
        for service in sources.SERVICES:
            try:
                databases[service] = _check_database(settings, directory,
                                                     manifest["databases"].get(service),
                                                     Path(tmp) / service)
            except (BackupError, sources.DumpError) as exc:
                problems.append(f"{service}: {exc}")
            bar.update(1)
    objects = 0
    try:
        index = _open_json(settings.key, directory, manifest["objects"]["index"])
        with progress("checking objects", len(index)) as bar:
            for item in index:
                try:
                    _check_sha(directory / item["file"], item)
                    with open(directory / item["file"], "rb") as fh:
                        size = crypto.decrypt(settings.key, fh, crypto.HashingWriter())
                    if size != item["size"]:
                        raise BackupError(f"{item['file']}: {size} bytes, {item['size']} expected")
                    objects += 1
                except (BackupError, crypto.BackupCryptoError) as exc:
                    problems.append(f"object {item['file']}: {exc}")
                bar.update(1)
        _open_json(settings.key, directory, manifest["erasures"])
    except (BackupError, crypto.BackupCryptoError, KeyError) as exc:
        problems.append(f"set: {exc}")
    return {"set": directory.name, "created_at": manifest.get("created_at"),
            "databases": databases, "objects": objects, "problems": problems}


def newest_age_seconds(settings: BackupSettings, now: datetime | None = None) -> float | None:
    """How old the newest complete set is; None without one."""
    names = sets.complete_sets(settings.root)
    if not names:
        return None
    return ((now or utcnow()) - sets.parse_name(names[-1])).total_seconds()


def list_sets(settings: BackupSettings) -> list[dict]:
    """Every complete set, oldest first, with why the rotation keeps it."""
    names = sets.complete_sets(settings.root)
    reasons = settings.rotation.keep(names)
    listed = []
    for name in names:
        manifest = sets.read_manifest(settings.root / name)
        listed.append({"set": name, "databases": sorted(manifest.get("databases", {})),
                       "objects": manifest.get("objects", {}).get("count"),
                       "kept_as": reasons.get(name, [])})
    return listed


# ---------------------------------------------------------------- restore


def erasure_log(settings: BackupSettings, directory: Path, live_urls: list[str]) -> dict[str, str]:
    """The erasure log a restore of ``directory`` must honour: the set's own,
    every newer set's, and each live privacy database's in ``live_urls``."""
    logs = []
    for name in sets.complete_sets(settings.root):
        if name >= directory.name:
            other = settings.root / name
            try:
                logs.append(_open_json(settings.key, other, _manifest(settings, other)["erasures"]))
            except (BackupError, crypto.BackupCryptoError, KeyError):
                if name == directory.name:
                    raise
    for url in live_urls:
        try:
            logs.append(erasures.read_log(url, required=True))
        except SQLAlchemyError as exc:
            raise BackupError(f"cannot read the erasure log of {_safe(url)}: "
                              f"{type(exc).__name__}") from None
    return erasures.merge(*logs)


def restore(settings: BackupSettings, name: str | None, erasure_log_urls: list[str],
            progress: Progress = silent) -> dict:
    """:func:`_restore` under the backup directory's lock: no set is taken of
    half-restored databases."""
    with _locked(settings.root):
        return _restore(settings, name, erasure_log_urls, progress)


def _restore(settings: BackupSettings, name: str | None, erasure_log_urls: list[str],
             progress: Progress = silent) -> dict:
    """Restore a set (the newest by default) into the databases and the object
    store the services are configured with, then replay the erasure log.
    The erasure log is read first, from the sets, ``erasure_log_urls`` and the
    target privacy database itself (when it holds one), before anything is
    overwritten."""
    directory = _set_dir(settings, name)
    manifest = _manifest(settings, directory)
    missing = [s for s in sources.SERVICES if s not in manifest["databases"]]
    if missing:
        raise BackupError(f"{directory.name} has no dump of {', '.join(missing)}")
    configs = {service: sources.service_config(service) for service in sources.SERVICES}
    urls = {service: str(configs[service]["DATABASE_URL"]) for service in sources.SERVICES}
    log = erasures.merge(erasure_log(settings, directory, erasure_log_urls),
                         erasures.read_log(urls["privacy"]))  # the one about to be replaced
    with tempfile.TemporaryDirectory(prefix="darkroom-restore-") as tmp:
        with progress("restoring databases", len(sources.SERVICES)) as bar:
            for service in sources.SERVICES:
                entry = manifest["databases"][service]
                plain = Path(tmp) / service
                _check_sha(directory / entry["file"], entry)
                _decrypt_to(settings.key, directory / entry["file"], plain)
                try:
                    sources.restore(entry["engine"], plain, urls[service])
                except sources.DumpError as exc:
                    raise BackupError(f"{service}: {exc}") from None
                finally:
                    plain.unlink()
                bar.update(1)
        backend = sources.object_backend(configs["storage"])
        backend.ensure_ready(StorageSettings.from_config(configs["storage"]).safety_expiry_days())
        index = _open_json(settings.key, directory, manifest["objects"]["index"])
        with progress("restoring objects", len(index)) as bar:
            for item in index:
                _check_sha(directory / item["file"], item)
                plain = Path(tmp) / "object"
                size = _decrypt_to(settings.key, directory / item["file"], plain)
                with open(plain, "rb") as fh:
                    backend.put(item["key"], fh, size, "application/octet-stream")
                plain.unlink()
                bar.update(1)
    erased = erasures.replay(urls, configs, backend, log)
    return {"set": directory.name, "databases": sorted(urls), "objects": len(index),
            "erasure_log": len(log), "erased_again": len(erased)}
