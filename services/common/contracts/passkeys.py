"""Passkey (WebAuthn) contracts of the auth service: RPC payloads and answers,
which the gateway uses as its HTTP bodies too (docs/api.md "Passkeys").

The WebAuthn objects themselves (the options for the browser, the credential
it answers with) are the JSON forms of the WebAuthn Level 3 specification
(``PublicKeyCredentialCreationOptionsJSON``, ``RegistrationResponseJSON``...):
``PublicKey.toJSON()`` and ``PublicKeyCredential.parse*OptionsFromJSON()`` in a
browser; the auth service checks them with the ``webauthn`` package.
"""

from __future__ import annotations

from marshmallow import fields, validate

from services.common.contracts.auth import KEY_NAME_MAX
from services.common.contracts.base import RpcSchema, page_of

# base64url of a credential id: WebAuthn caps the id at 1023 bytes
PASSKEY_CREDENTIAL_ID_MAX = 1400


def Credential(description: str):
    """The browser's answer, as JSON; its members are checked by the webauthn
    package (a malformed one is 400/401 ``invalid_passkey``)."""
    return fields.Dict(required=True, metadata={"description": description})


# ---------------------------------------------------------------- requests


class RegisterPasskey(RpcSchema):
    credential = Credential("the browser's answer to navigator.credentials.create() with the "
                            "options of POST /v1/me/passkeys/options, as JSON "
                            "(RegistrationResponseJSON: id, rawId, type, response)")
    name = fields.String(load_default="Passkey", validate=validate.Length(min=1, max=KEY_NAME_MAX),
                         metadata={"description": "a label to tell the caller's passkeys apart"})


class PasskeyLogin(RpcSchema):
    credential = Credential("the browser's answer to navigator.credentials.get() with the options "
                            "of POST /v1/auth/passkey/options, as JSON "
                            "(AuthenticationResponseJSON: id, rawId, type, response)")


# ---------------------------------------------------------------- responses


class PasskeyOptions(RpcSchema):
    options = fields.Dict(required=True, metadata={
        "description": "the options for navigator.credentials.create() or .get(), as WebAuthn's "
                       "JSON (PublicKeyCredential.parseCreationOptionsFromJSON / "
                       "parseRequestOptionsFromJSON); its challenge is good once, for a few "
                       "minutes"})


class Passkey(RpcSchema):
    id = fields.UUID(required=True)
    name = fields.String(required=True)
    created_at = fields.AwareDateTime(required=True)
    last_used_at = fields.AwareDateTime(allow_none=True)
    aaguid = fields.String(required=True, metadata={
        "description": "the authenticator model's AAGUID (all zeros when it does not say)"})
    transports = fields.List(fields.String(), required=True)
    backed_up = fields.Boolean(required=True, metadata={
        "description": "synced to the provider's cloud (a multi-device passkey)"})


PasskeyPage = page_of(Passkey, "PasskeyPage")
