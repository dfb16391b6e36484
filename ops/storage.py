"""Retention and usage of stored files: ``storage.purge_expired`` and
``storage.report`` over nameko RPC, and how the CLI prints their answers;
``storage rekey``, which works on the fs backend's files directly."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ops import rpc
from ops.errors import OpsError

# a purge may work through many batches before it answers
PURGE_TIMEOUT_SECONDS = 600
KIND_ORDER = ("upload", "output", "export")
AGE_ORDER = ("0-7", "7-30", "30+")


def _call(config: dict, method: str, *args: Any, timeout: float | None = None) -> Any:
    """``storage.<method>(*args)``; a DomainError propagates for the CLI to print."""
    return rpc.call(config, "storage", method, *args, timeout=timeout)


def purge(config: dict, dry_run: bool = False, batch_size: int | None = None,
          progress: Callable[[int], Any] | None = None) -> dict:
    """Purge what is past its retention now (or count it, with ``dry_run``):
    ``{"dry_run", "batches", "objects", "bytes"}``.

    ``progress(total)``: a purge first counts what is due (a dry run), makes
    ``bar = progress(total)`` and then purges one batch per call, calling
    ``bar.update(objects)`` after each, until a call purges nothing."""
    payload: dict[str, Any] = {"dry_run": dry_run}
    if batch_size is not None:
        payload["batch_size"] = batch_size
    timeout = max(float(config.get("RPC_TIMEOUT_SECONDS") or 30), PURGE_TIMEOUT_SECONDS)
    if dry_run or progress is None:
        return _call(config, "purge_expired", payload, timeout=timeout)
    due = _call(config, "purge_expired", {**payload, "dry_run": True}, timeout=timeout)
    totals = {"dry_run": False, "batches": 0, "objects": 0, "bytes": 0}
    with progress(int(due.get("objects") or 0)) as bar:
        while True:
            done = _call(config, "purge_expired", {**payload, "max_batches": 1}, timeout=timeout)
            for key in ("batches", "objects", "bytes"):
                totals[key] += int(done.get(key) or 0)
            bar.update(int(done.get("objects") or 0))
            if not done.get("objects"):  # nothing was left
                return totals


def report(config: dict) -> dict:
    """Counts and bytes by kind and by age, expired objects awaiting the purge,
    deleted objects (see the storage service's ``report``)."""
    return _call(config, "report")


# ------------------------------------------------------------ printing


def human_bytes(n: int | float) -> str:
    """1536 -> '1.5 KiB' (binary units; exact bytes below 1 KiB)."""
    n = float(n or 0)
    if abs(n) < 1024:
        return f"{int(n)} B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        n /= 1024
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}"
    raise AssertionError("unreachable")


def plural(n: int, word: str, many: str | None = None) -> str:
    return f"{n} {word if n == 1 else many or word + 's'}"


def purge_summary(result: dict) -> str:
    objects = plural(int(result.get("objects") or 0), "object")
    size = human_bytes(result.get("bytes") or 0)
    batches = plural(int(result.get("batches") or 0), "batch", "batches")
    if result.get("dry_run"):
        return (f"dry run: {objects} ({size}) past retention would be purged in {batches}; "
                "nothing was deleted")
    return f"purged {objects} ({size}) in {batches}"


def _ordered(groups: dict, order: tuple[str, ...]) -> list[str]:
    return [k for k in order if k in groups] + sorted(k for k in groups if k not in order)


def _table(title: str, groups: dict, order: tuple[str, ...]) -> list[str]:
    rows = [(name, str(int(groups[name].get("objects") or 0)),
             human_bytes(groups[name].get("bytes") or 0)) for name in _ordered(groups, order)]
    header = (title, "OBJECTS", "BYTES")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(3)]
    lines = [f"{header[0].ljust(widths[0])}  {header[1].rjust(widths[1])}  {header[2].rjust(widths[2])}"]
    for name, objects, size in rows:
        lines.append(f"{name.ljust(widths[0])}  {objects.rjust(widths[1])}  {size.rjust(widths[2])}")
    if not rows:
        lines.append("(none)")
    return lines


def report_lines(result: dict) -> list[str]:
    expired = result.get("expired_pending") or {}
    deleted = result.get("deleted") or {}
    return [
        *_table("KIND", result.get("by_kind") or {}, KIND_ORDER),
        "",
        *_table("AGE (DAYS)", result.get("by_age_days") or {}, AGE_ORDER),
        "",
        f"expired, awaiting purge: {plural(int(expired.get('objects') or 0), 'object')} "
        f"({human_bytes(expired.get('bytes') or 0)})",
        f"deleted (rows kept, bytes gone): {plural(int(deleted.get('objects') or 0), 'object')}",
    ]


# ------------------------------------------------------------ encryption keys (fs backend)


REKEY_OUTCOMES = ("rewrapped", "sealed", "current", "gone", "failed")


def storage_backend(path: str | None = None):
    """The storage service's backend, from its config file (``deploy/config/
    storage.yaml``, ``--storage-config``): ``storage rekey`` works on the files
    themselves, so it runs where the storage service's FS_ROOT is mounted,
    with its STORAGE_ENCRYPTION_KEYS. Refused like the service in production
    with weak secrets; a key ring that cannot read the files is refused too."""
    from services.common.config import config_path, load_config
    from services.common.secrets import ConfigurationRefused, refuse_insecure_config
    from services.storage.backends import KeyRingError, make_backend

    source = path or config_path("storage")
    try:
        config = load_config(source)
        refuse_insecure_config(config, "darkroom-ops storage", source)
        backend = make_backend(config)
        if backend.name == "fs":
            backend.files.check_keys()
    except FileNotFoundError:
        raise OpsError(f"config file not found: {source}") from None
    except (ConfigurationRefused, KeyRingError, ValueError) as exc:
        raise OpsError(str(exc)) from None
    return backend


def rekey(backend, keys, on_error=None) -> dict[str, int]:
    """Bring each file of ``keys`` under the newest master key
    (:meth:`FsBackend.rekey`): counts per outcome. Idempotent, so an
    interrupted run is resumed by running it again (done files are skipped
    after reading their header). A file that cannot be read (tampered, or
    sealed with a key the ring lacks) counts as failed and is reported to
    ``on_error(key, message)``; the others go on."""
    from services.storage.backends import TamperedObject

    counts = dict.fromkeys(REKEY_OUTCOMES, 0)
    for key in keys:
        try:
            counts[backend.rekey(key)] += 1
        except (TamperedObject, OSError) as exc:
            counts["failed"] += 1
            if on_error is not None:
                on_error(key, str(exc))
    return counts


def rekey_summary(counts: dict[str, int], current: str, forgotten: list[str]) -> list[str]:
    lines = [f"re-wrapped {plural(counts['rewrapped'], 'file')}, sealed "
             f"{plural(counts['sealed'], 'plaintext file')}, "
             f"{counts['current']} already under {current}"
             + (f", {counts['gone']} deleted meanwhile" if counts["gone"] else "")]
    if counts["failed"]:
        lines.append(f"{plural(counts['failed'], 'file')} could not be re-keyed (listed above): "
                     "keep every old key until they are dealt with")
    elif forgotten:
        lines.append(f"every file is sealed under {current}: the key(s) {', '.join(forgotten)} "
                     "may now be removed from STORAGE_ENCRYPTION_KEYS")
    return lines
