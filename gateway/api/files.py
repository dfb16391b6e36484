"""The ``fs`` storage backend's files: ``GET`` and ``PUT /v1/files/<key>``.

The storage service signs these URLs (services.common.signing) for the method,
the key and an expiry; the signature is the whole authorisation (no bearer
token), so a download URL cannot upload and neither outlives its expiry (403
``invalid_signature``). Only ``objects/...``, ``staging/...`` and ``public/...``
(public images' copies) keys of plain path segments are served, always inside
``FILES.ROOT``. Without ``FILES.ROOT``
(s3 deployments) every such path is a 404.

The layout on disk is the fs backend's (services/storage/backends/fs.py): the
file of ``<key>`` is ``<ROOT>/<key>``; writes go to a hidden ``.tmp-`` file in
the target directory and are renamed into place, so readers never see half a
file (the backend removes stale temporary files at start). ``POST /v1/uploads``
writes here directly with :meth:`FileStore.write` when its upload slot is one
of these URLs, instead of an HTTP call to itself.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO
from urllib.parse import parse_qs, unquote, urlsplit

from flask import current_app, request, send_file
from flask.views import MethodView
from marshmallow import EXCLUDE, Schema, fields
from werkzeug.exceptions import RequestEntityTooLarge

from gateway.api.common import Blueprint
from gateway.rpc import ServiceUnavailable
from services.common import signing
from services.common.errors import DomainError, forbidden, not_found
from services.storage.backends.fs import fsync_dir, temp_file, unlink_quietly
from services.storage.backends.keys import PUBLIC_PREFIX, InvalidKey, check_key

log = logging.getLogger("gateway.files")

DEFAULT_MAX_BYTES = 20 * 1024 * 1024
KEY_PREFIXES = ("objects/", "staging/", PUBLIC_PREFIX)
CHUNK = 1024 * 1024

files_blp = Blueprint("files", __name__, url_prefix="/v1/files",
                      description="Files of the fs storage backend, under signed, expiring URLs")


def payload_too_large(max_bytes: int) -> DomainError:
    return DomainError("payload_too_large", f"the file is larger than {max_bytes} bytes", 413,
                       {"max_bytes": max_bytes})


def invalid_signature() -> DomainError:
    return forbidden("the URL's signature is invalid or has expired", code="invalid_signature")


@dataclass(frozen=True)
class FileStore:
    """``FILES.ROOT`` with the secret its URLs are signed with."""

    root: Path
    secret: str
    max_bytes: int

    @classmethod
    def from_config(cls, config: dict) -> FileStore | None:
        """None unless ``FILES.ROOT`` and ``FILES.URL_SECRET`` are both set."""
        files = config.get("FILES") or {}
        root, secret = files.get("ROOT"), files.get("URL_SECRET")
        if not root or not secret:
            return None
        max_bytes = int(config.get("UPLOAD_MAX_BYTES") or DEFAULT_MAX_BYTES)
        return cls(Path(str(root)).resolve(), str(secret), max_bytes)

    def path_for(self, key: str) -> Path:
        """The file of ``key``; 404 ``not_found`` for a key that is not a plain
        ``objects/...``, ``staging/...`` or ``public/...`` path inside the root."""
        try:
            check_key(key)
        except InvalidKey:
            raise not_found("file") from None
        if not key.startswith(KEY_PREFIXES):
            raise not_found("file")
        path = (self.root / key).resolve()  # a symlink must not lead outside either
        if not path.is_relative_to(self.root) or path == self.root:
            raise not_found("file")
        return path

    def verify(self, method: str, key: str, expires, sig, max_bytes=None, content_type=None) -> bool:
        return signing.verify(self.secret, method, key, expires, sig, max_bytes=max_bytes,
                              content_type=content_type)

    def local_key(self, url: str, method: str = "PUT") -> str | None:
        """The key when ``url`` is one of these files' URLs, validly signed for
        ``method`` with this store's secret; None otherwise."""
        parts = urlsplit(url)
        _, found, quoted_key = parts.path.partition(signing.FILES_PREFIX)
        if not found:
            return None
        key = unquote(quoted_key)
        query = parse_qs(parts.query)
        expires = (query.get("expires") or [None])[0]
        sig = (query.get("signature") or [None])[0]
        max_bytes = (query.get("max_bytes") or [None])[0]
        return key if self.verify(method, key, expires, sig, max_bytes) else None

    def write(self, key: str, stream: BinaryIO, length: int | None = None,
              max_bytes: int | None = None) -> int:
        """Store ``stream`` as ``key`` atomically; returns the byte count.

        413 ``payload_too_large`` past ``max_bytes`` (default: the store's
        ``UPLOAD_MAX_BYTES``), 400 when the stream ends before ``length``, 503
        when the disk fails. Nothing is left behind on failure.
        """
        limit = self.max_bytes if max_bytes is None else max_bytes
        if length is not None and length > limit:
            raise payload_too_large(limit)
        path = self.path_for(key)
        try:
            fd, tmp = temp_file(path.parent)
        except OSError as exc:
            log.warning("cannot create a file under %s: %s", path.parent, exc)
            raise ServiceUnavailable("the file could not be stored") from None
        try:
            with os.fdopen(fd, "wb") as out:
                written = _copy(stream, out, limit)
                if length is not None and written != length:
                    raise DomainError("invalid_request", "the body is shorter than its Content-Length",
                                      400)
                out.flush()
                os.fsync(out.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException as exc:
            unlink_quietly(tmp)
            if isinstance(exc, OSError):
                log.warning("cannot write %s: %s", key, exc)
                raise ServiceUnavailable("the file could not be stored") from None
            raise
        fsync_dir(path.parent)
        return written


def _copy(stream: BinaryIO, out: BinaryIO, limit: int) -> int:
    written = 0
    while True:
        try:
            chunk = stream.read(CHUNK)
        except RequestEntityTooLarge:  # werkzeug's own cap on the request stream
            raise payload_too_large(limit) from None
        if not chunk:
            return written
        written += len(chunk)
        if written > limit:
            raise payload_too_large(limit)
        out.write(chunk)


def file_store() -> FileStore | None:
    """This gateway's store (None when it serves no files)."""
    return FileStore.from_config(current_app.extensions["darkroom"].config)


# ------------------------------------------------------------ routes


BINARY = {"type": "string", "format": "binary"}


class SignedQuery(Schema):
    class Meta:
        unknown = EXCLUDE

    expires = fields.String(load_default=None, metadata={"description": "unix time the URL expires at"})
    max_bytes = fields.String(load_default=None,
                              metadata={"description": "an upload URL's signed size cap"})
    content_type = fields.String(load_default=None,
                                 metadata={"description": "a download URL's signed media type"})
    signature = fields.String(load_default=None, metadata={"description": "hex HMAC-SHA256 of the URL"})


class StoredFile(Schema):
    key = fields.String(required=True)
    size = fields.Integer(required=True)


def _authorised(method: str, key: str, query: dict) -> tuple[FileStore, Path]:
    store = file_store()
    if store is None:
        raise not_found("file")
    path = store.path_for(key)
    if not store.verify(method, key, query["expires"], query["signature"], query["max_bytes"],
                        query["content_type"]):
        raise invalid_signature()
    return store, path


@files_blp.after_request
def _no_store(response):
    response.headers["Cache-Control"] = "no-store"
    return response


@files_blp.route("/<path:key>")
class File(MethodView):
    @files_blp.arguments(SignedQuery, location="query")
    @files_blp.response(200)
    @files_blp.doc(responses={"200": {"description": "the file's bytes",
                                      "content": {"application/octet-stream": {"schema": BINARY}}}})
    @files_blp.alt_response(403, description="invalid or expired signature")
    def get(self, query, key):
        """Download a file with a signed GET URL from the storage service"""
        _, path = _authorised("GET", key, query)  # HEAD is answered by this view too
        try:
            response = send_file(path, mimetype=query["content_type"] or "application/octet-stream",
                                 conditional=True, max_age=None)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise not_found("file") from None
        response.headers["Content-Disposition"] = "inline"
        return response

    @files_blp.arguments(SignedQuery, location="query")
    @files_blp.response(201, StoredFile)
    @files_blp.alt_response(403, description="invalid or expired signature")
    @files_blp.alt_response(413, description="larger than the URL's signed max_bytes "
                                             "(UPLOAD_MAX_BYTES for URLs without one)")
    @files_blp.doc(requestBody={"required": True,
                                "content": {"application/octet-stream": {"schema": BINARY}}})
    def put(self, query, key):
        """Upload a file (the raw request body) with a signed PUT URL from the storage service"""
        store, _ = _authorised("PUT", key, query)
        # an output slot's URL carries its declared size, signed; others the upload cap
        limit = store.max_bytes if query["max_bytes"] is None else int(query["max_bytes"])
        length = request.content_length
        if length is not None and length > limit:
            raise payload_too_large(limit)
        # the JSON routes' 1 MiB cap does not apply to files. One byte more than
        # the limit: when the server terminates the stream (gunicorn), werkzeug
        # refuses any read past its cap, even the one that finds the end of a
        # body of exactly the limit; _copy enforces the limit itself.
        request.max_content_length = limit + 1
        size = store.write(key, request.stream, length=length, max_bytes=limit)
        return {"key": key, "size": size}
