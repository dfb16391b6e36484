"""What every API blueprint shares: request parsing with docs/api.md's errors, RPC
calls, shaping RPC results through the contract's response schemas, the
``Idempotency-Key`` header, capped request bodies and ``Cache-Control: no-store``."""

from __future__ import annotations

import datetime as dt
import functools
import json
from collections.abc import Callable
from functools import wraps
from http import HTTPStatus
from typing import Any

import flask_smorest
from apispec import BasePlugin
from flask import Response, current_app, request
from marshmallow import Schema, fields
from webargs import core
from webargs.flaskparser import FlaskParser, is_json_request
from werkzeug.exceptions import RequestEntityTooLarge

from gateway.auth import current_principal
from gateway.readcache import cached
from services.common.errors import DomainError, payload_too_large

IDEMPOTENCY_KEY_MAX = 200
IDEMPOTENCY_KEY_DOC = {
    "in": "header", "name": "Idempotency-Key", "required": False,
    # printable ASCII with at least one visible character (idempotency_key() refuses the rest)
    "schema": {"type": "string", "minLength": 1, "maxLength": IDEMPOTENCY_KEY_MAX,
               "pattern": "^[ -~]*[!-~][ -~]*$"},
    "description": "a repeat with the same key and body returns the first answer; "
                   "with another body, 409 idempotency_key_reused",
}


def _reject_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(item) for item in value)
    return False


def _invalid_json() -> DomainError:
    return DomainError("invalid_request", "the request body is not valid JSON", 400,
                       {"fields": {"_body": ["Invalid JSON."]}})


class Parser(FlaskParser):
    """webargs parser answering 400 ``invalid_request`` (with ``details.fields``)
    instead of webargs' 422, and 415 for a body that is not JSON."""

    DEFAULT_VALIDATION_STATUS = 400

    def _raw_load_json(self, req):
        if not is_json_request(req):
            if req.content_length or req.headers.get("Transfer-Encoding"):
                raise DomainError(
                    "unsupported_media_type", "send the request body as application/json", 415
                )
            return core.missing
        body = req.get_data(cache=True)
        if not body.strip():
            return core.missing
        try:
            data = json.loads(body, parse_constant=_reject_constant)
            # strings must be real Unicode: no lone surrogates from \ud800 escapes
            json.dumps(data, ensure_ascii=False).encode("utf-8")
        except (ValueError, RecursionError):  # JSONDecodeError, UnicodeError are ValueErrors
            raise _invalid_json() from None
        if _has_nul(data):  # no database stores U+0000 in text (PostgreSQL refuses it)
            raise DomainError("invalid_request", "strings may not contain U+0000", 400,
                              {"fields": {"_body": ["Strings may not contain U+0000."]}})
        return data

    def _load_location_data(self, *, schema, req, location):
        data = super()._load_location_data(schema=schema, req=req, location=location)
        if location == "json" and isinstance(data, dict):
            errors = json_type_errors(schema, data)
            if errors:
                raise DomainError("invalid_request", "the request is not valid", 400,
                                  {"fields": errors})
        return data

    def _handle_invalid_json_error(self, error, req, *args, **kwargs):
        raise _invalid_json()

    def handle_error(self, error, req, schema, *, error_status_code, error_headers):
        messages = error.messages
        if isinstance(messages, dict) and len(messages) == 1 and set(messages) <= set(self.__location_map__):
            # webargs keys messages by location ({"json": {...}}): drop that level
            (messages,) = messages.values()
        if not isinstance(messages, dict):
            messages = {"_schema": messages if isinstance(messages, list) else [str(messages)]}
        raise DomainError("invalid_request", "the request is not valid", 400, {"fields": messages})


# JSON types each marshmallow field takes, as the OpenAPI document says: marshmallow
# itself would also take "5" for an integer, 1 for a boolean or "0.5" for a number
# (and 1.5 for an integer, as 1; a number without a fraction, 1.0, is an integer).
_JSON_TYPES: tuple[tuple[type[fields.Field], tuple[type, ...], str], ...] = (
    (fields.Boolean, (bool,), "boolean"),
    (fields.Integer, (int,), "integer"),
    (fields.Number, (int, float), "number"),
    (fields.String, (str,), "string"),
    (fields.UUID, (str,), "string"),
    (fields.DateTime, (str,), "string"),
    (fields.Dict, (dict,), "object"),
    (fields.List, (list,), "array"),
    (fields.Nested, (dict,), "object"),
)


def json_type_errors(schema: Schema, data: dict) -> dict:
    """Fields of a JSON body whose JSON type is not the one the schema (and so
    the OpenAPI document) declares: {name: [message]}, nested for objects."""
    errors: dict[str, Any] = {}
    for name, field in schema.fields.items():
        key = field.data_key or name
        if key not in data or (data[key] is None and field.allow_none):
            continue
        problem = _json_type_error(field, data[key])
        if problem:
            errors[key] = problem
    return errors


def _json_type_error(field: fields.Field, value: Any) -> Any:
    if isinstance(field, fields.Integer) and isinstance(value, float) and value.is_integer():
        return None  # 1.0 is an integer to JSON Schema 2020-12 (OpenAPI 3.1): 1 is loaded
    for kind, types, label in _JSON_TYPES:
        if isinstance(field, kind):
            if not isinstance(value, types) or (bool not in types and isinstance(value, bool)):
                return [f"Must be a JSON {label}."]
            if isinstance(field, fields.Nested) and not field.many:
                return json_type_errors(field.schema, value) or None
            if isinstance(field, fields.List):
                inner = {i: e for i, item in enumerate(value)
                         if item is not None and (e := _json_type_error(field.inner, item))}
                return inner or None
            return None
    return None


def _body_required() -> DomainError:
    return DomainError("invalid_request", "the request needs a JSON body", 400,
                       {"fields": {"_body": ["Missing data for required field."]}})


class SchemaExtras(BasePlugin):
    """apispec plugin: a schema's ``OPENAPI_EXTRA`` (a dict of JSON-schema
    keywords, such as ``oneOf`` or ``minProperties``, or a function returning
    one) is added to its component,
    so that a rule a ``@validates_schema`` method enforces is in the document too."""

    def schema_helper(self, name, definition, **kwargs):
        schema = kwargs.get("schema")
        schema_cls = schema if isinstance(schema, type) else type(schema)
        extra = getattr(schema_cls, "OPENAPI_EXTRA", None)
        return dict((extra() if callable(extra) else extra) or {})


class Blueprint(flask_smorest.Blueprint):
    ARGUMENTS_PARSER = Parser()

    def arguments(self, schema, *, location="json", required=True, **kwargs):
        """flask-smorest's, and a JSON body documented as required is required:
        a request without one is 400 ``invalid_request`` (not an empty object)."""
        decorator = super().arguments(schema, location=location, required=required, **kwargs)
        if location != "json" or not required:
            return decorator

        instance = schema() if isinstance(schema, type) else schema
        if any(field.required for field in instance.fields.values()):
            return decorator  # a missing body already fails on its required fields

        def require_body(func):
            view = decorator(func)

            @wraps(view)
            def wrapper(*args, **kw):
                if not request.get_data(cache=True).strip():
                    raise _body_required()
                return view(*args, **kw)

            return wrapper

        return require_body


def errors(*statuses: int):
    """View decorator documenting the error answers (with the error body) an
    operation can give beyond those every operation of its kind can
    (gateway.app.Api.document_errors adds 401, 404, 413, 415, 429, 503)."""
    return flask_smorest.Blueprint.doc(
        responses={str(status): HTTPStatus(status).name for status in statuses})


def rpc():
    """``with rpc() as proxy: proxy.auth.get_user(...)`` — a pooled proxy."""
    return current_app.extensions["darkroom"].rpc.get()


def call(schema: type[Schema] | None, method: str, *args: Any, **kwargs: Any) -> Any:
    """``present(schema, <service>.<name>(*args, **kwargs))`` for ``method``
    ``"<service>.<name>"``, over one pooled proxy; the raw result without a schema."""
    service, name = method.split(".")
    with rpc() as proxy:
        result = getattr(getattr(proxy, service), name)(*args, **kwargs)
    return result if schema is None else present(schema, result)


def for_caller(schema: type[Schema] | None, method: str, *args: Any, **kwargs: Any) -> Any:
    """:func:`call` with the caller's user id first."""
    return call(schema, method, current_principal().user_id, *args, **kwargs)


def given(values: dict) -> dict:
    """``values`` without the ones left out (None): a query's filters for an RPC."""
    return {k: v for k, v in values.items() if v is not None}


# ------------------------------------------------------------ headers and bodies


def idempotency_key() -> str | None:
    """The request's ``Idempotency-Key``, or None; 400 when it is unusable."""
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    key = key.strip()
    if not key or len(key) > IDEMPOTENCY_KEY_MAX or not key.isprintable():
        raise DomainError("invalid_request", "the Idempotency-Key header is not valid", 400,
                          {"fields": {"Idempotency-Key": [
                              f"Must be 1 to {IDEMPOTENCY_KEY_MAX} printable characters."]}})
    return key


def no_store(response):
    """``after_request`` of blueprints whose answers carry signed, short-lived URLs."""
    response.headers["Cache-Control"] = "no-store"
    return response


def capped_body(max_bytes: Callable[[], int], what: str = "body", framing: int = 0):
    """View decorator: a body over ``max_bytes()`` (plus ``framing`` bytes of
    multipart framing) is refused, 413 ``payload_too_large``: from its
    ``Content-Length`` before the view runs, or when a chunked body goes past
    it; and this route may take a body larger than the JSON routes' cap."""

    def decorator(fn):
        @wraps(fn)
        def wrapper(*args, **kwargs):
            cap = max_bytes()
            limit = cap + framing
            if request.content_length is not None and request.content_length > limit:
                discard_body(request.content_length, cap=4 * limit)
                raise payload_too_large(cap, what)
            request.max_content_length = limit
            try:
                return fn(*args, **kwargs)
            except RequestEntityTooLarge:  # a chunked body that went past the limit
                raise payload_too_large(cap, what) from None

        return wrapper

    return decorator


def discard_body(length: int, cap: int, chunk: int = 64 * 1024) -> None:
    """Read and drop a refused body (up to ``cap`` bytes) so the client, still
    sending, reads the 413 instead of a reset connection. Larger bodies are
    not worth reading: the connection is closed on them."""
    if length > cap:
        return
    stream = request.environ.get("wsgi.input")
    remaining = length
    while stream is not None and remaining > 0:
        data = stream.read(min(chunk, remaining))
        if not data:
            break
        remaining -= len(data)


# ------------------------------------------------------------ response shaping


def present(schema: type[Schema] | Schema, data: Any) -> Any:
    """Turn an RPC result (JSON types) into what ``schema`` dumps: keep the
    declared fields only, parse ISO datetimes. The contract schemas then dump
    it, so responses carry exactly the documented fields."""
    instance = _instance(schema) if isinstance(schema, type) else schema
    if not isinstance(data, dict):
        return data
    out = {}
    for name, field in instance.fields.items():
        key = field.data_key or name
        if key in data:
            out[name] = _present_value(field, data[key])
    return out


def cached_answer(schema: type[Schema], kind: str, user_id: str, key: str | None,
                  load: Callable[[], Any], lifetime: Callable[[Any], float | None] | None = None,
                  shape: Callable[[Any], Any] = lambda value: value) -> Response:
    """A read through the read cache (gateway/readcache.py) answered with the
    body ``schema`` documents, as the view's ``response`` decorator would
    write it. The entry keeps that body, not the service's answer: a hit
    skips :func:`present`, the schema's dump and the JSON encoding (a quarter
    of a cached job view's CPU in a gateway worker). ``shape`` turns the
    loaded value into what ``schema`` presents."""
    body = cached(kind, user_id, key, load, lifetime,
                  lambda value: rendered(schema, shape(value)))
    return current_app.response_class(body, mimetype=current_app.json.mimetype)


def rendered(schema: type[Schema], data: Any) -> bytes:
    """The JSON body of ``data`` presented and dumped by ``schema`` (what
    flask-smorest's ``response`` decorator sends for a view that returns it)."""
    return current_app.json.response(_instance(schema).dump(present(schema, data))).get_data()


@functools.cache
def _instance(schema: type[Schema]) -> Schema:
    """One instance per schema class: :func:`present` only reads its fields (an
    instance per call deep-copies every declared field, a tenth of a cached read)."""
    return schema()


def _present_value(field: fields.Field, value: Any) -> Any:
    if value is None:
        return None
    if isinstance(field, fields.Nested):
        if field.many and isinstance(value, list):
            return [present(field.schema, item) for item in value]
        return present(field.schema, value)
    if isinstance(field, fields.List) and isinstance(value, list):
        return [_present_value(field.inner, item) for item in value]
    if isinstance(field, fields.DateTime) and isinstance(value, str):
        try:
            return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return value
    return value
