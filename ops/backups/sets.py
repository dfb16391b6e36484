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
from datetime import UTC, datetime
from pathlib import Path

# the names of sets and their rotation are shared with the published retention schedule
from services.common.backup_rotation import NAME_FORMAT, Rotation, parse_name  # noqa: F401

MANIFEST = "manifest.json"
PARTIAL = ".partial-"
FORMAT_VERSION = 1


def set_name(when: datetime) -> str:
    return when.astimezone(UTC).strftime(NAME_FORMAT)


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
