"""Sign-in with OpenID Connect providers (the auth service, services/auth/oidc.py):
its RPC payloads and answers, which the gateway uses as its HTTP schemas too."""

from __future__ import annotations

from marshmallow import EXCLUDE, fields, validate

from services.common.contracts.auth import AgeFields
from services.common.contracts.base import RpcSchema
from services.common.contracts.generation import WEBHOOK_URL_PATTERN, _webhook_url

# A query parameter's bound: percent-encoded, the longest fits the request
# line servers take (8190 bytes for gunicorn) whatever its characters.
URL_MAX = 500
PROVIDER_NAME = validate.Regexp(r"^[a-z][a-z0-9_]{0,31}$", error="not a provider name")


class Provider(RpcSchema):
    name = fields.String(required=True)


class ProviderList(RpcSchema):
    items = fields.List(fields.Nested(Provider), required=True)


class Start(RpcSchema):
    # an absolute http(s) URL, checked as a job's webhook_url is
    redirect_uri = fields.String(required=True,
                                 validate=[validate.Length(max=URL_MAX), _webhook_url],
                                 metadata={"pattern": WEBHOOK_URL_PATTERN,
                                           "description": "where the app is sent back with a "
                                                          "one-time code (on the allow-list)"})


class Link(Start):
    provider = fields.String(required=True, validate=PROVIDER_NAME)


class Started(RpcSchema):
    authorization_url = fields.String(required=True)


class Callback(RpcSchema):
    """What the provider sends the browser back with (OAuth 2.0 / OIDC); the
    other parameters providers add (Google's ``scope``, ``authuser``,
    ``prompt``; ``session_state``...) are left out. Only ``state`` has a
    length of its own (it is ours); the rest are the provider's (some codes
    are over a kilobyte), bounded by the request line."""

    class Meta:
        unknown = EXCLUDE

    state = fields.String(validate=validate.Length(max=200))
    code = fields.String()
    error = fields.String()
    error_description = fields.String()
    error_uri = fields.String()
    iss = fields.String(metadata={"description": "the issuer (RFC 9207), checked when given"})


class Redirect(RpcSchema):
    location = fields.String(required=True)


class Exchange(AgeFields):
    code = fields.String(required=True, validate=validate.Length(min=1, max=200))


class Identity(RpcSchema):
    id = fields.UUID(required=True)
    provider = fields.String(required=True)
    email = fields.String(allow_none=True, required=True)
    email_verified = fields.Boolean(required=True)
    created_at = fields.AwareDateTime(required=True)


class IdentityList(RpcSchema):
    items = fields.List(fields.Nested(Identity), required=True)
