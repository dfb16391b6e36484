"""What every API blueprint shares: request parsing with API.md's errors, RPC
calls, shaping RPC results through the contract's response schemas."""

from __future__ import annotations

import datetime as dt
import json
from functools import wraps
from http import HTTPStatus
from typing import Any

import flask_smorest
from apispec import BasePlugin
from flask import current_app, request
from marshmallow import Schema, fields
from webargs import core
from webargs.flaskparser import FlaskParser, is_json_request

from services.common.errors import DomainError


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
# itself would also take "5" for an integer, 1 for a boolean or "0.5" for a number.
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


# ------------------------------------------------------------ response shaping


def present(schema: type[Schema] | Schema, data: Any) -> Any:
    """Turn an RPC result (JSON types) into what ``schema`` dumps: keep the
    declared fields only, parse ISO datetimes. The contract schemas then dump
    it, so responses carry exactly the documented fields."""
    instance = schema() if isinstance(schema, type) else schema
    if not isinstance(data, dict):
        return data
    out = {}
    for name, field in instance.fields.items():
        key = field.data_key or name
        if key in data:
            out[name] = _present_value(field, data[key])
    return out


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
