"""What every API blueprint shares: request parsing with API.md's errors, RPC
calls, shaping RPC results through the contract's response schemas."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import flask_smorest
from flask import current_app
from marshmallow import Schema, fields
from webargs import core
from webargs.flaskparser import FlaskParser, is_json_request

from services.common.errors import DomainError


def _reject_constant(name: str):
    raise ValueError(f"{name} is not JSON")


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


class Blueprint(flask_smorest.Blueprint):
    ARGUMENTS_PARSER = Parser()


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
