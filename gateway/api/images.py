"""Images and uploads (docs/api.md "Images and uploads"), over the storage service's RPC.

``POST /v1/uploads`` takes the multipart field ``file`` (the client's filename
and content type are not trusted: storage sniffs and re-encodes the bytes),
streams it to an upload slot of the storage service and has storage finish the
upload. Bodies larger than ``UPLOAD_MAX_BYTES`` (plus a little multipart
framing) are refused from their ``Content-Length`` before anything is read or
asked. Another user's images, unknown ids and ids that are not UUIDs are all
404 ``not_found``. Every answer is ``Cache-Control: no-store``: the URLs in
them are signed and short-lived.
"""

from __future__ import annotations

from typing import BinaryIO

from flask import redirect, request
from flask.views import MethodView
from flask_smorest.fields import Upload
from marshmallow import Schema

from gateway import transfer
from gateway.api.common import Blueprint, call, capped_body, errors, for_caller, given, no_store
from gateway.auth import authenticated
from gateway.transfer import upload_max_bytes
from services.common.contracts import storage as c
from services.common.errors import DomainError, not_found, payload_too_large

# room for the multipart framing around the file (boundaries, part headers)
MULTIPART_ALLOWANCE = 64 * 1024

images_blp = Blueprint("images", __name__, url_prefix="/v1",
                       description="Uploads and the caller's images (uploads and generated outputs)")
public_blp = Blueprint("public_images", __name__, url_prefix="/v1/public",
                       description="Images their owners made public (no authentication)")

images_blp.after_request(no_store)
public_blp.after_request(no_store)


class UploadForm(Schema):
    file = Upload(required=True, metadata={"description": "a PNG, JPEG or WebP image"})


def _size_of(stream: BinaryIO) -> int:
    stream.seek(0, 2)
    size = stream.tell()
    stream.seek(0)
    return size


@images_blp.route("/uploads", methods=["POST"])
@images_blp.response(201, c.ImageObject)
@images_blp.alt_response(413, description="the file is larger than UPLOAD_MAX_BYTES")
@errors(415, 422)
@capped_body(upload_max_bytes, "file", framing=MULTIPART_ALLOWANCE)
@authenticated
@images_blp.arguments(UploadForm, location="files")
def upload(form):
    """Upload a PNG, JPEG or WebP image (EXIF and location data are removed)"""
    unknown = sorted((set(request.files) | set(request.form)) - {"file"})
    if unknown or len(request.files.getlist("file")) > 1:
        raise DomainError("invalid_request", "send one multipart field, file", 400,
                          {"fields": {name: ["Unknown field."] for name in unknown}
                           or {"file": ["Send one file."]}})
    stream = form["file"].stream
    max_bytes = upload_max_bytes()
    size = _size_of(stream)
    if size > max_bytes:
        raise payload_too_large(max_bytes)
    if size == 0:
        raise DomainError("invalid_request", "the file is empty", 400,
                          {"fields": {"file": ["The file is empty."]}})
    # two short checkouts: no pooled proxy is held while the bytes travel
    slot = for_caller(None, "storage.create_upload_slot")
    transfer.send_to_slot(slot, stream, size, max_bytes)
    return for_caller(c.ImageObject, "storage.finish_upload", str(slot["upload_id"]))


@images_blp.route("/images", methods=["GET"])
@images_blp.arguments(c.ImageQuery, location="query")
@images_blp.response(200, c.ImagePage)
@authenticated
def list_images(query):
    """The caller's images, newest first (filter by kind or job)"""
    query = {k: (str(v) if k == "job_id" else v) for k, v in given(query).items()}
    return for_caller(c.ImagePage, "storage.list_objects", query)


@images_blp.route("/images/<uuid:image_id>")
class Image(MethodView):
    @images_blp.response(200, c.ImageObject)
    @authenticated
    def get(self, image_id):
        """One of the caller's images, with a signed, short-lived download URL"""
        return for_caller(c.ImageObject, "storage.get_object", str(image_id))

    @images_blp.response(200, c.ImageObject)
    @authenticated
    @images_blp.arguments(c.SetVisibility)
    def patch(self, payload, image_id):
        """Make an image public (readable by anyone with its new `public_id`) or private again"""
        return for_caller(c.ImageObject, "storage.set_visibility", str(image_id), payload)

    @images_blp.response(204)
    @authenticated
    def delete(self, image_id):
        """Delete an image and its bytes"""
        for_caller(None, "storage.delete_object", str(image_id))


@images_blp.route("/images/<uuid:image_id>/content", methods=["GET"])
@images_blp.response(302, description="redirect to the image's signed, short-lived URL",
                     headers={"Location": {"schema": {"type": "string"}}})
@authenticated
def image_content(image_id):
    """Redirect to the image's bytes"""
    image = for_caller(None, "storage.get_object", str(image_id))
    url = image.get("url") if isinstance(image, dict) else None
    if not url:
        raise not_found("image")
    return redirect(url, 302)


@public_blp.route("/images/<string:public_id>", methods=["GET"])
@public_blp.response(200, c.PublicImageObject)
def public_image(public_id):
    """A public image by its public id (404 for private or unknown ones)"""
    return call(c.PublicImageObject, "storage.get_public_object", public_id)
