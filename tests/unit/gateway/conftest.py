"""Unit-test fixtures for the gateway: the Flask test client in front of a fake
RPC pool whose ``auth`` answers like the auth service's RPC surface."""

from __future__ import annotations

import uuid
from contextlib import contextmanager

import pytest

from gateway.app import create_app
from services.common.errors import DomainError
from services.common.observability import correlation_id

NOW = "2026-01-02T03:04:05.123456+00:00"
LATER = "2026-01-09T03:04:05+00:00"

USER_ID = "01900000-0000-7000-8000-000000000001"
UNVERIFIED_ID = "01900000-0000-7000-8000-000000000002"
SESSION_ID = "01900000-0000-7000-8000-00000000a001"
KEY_ID = "01900000-0000-7000-8000-00000000b001"
UNVERIFIED_SESSION_ID = "01900000-0000-7000-8000-00000000a002"

TOKEN = "session-token-verified"
API_KEY = "dr_live_apikey-verified"
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


def api_key(key_id: str = KEY_ID, name: str = "default") -> dict:
    return {"id": key_id, "name": name, "prefix": "dr_live_ab", "created_at": NOW, "last_used_at": None}


class FakeAuth:
    """The auth service's RPC surface, in memory; records every call."""

    def __init__(self):
        self.calls: list[tuple[str, tuple, dict]] = []
        self.correlation_ids: list[str | None] = []
        self.credentials = {
            ("token", TOKEN): principal(USER_ID, "session", SESSION_ID),
            ("api_key", API_KEY): principal(USER_ID, "api_key", KEY_ID),
            ("token", UNVERIFIED_TOKEN): principal(UNVERIFIED_ID, "session", UNVERIFIED_SESSION_ID, False),
        }
        self.fail_with: dict[str, Exception] = {}

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        impl = getattr(type(self), "_" + name, None)
        if impl is None:
            raise AttributeError(name)

        def call(*args, **kwargs):
            self.calls.append((name, args, kwargs))
            self.correlation_ids.append(correlation_id.get())
            if name in self.fail_with:
                raise self.fail_with[name]
            return impl(self, *args, **kwargs)

        return call

    def called(self, name: str) -> list[tuple[tuple, dict]]:
        return [(a, k) for n, a, k in self.calls if n == name]

    # -- the surface (leading underscore: see __getattr__)

    def _ping(self):
        return {"service": "auth", "ok": True}

    def _register(self, payload, client_ip=None, user_agent=None):
        return {
            "user": user(email=payload["email"], verified=False),
            "api_key": {**api_key(), "key": "dr_live_secret"},
        }

    def _verify_email(self, payload):
        if payload["code"] != "123456":
            raise DomainError("invalid_code", "the code is not valid", 400)
        return {"user": user(email=payload["email"])}

    def _resend_verification(self, payload):
        return None

    def _login(self, payload, client_ip=None, user_agent=None):
        if payload["password"] != "correct horse battery":
            raise DomainError("invalid_credentials", "wrong email or password", 401)
        return {"token": TOKEN, "expires_at": LATER, "user": user(email=payload["email"])}

    def _logout(self, session_id):
        return None

    def _request_password_reset(self, payload):
        return None

    def _confirm_password_reset(self, payload):
        return None

    def _authenticate(self, credential):
        ((kind, value),) = credential.items()
        found = self.credentials.get((kind, value))
        if found is None:
            raise DomainError("unauthenticated", "invalid credential", 401)
        return found

    def _get_user(self, user_id):
        return user(user_id=user_id)

    def _update_profile(self, user_id, payload):
        return {**user(user_id=user_id), **payload}

    def _request_email_change(self, user_id, payload):
        return None

    def _list_api_keys(self, user_id, page=None):
        return {"items": [api_key(), api_key(str(uuid.uuid4()), "ci")], "next_cursor": None}

    def _create_api_key(self, user_id, payload):
        return {**api_key(str(uuid.uuid4()), payload["name"]), "key": "dr_live_newsecret"}

    def _revoke_api_key(self, user_id, key_id):
        return None

    def _list_sessions(self, user_id, current_session_id=None, page=None):
        return {
            "items": [
                {"id": SESSION_ID, "created_at": NOW, "expires_at": LATER, "last_used_at": NOW,
                 "user_agent": "pytest", "network": "127.0.0.0/24",
                 "current": current_session_id == SESSION_ID},
            ],
            "next_cursor": None,
        }

    def _revoke_session(self, user_id, session_id):
        return None

    def _begin_totp_enrollment(self, user_id):
        return {"secret": "JBSWY3DPEHPK3PXP", "otpauth_uri": "otpauth://totp/Darkroom:ada?secret=JBSWY3DPEHPK3PXP"}

    def _confirm_totp_enrollment(self, user_id, payload):
        return None


class FakeService:
    def __init__(self, name: str, healthy: bool = True):
        self.name = name
        self.healthy = healthy

    def ping(self):
        if not self.healthy:
            from gateway.rpc import ServiceUnavailable

            raise ServiceUnavailable()
        return {"service": self.name, "ok": True}


class FakePool:
    """Stands in for gateway.rpc.RpcPool: ``with pool.get() as rpc: rpc.auth...``."""

    def __init__(self):
        self.auth = FakeAuth()
        self.services = {"auth": self.auth, "notifications": FakeService("notifications")}
        self.checkouts = 0

    @contextmanager
    def get(self, timeout=None, correlation=None):
        self.checkouts += 1
        yield self

    def __getattr__(self, name):
        try:
            return self.__dict__["services"][name]
        except KeyError:
            raise AttributeError(name) from None


BASE_CONFIG = {
    "RATELIMIT_ENABLED": False,
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


BEARER = {"Authorization": f"Bearer {TOKEN}"}
APIKEY = {"X-API-Key": API_KEY}
