"""A backup set on disk, its manifest, and rotation.

A set is a directory of ``BACKUP_DIR`` named by its UTC time
(``20261203T180000Z``)::

    manifest.json              what is in the set (no personal data): below
    databases/<service>.enc    pg_dump --format=custom, or an SQLite copy
    objects/<n>.enc            one per stored object
    objects.json.enc           which object each file is (keys name owners)
    erasures.json.enc          the erasure log when the set was taken

Every ``.enc`` file is :mod:`ops.backups.crypto`'s format. A set is written
under ``.partial-<name>`` and renamed when complete, so a set with a name
is whole; partial ones are removed by the next run.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

NAME_FORMAT = "%Y%m%dT%H%M%SZ"
MANIFEST = "manifest.json"
PARTIAL = ".partial-"
FORMAT_VERSION = 1


def set_name(when: datetime) -> str:
    return when.astimezone(UTC).strftime(NAME_FORMAT)


def parse_name(name: str) -> datetime | None:
    try:
        return datetime.strptime(name, NAME_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        return None


def complete_sets(root: Path) -> list[str]:
    """The names of the complete sets under ``root``, oldest first."""
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir()
                  if p.is_dir() and parse_name(p.name) and (p / MANIFEST).is_file())


def read_manifest(directory: Path) -> dict:
    return json.loads((directory / MANIFEST).read_text())


def write_manifest(directory: Path, manifest: dict) -> None:
    tmp = directory / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True))
    os.replace(tmp, directory / MANIFEST)


@dataclass(frozen=True)
class Rotation:
    """How many sets to keep: the newest of each of the last ``daily`` days,
    ``weekly`` ISO weeks and ``monthly`` months that have one (the newest
    set is always kept)."""

    daily: int = 7
    weekly: int = 4
    monthly: int = 6

    @classmethod
    def from_config(cls, config: dict) -> Rotation:
        def count(name: str, default: int) -> int:
            value = config.get(name)
            number = default if value in (None, "") else int(value)
            if number < 0:
                raise ValueError(f"{name} must be 0 or more")
            return number

        return cls(daily=count("BACKUP_KEEP_DAILY", 7), weekly=count("BACKUP_KEEP_WEEKLY", 4),
                   monthly=count("BACKUP_KEEP_MONTHLY", 6))

    def keep(self, names: list[str]) -> dict[str, list[str]]:
        """For each kept set, why (``daily``, ``weekly``, ``monthly``, ``newest``)."""
        dated = sorted(((parse_name(n), n) for n in names if parse_name(n)), reverse=True)
        reasons: dict[str, list[str]] = {}
        periods = (("daily", self.daily, lambda t: t.date()),
                   ("weekly", self.weekly, lambda t: t.isocalendar()[:2]),
                   ("monthly", self.monthly, lambda t: (t.year, t.month)))
        for label, limit, period in periods:
            seen = []
            for when, name in dated:  # newest first: the first of a period is its newest
                key = period(when)
                if key in seen:
                    continue
                if len(seen) >= limit:
                    break
                seen.append(key)
                reasons.setdefault(name, []).append(label)
        if dated:
            reasons.setdefault(dated[0][1], []).append("newest")
        return reasons


def rotate(root: Path, rotation: Rotation) -> tuple[list[str], list[str]]:
    """Delete the sets the rotation does not keep and any partial set;
    returns (kept, deleted) names."""
    names = complete_sets(root)
    kept = rotation.keep(names)
    deleted = [n for n in names if n not in kept]
    for name in deleted:
        shutil.rmtree(root / name)
    if root.is_dir():
        for stale in root.glob(PARTIAL + "*"):
            shutil.rmtree(stale, ignore_errors=True)
    return sorted(kept), deleted
