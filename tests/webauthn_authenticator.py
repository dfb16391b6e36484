"""A software WebAuthn authenticator, and the browser around it, for the tests.

It builds what a real platform authenticator and browser send, from scratch
(WebAuthn Level 2/3): an EC P-256 key pair (COSE alg -7, ES256), the
authenticatorData (rpIdHash, flags UP/UV/AT, a big-endian signature counter,
the attested credential data with the COSE_Key), the CBOR attestation object
in the ``none`` or ``packed`` (self-attestation) format, clientDataJSON with
the challenge and origin, and assertion signatures over
``authenticatorData || SHA-256(clientDataJSON)``. CBOR comes from Yubico's
``fido2`` package, the keys and signatures from ``cryptography``: nothing of
the ``webauthn`` package the auth service checks them with.

The answers are the JSON forms a browser's ``PublicKeyCredential.toJSON()``
gives (``RegistrationResponseJSON``, ``AuthenticationResponseJSON``).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import struct

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from fido2 import cbor

FLAG_UP, FLAG_UV, FLAG_BE, FLAG_BS, FLAG_AT = 0x01, 0x04, 0x08, 0x10, 0x40
ES256 = -7
AAGUID = bytes.fromhex("00112233445566778899aabbccddeeff")


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class SoftwareAuthenticator:
    """One discoverable credential on one authenticator, used from ``origin``."""

    def __init__(self, origin: str, *, counter_step: int = 1, user_verifying: bool = True,
                 synced: bool = False):
        self.origin = origin
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.credential_id = os.urandom(32)
        self.sign_count = 0
        self.counter_step = counter_step  # 0: an authenticator that keeps no counter
        self.user_verifying = user_verifying
        self.synced = synced
        self.rp_id: str | None = None
        self.user_handle: bytes | None = None

    def copy(self) -> SoftwareAuthenticator:
        """A clone: the same key, credential and counter, used from now on apart."""
        twin = SoftwareAuthenticator(self.origin, counter_step=self.counter_step,
                                     user_verifying=self.user_verifying, synced=self.synced)
        twin.key, twin.credential_id, twin.sign_count = self.key, self.credential_id, self.sign_count
        twin.rp_id, twin.user_handle = self.rp_id, self.user_handle
        return twin

    @property
    def id(self) -> str:
        return b64url(self.credential_id)

    # ------------------------------------------------------------ the parts

    def cose_key(self) -> bytes:
        numbers = self.key.public_key().public_numbers()
        return cbor.encode({1: 2, 3: ES256, -1: 1, -2: numbers.x.to_bytes(32, "big"),
                            -3: numbers.y.to_bytes(32, "big")})

    def _flags(self, attested: bool) -> int:
        flags = FLAG_UP | (FLAG_UV if self.user_verifying else 0)
        if self.synced:
            flags |= FLAG_BE | FLAG_BS
        return flags | (FLAG_AT if attested else 0)

    def authenticator_data(self, rp_id: str, attested: bool = False) -> bytes:
        data = hashlib.sha256(rp_id.encode()).digest()
        data += bytes([self._flags(attested)]) + struct.pack(">I", self.sign_count)
        if attested:
            data += AAGUID + struct.pack(">H", len(self.credential_id)) + self.credential_id
            data += self.cose_key()
        return data

    def client_data(self, kind: str, challenge: str, origin: str | None = None) -> bytes:
        return json.dumps({"type": kind, "challenge": challenge,
                           "origin": origin or self.origin, "crossOrigin": False},
                          separators=(",", ":")).encode()

    def _sign(self, data: bytes) -> bytes:
        return self.key.sign(data, ec.ECDSA(hashes.SHA256()))  # DER, as WebAuthn wants

    # ------------------------------------------------------------ the ceremonies

    def create(self, options: dict, *, fmt: str = "none", origin: str | None = None,
               rp_id: str | None = None) -> dict:
        """navigator.credentials.create(): ``options`` is the server's
        PublicKeyCredentialCreationOptionsJSON; the answer's JSON."""
        self.rp_id = rp_id or options["rp"]["id"]
        self.user_handle = unb64url(options["user"]["id"])
        client_data = self.client_data("webauthn.create", options["challenge"], origin)
        auth_data = self.authenticator_data(self.rp_id, attested=True)
        statement = {}
        if fmt == "packed":  # self attestation: signed with the credential's own key
            statement = {"alg": ES256,
                         "sig": self._sign(auth_data + hashlib.sha256(client_data).digest())}
        attestation = cbor.encode({"fmt": fmt, "attStmt": statement, "authData": auth_data})
        return {
            "id": self.id, "rawId": self.id, "type": "public-key",
            "response": {"clientDataJSON": b64url(client_data),
                         "attestationObject": b64url(attestation),
                         "transports": ["internal", "hybrid"]},
            "authenticatorAttachment": "platform", "clientExtensionResults": {},
        }

    def get(self, options: dict, *, origin: str | None = None) -> dict:
        """navigator.credentials.get() with the server's
        PublicKeyCredentialRequestOptionsJSON: an assertion, the counter moved on."""
        self.sign_count += self.counter_step
        client_data = self.client_data("webauthn.get", options["challenge"], origin)
        auth_data = self.authenticator_data(options.get("rpId") or self.rp_id)
        signature = self._sign(auth_data + hashlib.sha256(client_data).digest())
        return {
            "id": self.id, "rawId": self.id, "type": "public-key",
            "response": {"clientDataJSON": b64url(client_data),
                         "authenticatorData": b64url(auth_data),
                         "signature": b64url(signature),
                         "userHandle": b64url(self.user_handle) if self.user_handle else None},
            "authenticatorAttachment": "platform", "clientExtensionResults": {},
        }
