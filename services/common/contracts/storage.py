"""Storage service contracts: its events, RPC payloads and the image object.

The gateway uses ``ImageObject`` / ``ImagePage`` / ``ImageQuery`` /
``SetVisibility`` for the HTTP API of docs/api.md "Images and uploads".
"""

from __future__ import annotations

from marshmallow import fields, validate

from services.common.contracts.base import (
    EventSchema,
    PageQuery,
    RpcSchema,
    page_of,
    register_event,
)

KINDS = ("upload", "output", "export")
VISIBILITIES = ("private", "public")
CONTENT_TYPES = ("image/png", "image/jpeg", "image/webp", "video/mp4", "application/zip")
SHA256 = validate.Regexp(r"^[0-9a-f]{64}$", error="must be a lowercase hex SHA-256")


# ---------------------------------------------------------------- events


@register_event("storage.objects_purged")
class ObjectsPurged(EventSchema):
    """One purge batch: the objects whose bytes are gone (retention expiry)."""

    object_ids = fields.List(fields.UUID(), required=True)
    count = fields.Integer(required=True)
    bytes = fields.Integer(required=True)
    batch_id = fields.UUID(required=True)


# ``billing.plan_changed``, which storage consumes, lives in contracts/billing.py.


# ---------------------------------------------------------------- requests


class ImageQuery(PageQuery):
    """``GET /v1/images?kind=&job_id=&limit=&cursor=``"""

    kind = fields.String(load_default=None, validate=validate.OneOf(["upload", "output"]))
    job_id = fields.UUID(load_default=None)


class SetVisibility(RpcSchema):
    visibility = fields.String(required=True, validate=validate.OneOf(VISIBILITIES))


class OutputSlotRequest(RpcSchema):
    """An upload slot for one output of a job (the generation service asks)."""

    job_id = fields.UUID(required=True)
    content_type = fields.String(required=True, validate=validate.OneOf(CONTENT_TYPES))
    size = fields.Integer(required=True, validate=validate.Range(min=1))
    sha256 = fields.String(required=True, validate=SHA256)
    width = fields.Integer(load_default=None, allow_none=True, validate=validate.Range(min=1))
    height = fields.Integer(load_default=None, allow_none=True, validate=validate.Range(min=1))
    kind = fields.String(load_default="output", validate=validate.OneOf(["output", "export"]))


class PurgeRequest(RpcSchema):
    dry_run = fields.Boolean(load_default=False)
    batch_size = fields.Integer(load_default=None, allow_none=True, validate=validate.Range(min=1, max=10000))
    # at most this many batches in this call (darkroom-ops calls batch by batch
    # to show its progress); None: until nothing expired is left
    max_batches = fields.Integer(load_default=None, allow_none=True,
                                 validate=validate.Range(min=1, max=10000))


# ---------------------------------------------------------------- responses


class ImageObject(RpcSchema):
    id = fields.UUID(required=True)
    kind = fields.String(required=True, validate=validate.OneOf(KINDS))
    content_type = fields.String(required=True)
    size = fields.Integer(required=True)
    width = fields.Integer(allow_none=True)
    height = fields.Integer(allow_none=True)
    sha256 = fields.String(required=True)
    visibility = fields.String(required=True, validate=validate.OneOf(VISIBILITIES))
    public_id = fields.String(allow_none=True, metadata={
        "description": "while public: its address for anyone, GET /v1/public/images/{public_id} "
                       "(random, new each time the image is made public; null when private)"})
    job_id = fields.UUID(allow_none=True)
    created_at = fields.AwareDateTime(required=True)
    expires_at = fields.AwareDateTime(allow_none=True)
    url = fields.String(metadata={"description": "signed, short-lived download URL"})


class PublicImageObject(RpcSchema):
    """What anyone may see of a public object (no owner, no object id, no job)."""

    id = fields.String(required=True, metadata={"description": "the image's public id"})
    kind = fields.String(required=True)
    content_type = fields.String(required=True)
    size = fields.Integer(required=True)
    width = fields.Integer(allow_none=True)
    height = fields.Integer(allow_none=True)
    created_at = fields.AwareDateTime(required=True)
    expires_at = fields.AwareDateTime(allow_none=True)
    url = fields.String(required=True)


ImagePage = page_of(ImageObject, "ImagePage")

# the outputs of a page of jobs (100 jobs of at most 4 images each)
SIGN_OUTPUTS_MAX = 400


class SignOutputs(RpcSchema):
    """``storage.sign_outputs``: the objects to sign download URLs for."""

    object_ids = fields.List(fields.UUID(), required=True,
                             validate=validate.Length(max=SIGN_OUTPUTS_MAX))


class OutputUrl(RpcSchema):
    """A signed, short-lived download URL of one of the owner's objects (a
    succeeded job's output, in the job: ``output_urls``)."""

    id = fields.UUID(required=True, metadata={"description": "the image id"})
    url = fields.String(required=True, metadata={
        "description": "GET it without credentials until `url_expires_at`"})
    url_expires_at = fields.AwareDateTime(required=True)


class UploadSlot(RpcSchema):
    """Where to PUT the bytes: ``url`` (presigned S3 URL or signed gateway URL
    for the fs backend), valid until ``expires_at``."""

    upload_id = fields.UUID(required=True)
    url = fields.String(required=True)
    method = fields.String(required=True)
    headers = fields.Dict(keys=fields.String(), values=fields.String(), required=True)
    max_bytes = fields.Integer(required=True)
    expires_at = fields.AwareDateTime(required=True)


class OutputSlot(UploadSlot):
    object_id = fields.UUID(required=True)
