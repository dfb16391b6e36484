"""The export archive: one ZIP with a JSON file per service, the user's
images and videos, and a README saying what each file holds and what was
left out and why.

It is written to a temporary file (exports can be large: media are streamed
in, never held in memory), then stored through the storage service as one of
the user's ``export`` objects (storage deletes exports after
``EXPORT_RETENTION_DAYS``, 7): an output slot with the archive's size and
SHA-256, a PUT, and a commit that checks both. Media and big parts are read
from storage at internal URLs (``storage.get_source``).

The storage client is anything with the storage service's RPC methods
(``get_source``, ``create_output_slot``, ``commit_objects``); ``http`` is
``requests`` or a stand-in.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import zipfile
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import requests

from services.common.errors import DomainError
from services.common.ids import isoformat

CHUNK = 1024 * 1024
MEDIA_KINDS = {"upload": "uploads", "output": "outputs"}
EXTENSIONS = {"image/png": ".png", "image/jpeg": ".jpg", "image/webp": ".webp",
              "video/mp4": ".mp4", "application/zip": ".zip"}
PART_FILE = "part.json"


class ArchiveError(Exception):
    """The archive cannot be built now (a download or the upload failed)."""


@dataclass
class Part:
    service: str
    data: dict | None = None
    object_id: str | None = None
    about: str = ""
    withheld: list[dict] = field(default_factory=list)


@dataclass
class Built:
    path: str
    size: int
    sha256: str
    files: list[str]
    media: int


# ---------------------------------------------------------------- reading from storage


def _download(http, url: str, timeout: float):
    try:
        response = http.get(url, stream=True, timeout=timeout)
    except requests.RequestException as exc:
        raise ArchiveError(f"download failed: {exc}") from None
    if response.status_code != 200:
        response.close()
        raise ArchiveError(f"download failed: HTTP {response.status_code}")
    return response


def part_data(storage, http, user_id: str, part: Part, timeout: float) -> dict:
    """A part's JSON: in the event, or in the stored zip it points at."""
    if part.data is not None:
        return part.data
    source = storage.get_source(user_id, str(part.object_id))
    response = _download(http, source["url"], timeout)
    with response:
        blob = response.content
    try:
        with zipfile.ZipFile(io.BytesIO(blob)) as zf:
            return json.loads(zf.read(PART_FILE))
    except (zipfile.BadZipFile, KeyError, ValueError) as exc:
        raise ArchiveError(f"the {part.service} part is not readable: {exc}") from None


# ---------------------------------------------------------------- building


def _json_file(part: Part, data: dict, exported_at: datetime) -> bytes:
    body = {"service": part.service, "exported_at": isoformat(exported_at), "about": part.about,
            "withheld": part.withheld, "data": data}
    return json.dumps(body, indent=2, ensure_ascii=False, sort_keys=False).encode()


def _media(zf: zipfile.ZipFile, storage, http, user_id: str, objects: list[dict],
           timeout: float) -> tuple[int, list[dict], dict[str, int]]:
    """Stream the user's images and videos into ``media/``; returns how many,
    what was left out, and the count per folder."""
    count, left_out, folders = 0, [], {}
    for obj in objects:
        folder = MEDIA_KINDS.get(obj.get("kind"))
        if folder is None:
            continue
        try:
            source = storage.get_source(user_id, str(obj["id"]))
        except DomainError as exc:
            if exc.code != "not_found":
                raise
            left_out.append({"what": f"{obj['kind']} {obj['id']}",
                             "why": "it has expired (or was deleted) and awaits deletion"})
            continue
        name = f"media/{folder}/{obj['id']}{EXTENSIONS.get(obj.get('content_type'), '')}"
        response = _download(http, source["url"], timeout)
        with response, zf.open(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), "w",
                               force_zip64=True) as out:
            for chunk in response.iter_content(CHUNK):
                out.write(chunk)
        count += 1
        folders[folder] = folders.get(folder, 0) + 1
    return count, left_out, folders


def readme(request_id: str, now: datetime, files: list[tuple[str, str]],
           folders: dict[str, int], withheld: list[tuple[str, dict]],
           retention_days: int | None) -> str:
    lines = [
        "# Your Darkroom data",
        "",
        f"Export request {request_id}, assembled {isoformat(now)}.",
        "",
        "Everything Darkroom holds about you, service by service. JSON files are UTF-8;",
        "times are UTC (ISO 8601); ids are UUIDs. Each JSON file has `service`,",
        "`exported_at`, `about` (what it holds), `withheld` (what it leaves out, and why)",
        "and `data`.",
    ]
    if retention_days:
        lines += ["", f"This archive is deleted from our storage {retention_days} days after it "
                      "was made; download it before then."]
    lines += ["", "## Files", ""]
    for name, about in files:
        lines.append(f"- `{name}`: {about}")
    labels = {"uploads": "images you uploaded (as stored: re-encoded, without EXIF/GPS metadata)",
              "outputs": "images and videos generated for you"}
    for folder, count in sorted(folders.items()):
        lines.append(f"- `media/{folder}/` ({count}): {labels.get(folder, folder)}; each file "
                     "is named by its id, as listed in `storage.json`.")
    lines += ["", "## What is not included, and why", ""]
    if withheld:
        for service, item in withheld:
            lines.append(f"- {service}: {item['what']} — {item['why']}")
    else:
        lines.append("- Nothing.")
    lines.append("")
    return "\n".join(lines)


def build(storage, http, request_id: str, user_id: str, parts: list[Part], now: datetime,
          work_dir: str | None, timeout: float, retention_days: int | None = None) -> Built:
    """Write the archive to a temporary file; the caller stores it, then
    deletes the file. Raises :class:`ArchiveError` (or a storage
    DomainError) when something cannot be read now."""
    fd, path = tempfile.mkstemp(prefix="export-", suffix=".zip", dir=work_dir)
    os.close(fd)
    try:
        files: list[tuple[str, str]] = []
        withheld: list[tuple[str, dict]] = []
        media, folders = 0, {}
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, allowZip64=True) as zf:
            for part in parts:
                data = part_data(storage, http, user_id, part, timeout)
                name = f"{part.service}.json"
                zf.writestr(name, _json_file(part, data, now))
                files.append((name, part.about))
                withheld += [(part.service, w) for w in part.withheld]
                if part.service == "storage":
                    media, left_out, folders = _media(zf, storage, http, user_id,
                                                      data.get("objects") or [], timeout)
                    withheld += [("storage", w) for w in left_out]
            zf.writestr("README.md", readme(request_id, now, files, folders, withheld,
                                            retention_days))
        size, sha = _digest(path)
        return Built(path, size, sha, [n for n, _ in files] + ["README.md"], media)
    except BaseException:
        _unlink(path)
        raise


def _digest(path: str) -> tuple[int, str]:
    sha, size = hashlib.sha256(), 0
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            sha.update(chunk)
            size += len(chunk)
    return size, sha.hexdigest()


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


# ---------------------------------------------------------------- storing


def store(storage, http, user_id: str, request_id: str, built: Built, timeout: float) -> dict:
    """Store the archive as the user's ``export`` object; storage's view of it
    (id, size, expires_at...)."""
    slot = storage.create_output_slot(user_id, {
        "job_id": request_id, "content_type": "application/zip", "size": built.size,
        "sha256": built.sha256, "kind": "export"})
    headers: dict[str, Any] = {**(slot.get("headers") or {}), "Content-Length": str(built.size)}
    try:
        with open(built.path, "rb") as fh:
            response = http.request(slot["method"], slot["url"], data=fh, headers=headers,
                                    timeout=timeout)
    except requests.RequestException as exc:
        raise ArchiveError(f"upload failed: {exc}") from None
    if response.status_code >= 300:
        raise ArchiveError(f"upload failed: HTTP {response.status_code}")
    return storage.commit_objects(user_id, [str(slot["object_id"])])["items"][0]


def discard(built: Built) -> None:
    _unlink(built.path)
