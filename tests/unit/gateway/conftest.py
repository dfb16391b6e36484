"""Unit-test fixtures for the gateway: the Flask test client in front of a fake
RPC pool whose ``auth`` and ``storage`` answer like those services' RPC surfaces."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from contextlib import contextmanager
from pathlib import Path

import pytest

from gateway.app import create_app
from services.auth.tokens import is_api_key
from services.common import signing
from services.common.errors import DomainError, admin_required, not_found
from services.common.observability import correlation_id
from tests.sealed import plaintext

NOW = "2026-01-02T03:04:05.123456+00:00"
LATER = "2026-01-09T03:04:05+00:00"

USER_ID = "01900000-0000-7000-8000-000000000001"
UNVERIFIED_ID = "01900000-0000-7000-8000-000000000002"
SESSION_ID = "01900000-0000-7000-8000-00000000a001"
KEY_ID = "01900000-0000-7000-8000-00000000b001"
UNVERIFIED_SESSION_ID = "01900000-0000-7000-8000-00000000a002"
IDENTITY_ID = "01900000-0000-7000-8000-00000000c001"

ADMIN_ID = "01900000-0000-7000-8000-000000000009"
ADMIN_SESSION_ID = "01900000-0000-7000-8000-00000000a009"
ADMIN_TOKEN = "session-token-admin"
TOKEN = "session-token-verified"
API_KEY = "drk_verified_apikey-verified"
UNVERIFIED_TOKEN = "session-token-unverified"


def user(user_id: str = USER_ID, email: str = "ada@example.com", verified: bool = True) -> dict:
    return {
        "id": user_id,
        "email": email,
        "email_verified": verified,
        "display_name": "Ada",
        "bio": None,
        "avatar_image_id": None,
        "created_at": NOW,
        "plan": "free",
        "processing_restricted": False,
        "totp_enabled": False,
        "is_admin": False,
    }


def principal(user_id: str, credential_type: str, credential_id: str, verified: bool = True) -> dict:
    return {
        "user_id": user_id,
        "email_verified": verified,
        "is_admin": False,
        "processing_restricted": False,
        "plan": "free",
        "credential_type": credential_type,
        "credential_id": credential_id,
    }


PASSKEY_ID = "01900000-0000-7000-8000-00000000c001"
PASSKEY_CREDENTIAL = "cGFzc2tleS1jcmVkZW50aWFs"


def passkey(name: str = "Laptop") -> dict:
    return {"id": PASSKEY_ID, "name": name, "created_at": NOW, "last_used_at": None,
            "aaguid": "00000000-0000-0000-0000-000000000000", "transports": ["internal"],
            "backed_up": True}


def api_key(key_id: str = KEY_ID, name: str = "default") -> dict:
    return {"id": key_id, "name": name, "prefix": "dr_live_ab", "created_at": NOW, "last_used_at": None}


class Reply:
    """What ``call_async`` returns: the call runs when its result is asked for
    (so ``fail_with`` raises there, as a real reply's error does)."""

    def __init__(self, call, args, kwargs):
        self.call, self.args, self.kwargs = call, args, kwargs

    def result(self):
        return self.call(*self.args, **self.kwargs)


class FakeRpcService:
    """A service's RPC surface in memory: RPC ``x`` is method ``rpc_x`` (with the
    real RPC's parameters: tests/unit/test_fakes.py checks them); every call is
    recorded; ``fail_with[name]`` makes a method raise."""

    def __init__(self):
        self.calls: list[tuple[str, tuple, dict]] = []
        self.correlation_ids: list[str | None] = []
        self.fail_with: dict[str, Exception] = {}

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        impl = getattr(type(self), "rpc_" + name, None)
        if impl is None:
            raise AttributeError(name)

        def call(*args, **kwargs):
            self.calls.append((name, args, kwargs))
            self.correlation_ids.append(correlation_id.get())
            if name in self.fail_with:
                raise self.fail_with[name]
            return impl(self, *args, **kwargs)

        call.call_async = lambda *args, **kwargs: Reply(call, args, kwargs)
        return call

    def called(self, name: str) -> list[tuple[tuple, dict]]:
        return [(a, k) for n, a, k in self.calls if n == name]


class FakeAuth(FakeRpcService):
    """The auth service's RPC surface, in memory; records every call."""

    def __init__(self):
        super().__init__()
        self.credentials = {
            ("token", TOKEN): principal(USER_ID, "session", SESSION_ID),
            ("token", ADMIN_TOKEN): {**principal(ADMIN_ID, "session", ADMIN_SESSION_ID),
                                     "is_admin": True},
            ("api_key", API_KEY): principal(USER_ID, "api_key", KEY_ID),
            ("token", UNVERIFIED_TOKEN): principal(UNVERIFIED_ID, "session", UNVERIFIED_SESSION_ID, False),
        }
        self.webhook_secrets: dict[str, dict] = {}  # user id -> its secret

    # -- the surface (rpc_ prefix: see FakeRpcService)

    def rpc_ping(self):
        return {"service": "auth", "ok": True}

    def rpc_register(self, payload, client_ip=None, user_agent=None):
        if str(payload.get("birth_date") or "2000-01-01") > "2015-01-01":  # the age gate
            raise DomainError("under_minimum_age", "you must be at least 13 to sign up", 400,
                              {"minimum_age": 13})
        return {
            "user": user(email=payload["email"], verified=False),
            "api_key": None,  # keys are made once the address is verified
        }

    # OpenID Connect sign-in (services/auth/oidc.py)

    def rpc_oidc_providers(self):
        return {"items": [{"name": "google"}]}

    def rpc_oidc_start(self, name, payload):
        if name != "google":
            raise DomainError("not_found", "sign-in provider not found", 404)
        return {"authorization_url": "https://accounts.example.test/auth?state=s"}

    def rpc_oidc_start_link(self, user_id, name, payload):
        return self.rpc_oidc_start(name, payload)

    def rpc_oidc_callback(self, name, params):
        if params.get("state") != "s":
            raise DomainError("oidc_invalid_state", "start again", 400)
        return {"location": "https://app.example.test/done?code=one-time"}

    def rpc_oidc_exchange(self, payload, client_ip=None, user_agent=None):
        if payload["code"] != "one-time":
            raise DomainError("oidc_invalid_code", "not valid", 400)
        return {"token": TOKEN, "expires_at": LATER, "user": user()}

    def rpc_list_identities(self, user_id):
        return {"items": [{"id": IDENTITY_ID, "provider": "google", "email": "ada@example.com",
                           "email_verified": True, "created_at": NOW}]}

    def rpc_unlink_identity(self, user_id, identity_id):
        if identity_id != IDENTITY_ID:
            raise DomainError("not_found", "identity not found", 404)
        return None

    def rpc_verify_email(self, payload):
        if payload["code"] != "123456":
            raise DomainError("invalid_code", "the code is not valid", 400)
        return {"user": user(email=payload["email"])}

    def rpc_resend_verification(self, payload):
        return None

    def rpc_login(self, payload, client_ip=None, user_agent=None):
        if payload["password"] != "correct horse battery":
            raise DomainError("invalid_credentials", "wrong email or password", 401)
        return {"token": TOKEN, "expires_at": LATER, "user": user(email=payload["email"])}

    def rpc_logout(self, session_id):
        return None

    def rpc_request_password_reset(self, payload):
        return None

    def rpc_confirm_password_reset(self, payload):
        return None

    def rpc_authenticate(self, payload):
        ((kind, value),) = payload.items()
        if kind == "token" and is_api_key(value):  # a bearer API key, as auth resolves it
            kind = "api_key"
        found = self.credentials.get((kind, value))
        if found is None:
            raise DomainError("unauthenticated", "invalid credential", 401)
        return found

    def rpc_get_user(self, user_id):
        return user(user_id=user_id)

    def rpc_update_profile(self, user_id, payload):
        return {**user(user_id=user_id), **payload}

    def rpc_request_email_change(self, user_id, payload, client_ip=None):
        return None

    def rpc_list_api_keys(self, user_id, page=None):
        return {"items": [api_key(), api_key(str(uuid.uuid4()), "ci")], "next_cursor": None}

    def rpc_create_api_key(self, user_id, payload):
        return {**api_key(str(uuid.uuid4()), payload["name"]), "key": "dr_live_newsecret"}

    def rpc_revoke_api_key(self, user_id, key_id):
        return None

    # the operators' RPCs: ADMIN_ID may operate (auth's rule), nobody else

    def rpc_admin_list_users(self, actor, query=None):
        self._operator(actor)
        return {"items": [{**user(), "disabled_at": None, "updated_at": NOW,
                           "sessions_active": 1, "api_keys_active": 0}], "next_cursor": None}

    def rpc_admin_disable_user(self, actor, user_id):
        self._operator(actor)
        if user_id == actor:
            raise DomainError("cannot_disable_self", "you cannot disable your own account", 409)
        return {"user_id": user_id, "email": "ada@example.com", "disabled": True,
                "sessions_revoked": 1, "api_keys_revoked": 0}

    def rpc_admin_enable_user(self, actor, user_id):
        self._operator(actor)
        return {"user_id": user_id, "email": "ada@example.com", "disabled": False,
                "sessions_revoked": 0, "api_keys_revoked": 0}

    @staticmethod
    def _operator(actor):
        if actor != ADMIN_ID:
            raise admin_required()

    def rpc_list_sessions(self, user_id, current_session_id=None, page=None):
        return {
            "items": [
                {"id": SESSION_ID, "created_at": NOW, "expires_at": LATER, "last_used_at": NOW,
                 "user_agent": "pytest", "network": "127.0.0.0/24",
                 "current": current_session_id == SESSION_ID},
            ],
            "next_cursor": None,
        }

    def rpc_revoke_session(self, user_id, session_id):
        return None

    def rpc_begin_totp_enrollment(self, user_id):
        return {"secret": "JBSWY3DPEHPK3PXP", "otpauth_uri": "otpauth://totp/Darkroom:ada?secret=JBSWY3DPEHPK3PXP"}

    def rpc_confirm_totp_enrollment(self, user_id, payload):
        return None

    def rpc_list_passkeys(self, user_id, page=None):
        return {"items": [passkey()], "next_cursor": None}

    def rpc_passkey_registration_options(self, user_id, session_id=None):
        return {"options": {"challenge": "Y2hhbGxlbmdl", "rp": {"id": "127.0.0.1"}}}

    def rpc_register_passkey(self, user_id, payload, session_id=None):
        return passkey(name=payload.get("name", "Passkey"))

    def rpc_delete_passkey(self, user_id, passkey_id):
        return None

    def rpc_passkey_login_options(self):
        return {"options": {"challenge": "Y2hhbGxlbmdl", "rpId": "127.0.0.1"}}

    def rpc_passkey_login(self, payload, client_ip=None, user_agent=None):
        if payload["credential"].get("id") != PASSKEY_CREDENTIAL:
            raise DomainError("invalid_passkey", "the passkey could not be verified", 401)
        return {"token": TOKEN, "expires_at": LATER, "user": user()}

    def rpc_get_webhook_secret(self, user_id):
        return self.webhook_secrets.setdefault(user_id, {"secret": f"whsec_{uuid.uuid4().hex}",
                                                         "created_at": NOW, "user_id": user_id})

    def rpc_rotate_webhook_secret(self, user_id):
        self.webhook_secrets[user_id] = {"secret": f"whsec_{uuid.uuid4().hex}",
                                         "created_at": LATER, "user_id": user_id}
        return self.webhook_secrets[user_id]


FILES_SECRET = "unit-test-files-secret"
FILES_BASE_URL = "http://127.0.0.1:8000"
IMAGE_MAGIC = {b"\x89PNG\r\n\x1a\n": "image/png", b"\xff\xd8\xff": "image/jpeg"}


class FakeStorage(FakeRpcService):
    """The storage service's RPC surface the gateway uses, in memory.

    Upload slots are signed ``/v1/files/staging/<id>`` URLs (the fs backend)
    unless ``slot_url`` is set (``{upload_id}`` in it is filled in); ``finish_upload`` takes the staged bytes from
    ``files_root`` (the gateway's FILES.ROOT) or from ``staged`` (tests fill
    it), sniffs PNG/JPEG and answers 415 for anything else. Objects belong to
    their owner: anyone else gets 404, as from the real service.
    """

    def __init__(self):
        super().__init__()
        self.files_root: Path | None = None
        self.slot_url: str | None = None
        self.slot_max_bytes = 20 * 1024 * 1024
        self.staged: dict[str, bytes] = {}
        self.slots: dict[str, str] = {}  # upload id -> owner id
        self.objects: dict[str, dict] = {}  # id -> image object plus owner_id, deleted

    def add(self, owner_id: str, kind: str = "upload", visibility: str = "private",
            job_id: str | None = None, data: bytes = b"\x89PNG\r\n\x1a\nfake",
            content_type: str = "image/png") -> dict:
        """A committed object of ``owner_id``; returns it as its owner sees it."""
        object_id = str(uuid.uuid4())
        self.objects[object_id] = {
            "id": object_id, "kind": kind, "content_type": content_type, "size": len(data),
            "width": 4, "height": 3, "sha256": hashlib.sha256(data).hexdigest(),
            "visibility": visibility, "public_id": self._public_id(visibility),
            "job_id": job_id, "created_at": NOW, "expires_at": LATER,
            "owner_id": owner_id, "deleted": False,
        }
        return self._view(self.objects[object_id])

    @staticmethod
    def _public_id(visibility: str) -> str | None:
        return secrets.token_urlsafe(24) if visibility == "public" else None

    def _find(self, owner_id: str | None, object_id: str) -> dict:
        obj = self.objects.get(object_id)
        if obj is None or obj["deleted"] or (owner_id is not None and obj["owner_id"] != owner_id):
            raise DomainError("not_found", "image not found", 404)
        return obj

    @staticmethod
    def _view(obj: dict, with_url: bool = True) -> dict:
        view = {k: v for k, v in obj.items() if k not in ("owner_id", "deleted")}
        if with_url:
            key = f"objects/{obj['owner_id']}/{obj['id']}"
            view["url"] = signing.sign_url(FILES_BASE_URL, FILES_SECRET, "GET", key, 300)[0]
        return view

    # -- the surface (rpc_ prefix: see FakeRpcService)

    def rpc_ping(self):
        return {"service": "storage", "ok": True}

    def rpc_create_upload_slot(self, owner_id):
        upload_id = str(uuid.uuid4())
        self.slots[upload_id] = owner_id
        if self.slot_url:  # another server's URL; "{upload_id}" is filled in
            url = self.slot_url.replace("{upload_id}", upload_id)
        else:
            url = signing.sign_url(FILES_BASE_URL, FILES_SECRET, "PUT", f"staging/{upload_id}", 900)[0]
        return {"upload_id": upload_id, "url": url, "method": "PUT",
                "headers": {"Content-Type": "application/octet-stream"},
                "max_bytes": self.slot_max_bytes, "expires_at": LATER}

    def rpc_finish_upload(self, owner_id, upload_id):
        if self.slots.get(upload_id) != owner_id:
            raise DomainError("not_found", "upload not found", 404)
        staged = self.files_root / "staging" / upload_id if self.files_root else None
        if staged is not None and staged.is_file():
            data = plaintext(staged)  # the gateway seals what it writes, like the backend
            staged.unlink()
        else:
            data = self.staged.pop(upload_id, None)
        if data is None:
            raise DomainError("not_found", "nothing was uploaded to this slot", 404)
        content_type = next((t for magic, t in IMAGE_MAGIC.items() if data.startswith(magic)), None)
        if content_type is None:
            raise DomainError("unsupported_media_type", "send a PNG, JPEG or WebP image", 415)
        del self.slots[upload_id]
        return self.add(owner_id, data=data, content_type=content_type)

    def rpc_get_object(self, owner_id, object_id):
        return self._view(self._find(owner_id, object_id))

    def rpc_get_public_object(self, public_id):
        found = [o for o in self.objects.values()
                 if o["public_id"] == public_id and not o["deleted"]]
        if not found or public_id is None:
            raise DomainError("not_found", "image not found", 404)
        (obj,) = found
        url = signing.sign_url(FILES_BASE_URL, FILES_SECRET, "GET", f"public/{public_id}", 300)[0]
        return {**{k: obj[k] for k in ("kind", "content_type", "size", "width", "height",
                                       "created_at", "expires_at")}, "id": public_id, "url": url}

    def rpc_list_objects(self, owner_id, query=None):
        query = query or {}
        items = [self._view(o) for o in reversed(self.objects.values())
                 if o["owner_id"] == owner_id and not o["deleted"]
                 and query.get("kind") in (None, o["kind"])
                 and query.get("job_id") in (None, o["job_id"])]
        return {"items": items[:query.get("limit", 20)], "next_cursor": None}

    def rpc_set_visibility(self, owner_id, object_id, payload):
        obj = self._find(owner_id, object_id)
        if obj["visibility"] != payload["visibility"]:
            obj["public_id"] = self._public_id(payload["visibility"])
        obj["visibility"] = payload["visibility"]
        return self._view(obj)

    def rpc_delete_object(self, owner_id, object_id):
        self._find(owner_id, object_id)["deleted"] = True


class FakeService:
    """Any service, with what every service has (services/common/service.py):
    ``ping`` and its operators' dead letters (``dead_letters``: its non-empty
    queues; ``operators``: the actors auth would let through)."""

    def __init__(self, name: str, healthy: bool = True):
        self.name = name
        self.healthy = healthy
        self.dead = []
        self.operators = {ADMIN_ID}
        self.replayed: list[tuple[str, str, int | None]] = []

    def _check(self, actor):
        if not self.healthy:
            from gateway.rpc import ServiceUnavailable

            raise ServiceUnavailable()
        if actor not in self.operators:
            raise admin_required()

    def ping(self):
        if not self.healthy:
            from gateway.rpc import ServiceUnavailable

            raise ServiceUnavailable()
        return {"service": self.name, "ok": True}

    def admin_dead_letters(self, actor):
        self._check(actor)
        return {"service": self.name, "items": list(self.dead)}

    def admin_replay_dead_letters(self, actor, queue, limit=None):
        self._check(actor)
        if queue not in [q["queue"] for q in self.dead]:
            raise not_found("dead-letter queue")
        self.replayed.append((actor, queue, limit))
        return {"service": self.name, "queue": queue, "replayed": limit or 1}


class FakePrivacy(FakeService):
    """What GET /v1/me asks of the privacy service (tests/unit/privacy has the rest)."""

    def __init__(self):
        super().__init__("privacy")
        self.status = {"current": None, "accepted": None, "acceptance_required": False}

    @property
    def policy_status(self):
        def call(user_id):
            return dict(self.status)

        call.call_async = lambda *args: Reply(call, args, {})
        return call


class FakePool:
    """Stands in for gateway.rpc.RpcPool: ``with pool.get() as rpc: rpc.auth...``."""

    def __init__(self):
        self.auth = FakeAuth()
        self.storage = FakeStorage()
        self.services = {"auth": self.auth, "notifications": FakeService("notifications"),
                         "storage": self.storage, "privacy": FakePrivacy()}
        self.checkouts = 0
        self.waits: list[float] = []

    @contextmanager
    def get(self, timeout=None, correlation=None):
        self.checkouts += 1
        yield self

    def wait(self, reply, timeout):
        """gateway.rpc's ``proxy.wait``: a call_async's result (``timeout`` recorded)."""
        self.waits.append(timeout)
        return reply.result()

    def __getattr__(self, name):
        try:
            return self.__dict__["services"][name]
        except KeyError:
            raise AttributeError(name) from None


BASE_CONFIG = {
    "RATELIMIT_ENABLED": False,
    "ACCESS_LOG_EVENTS": False,  # no publishing thread, no broker: tests/unit/privacy checks it
    "LOG_LEVEL": "WARNING",
    "READY_SERVICES": ["auth", "notifications"],
}


@pytest.fixture
def pool() -> FakePool:
    return FakePool()


@pytest.fixture
def make_app(pool):
    def make(pool_=None, **config):
        return create_app({**BASE_CONFIG, **config}, rpc=pool_ or pool)

    return make


@pytest.fixture
def app(make_app):
    return make_app()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def auth(pool) -> FakeAuth:
    return pool.auth


@pytest.fixture
def storage(pool) -> FakeStorage:
    return pool.storage


BEARER = {"Authorization": f"Bearer {TOKEN}"}
APIKEY = {"X-API-Key": API_KEY}
