"""The ``fs`` storage backend's files: ``GET`` and ``PUT /v1/files/<key>``.

The storage service signs these URLs (services.common.signing) for the method,
the key and an expiry; the signature is the whole authorisation (no bearer
token), so a download URL cannot upload and neither outlives its expiry (403
``invalid_signature``). Without ``FILES.ROOT`` (s3 deployments) every such
path is a 404.

The layout on disk, the keys served, the signature check and the atomic write
are the fs backend's :class:`~services.storage.backends.fs.SignedFiles`; this
module is only their HTTP side (the write, with its HTTP errors, is
:func:`gateway.transfer.store_file`, which ``POST /v1/uploads`` also uses
when its upload slot is one of these URLs, instead of an HTTP call to itself).
"""

from __future__ import annotations

from pathlib import Path

from flask import Response, request
from flask.views import MethodView
from marshmallow import EXCLUDE, Schema, fields
from werkzeug.wsgi import wrap_file

from gateway.api.common import Blueprint, no_store
from gateway.transfer import signed_files, store_file, upload_max_bytes
from services.common.errors import DomainError, forbidden, not_found, payload_too_large
from services.storage.backends.fs import SignedFiles
from services.storage.backends.keys import InvalidKey

files_blp = Blueprint("files", __name__, url_prefix="/v1/files",
                      description="Files of the fs storage backend, under signed, expiring URLs")
files_blp.after_request(no_store)


def invalid_signature() -> DomainError:
    return forbidden("the URL's signature is invalid or has expired", code="invalid_signature")


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


def _authorised(method: str, key: str, query: dict) -> tuple[SignedFiles, Path]:
    files = signed_files()
    if files is None:
        raise not_found("file")
    try:
        path = files.served_path(key)
    except InvalidKey:
        raise not_found("file") from None
    if not files.verify(method, key, query["expires"], query["signature"], query["max_bytes"],
                        query["content_type"]):
        raise invalid_signature()
    return files, path


@files_blp.route("/<path:key>")
class File(MethodView):
    @files_blp.arguments(SignedQuery, location="query")
    @files_blp.response(200)
    @files_blp.doc(responses={"200": {"description": "the file's bytes",
                                      "content": {"application/octet-stream": {"schema": BINARY}}}})
    @files_blp.alt_response(403, description="invalid or expired signature")
    def get(self, query, key):
        """Download a file with a signed GET URL from the storage service"""
        files, path = _authorised("GET", key, query)  # HEAD is answered by this view too
        try:
            # decrypted while it streams; a range decrypts only the chunks it covers
            mtime = path.stat().st_mtime
            stream, size = files.open(path)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise not_found("file") from None
        response = Response(wrap_file(request.environ, stream),
                            mimetype=query["content_type"] or "application/octet-stream",
                            direct_passthrough=True)
        response.content_length = size
        response.last_modified = mtime  # type: ignore[assignment]
        response.set_etag(f"{mtime}-{size}")
        response.headers["Content-Disposition"] = "inline"
        return response.make_conditional(request.environ, accept_ranges=True,
                                         complete_length=size)

    @files_blp.arguments(SignedQuery, location="query")
    @files_blp.response(201, StoredFile)
    @files_blp.alt_response(403, description="invalid or expired signature")
    @files_blp.alt_response(413, description="larger than the URL's signed max_bytes "
                                             "(UPLOAD_MAX_BYTES for URLs without one)")
    @files_blp.doc(requestBody={"required": True,
                                "content": {"application/octet-stream": {"schema": BINARY}}})
    def put(self, query, key):
        """Upload a file (the raw request body) with a signed PUT URL from the storage service"""
        files, _ = _authorised("PUT", key, query)
        # an output slot's URL carries its declared size, signed; others the upload cap
        limit = upload_max_bytes() if query["max_bytes"] is None else int(query["max_bytes"])
        length = request.content_length
        if length is not None and length > limit:
            raise payload_too_large(limit)
        # the JSON routes' 1 MiB cap does not apply to files. One byte more than
        # the limit: when the server terminates the stream (gunicorn), werkzeug
        # refuses any read past its cap, even the one that finds the end of a
        # body of exactly the limit; the write enforces the limit itself.
        request.max_content_length = limit + 1
        size = store_file(files, key, request.stream, length, limit)
        return {"key": key, "size": size}
