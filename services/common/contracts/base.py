"""The shapes every contract is built from: the event envelope, RPC schemas,
the event registry and the load/make helpers. The per-service modules import
this module, never the package, so the package can import them without a cycle."""

from __future__ import annotations

import uuid

from marshmallow import EXCLUDE, RAISE, Schema, ValidationError, fields, validate

from services.common.errors import DomainError
from services.common.ids import isoformat, utcnow


class EventSchema(Schema):
    """The envelope every event carries. Consumers ignore fields they do not
    know (a newer producer may add some); producers may not send unknown ones."""

    VERSION = 1

    class Meta:
        unknown = EXCLUDE

    event_id = fields.UUID(required=True)
    occurred_at = fields.AwareDateTime(required=True, default_timezone=None)
    version = fields.Integer(required=True)


class RpcSchema(Schema):
    """Base for RPC (and HTTP body) payloads: unknown fields are an error."""

    class Meta:
        unknown = RAISE


# Secrets a mail must show (a verification code, a reset token, an erasure's
# cancel token) travel sealed (services/common/sealed.py): the event, in the
# outbox, a retry queue or a dead-letter queue, never holds them in clear; only
# the notifications service opens them.
def Sealed(**kw):
    return fields.String(validate=validate.Length(min=1, max=1000), **kw)


class PageQuery(RpcSchema):
    """``?limit=&cursor=`` of every list (services.common.pagination)."""

    limit = fields.Integer(load_default=20, validate=validate.Range(min=1, max=100))
    cursor = fields.String(load_default=None, validate=validate.Length(min=1, max=200))


def page_of(item: type[Schema], name: str) -> type[RpcSchema]:
    """The schema ``name`` of one page of a list of ``item``: its ``items``
    and the ``next_cursor`` of the page after it (null on the last page)."""
    return type(name, (RpcSchema,), {
        "__module__": item.__module__,
        "items": fields.List(fields.Nested(item), required=True),
        "next_cursor": fields.String(allow_none=True, required=True),
    })


EVENTS: dict[str, type[EventSchema]] = {}


def register_event(name: str):
    def wrap(schema_cls: type[EventSchema]) -> type[EventSchema]:
        for field in ("event_id", "occurred_at", "version"):  # the envelope's own
            if schema_cls._declared_fields[field] is not EventSchema._declared_fields[field]:
                raise TypeError(f"event {name}: {field!r} is the envelope's field; "
                                "name the payload's field otherwise")
        EVENTS[name] = schema_cls
        schema_cls.EVENT_NAME = name
        return schema_cls

    return wrap


def event_schema(name: str) -> EventSchema:
    try:
        return EVENTS[name]()
    except KeyError:
        raise ValidationError(f"unknown event {name!r}") from None


def make_event(name: str, data: dict) -> dict:
    """Validate ``data`` against the event's schema and return the JSON-ready
    envelope. A payload that does not fit raises ValidationError (a bug in the
    publisher: it must never reach the broker)."""
    schema = event_schema(name)
    body = {
        **data,
        "event_id": str(uuid.uuid4()),
        "occurred_at": isoformat(utcnow()),
        "version": type(schema).VERSION,
    }
    unknown = set(body) - set(schema.fields)
    if unknown:
        raise ValidationError({k: ["Unknown field."] for k in sorted(unknown)})
    return schema.dump(schema.load(body))


def load_event(name: str, body) -> dict:
    """Load an event body; raises ValidationError when it does not fit."""
    if not isinstance(body, dict):
        raise ValidationError("event body must be an object")
    return event_schema(name).load(body)


def load_rpc(schema: type[Schema] | Schema, payload) -> dict:
    """Load an RPC payload or raise a 400 ``invalid_request`` DomainError."""
    instance = schema() if isinstance(schema, type) else schema
    try:
        return instance.load(payload if payload is not None else {})
    except ValidationError as exc:
        raise DomainError(
            "invalid_request", "the request is not valid", 400, {"fields": exc.messages}
        ) from None
