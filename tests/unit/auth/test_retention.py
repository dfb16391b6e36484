from __future__ import annotations

from datetime import timedelta

from sqlalchemy import func, select

from services.auth import retention
from services.auth.models import (
    EmailVerification,
    OidcCode,
    OidcFlow,
    PasswordReset,
    Throttle,
    User,
    UserSession,
)
from services.common.ids import new_id, utcnow


def count(db, model) -> int:
    return db.execute(select(func.count()).select_from(model)).scalar_one()


def test_purge_deletes_only_what_has_outlived_its_use(db, settings):
    now = utcnow()
    user = User(id=new_id(), email="a@example.com", password_hash="x", plan="free",
                created_at=now, updated_at=now)
    db.add(user)
    db.flush()

    def session(expires, revoked=None):
        return UserSession(id=new_id(), user_id=user.id, token_hash=new_id().hex, created_at=now,
                           expires_at=expires, revoked_at=revoked)

    live = session(now + timedelta(days=3))
    db.add_all([live, session(now - timedelta(seconds=1)), session(now + timedelta(days=1), now)])

    def code(expires, superseded=None):
        return EmailVerification(id=new_id(), user_id=user.id, purpose="registration", email=user.email,
                                 code_hmac="h", created_at=now, expires_at=expires,
                                 superseded_at=superseded)

    db.add_all([code(now - timedelta(days=2), superseded=now), code(now - timedelta(hours=1))])
    db.add_all([
        PasswordReset(id=new_id(), user_id=user.id, token_hash="old", created_at=now,
                      expires_at=now - timedelta(days=2)),
        PasswordReset(id=new_id(), user_id=user.id, token_hash="new", created_at=now,
                      expires_at=now + timedelta(minutes=30)),
    ])
    # the longest window of any throttle (verification's hour here)
    window = settings.verification_address_window
    old = now - window - timedelta(seconds=1)
    db.add_all([
        Throttle(subject="window over", attempts=3, window_started_at=old),
        Throttle(subject="lock over", attempts=0, window_started_at=old,
                 locked_until=now - timedelta(seconds=1)),
        Throttle(subject="still locked", attempts=0, window_started_at=old,
                 locked_until=now + timedelta(minutes=5)),
        Throttle(subject="still counting", attempts=1, window_started_at=now - window / 2),
    ])
    # OpenID sign-ins: a flow and a one-time code past their expiry go, live ones stay
    db.add_all([
        OidcFlow(id=new_id(), state_hash="old", provider="corp", nonce="n", code_verifier="v",
                 redirect_uri="http://app.test/", created_at=now,
                 expires_at=now - timedelta(seconds=1)),
        OidcFlow(id=new_id(), state_hash="live", provider="corp", nonce="n", code_verifier="v",
                 redirect_uri="http://app.test/", created_at=now,
                 expires_at=now + timedelta(minutes=5)),
        OidcCode(id=new_id(), code_hash="old", provider="corp", subject="s", email="a@b.test",
                 created_at=now, expires_at=now - timedelta(seconds=1)),
    ])
    db.commit()

    deleted = retention.purge_expired(db, settings, now)
    db.commit()

    assert deleted == {"sessions": 2, "email_verifications": 1, "password_resets": 1,
                       "oidc_flows": 1, "oidc_codes": 1, "throttles": 2,
                       "passkey_challenges": 0}
    assert db.scalars(select(OidcFlow.state_hash)).all() == ["live"]
    assert db.execute(select(UserSession.id)).scalars().all() == [live.id]
    assert count(db, EmailVerification) == count(db, PasswordReset) == 1
    assert sorted(db.scalars(select(Throttle.subject))) == ["still counting", "still locked"]
    assert count(db, User) == 1
    # a second run finds nothing more
    assert not any(retention.purge_expired(db, settings, now).values())
