"""Personal fields encrypted in the databases (services/common/fieldcrypt.py):
values round-trip through the ORM and are ciphertext in the table, a changed
byte, a value moved to another column or a wrong key is detected, addresses
are found by their blind index, a ring that cannot read the stored values is
refused, and rotation re-encrypts under the newest key."""

from __future__ import annotations

import re
import uuid

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from services.auth.models import Base as AuthBase
from services.auth.models import User
from services.common import fieldcrypt
from services.common.db import make_engine
from services.common.fieldcrypt import FieldKeys, TamperedField
from services.common.keyring import KeyRingError, new_key_entry
from services.common.secrets import ConfigurationRefused

K1 = new_key_entry("k1")
K2 = new_key_entry("k2")
INDEX = "an-index-key-of-enough-length"


@pytest.fixture
def use_keys():
    def use(ring: str, index: str = INDEX) -> FieldKeys:
        keys = FieldKeys.parse(ring, index)
        fieldcrypt.configure(keys)
        return keys

    yield use
    fieldcrypt.configure(None)


@pytest.fixture
def engine(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'fields.db'}")
    AuthBase.metadata.create_all(engine)
    yield engine
    engine.dispose()


def add_user(engine, email="Ada@Example.com", **fields) -> uuid.UUID:
    from services.common.ids import utcnow

    with Session(engine) as db:
        user = User(email=email, password_hash="x", plan="free", created_at=utcnow(),
                    updated_at=utcnow(), **fields)
        db.add(user)
        db.commit()
        return user.id


def raw(engine, column: str, table: str = "users") -> list[str]:
    with engine.connect() as conn:
        return [r[0] for r in conn.execute(sa.text(f"SELECT {column} FROM {table}"))]


def test_values_are_ciphertext_in_the_table_and_plain_through_the_orm(use_keys, engine, tmp_path):
    use_keys(K1)
    user_id = add_user(engine, display_name="Ada Lovelace", bio="Analytical engines")
    [email] = raw(engine, "email")
    assert email.startswith("fc1:k1:") and "Ada" not in email
    with Session(engine) as db:
        user = db.get(User, user_id)
        assert (user.email, user.display_name, user.bio) == \
            ("Ada@Example.com", "Ada Lovelace", "Analytical engines")
    engine.dispose()
    on_disk = (tmp_path / "fields.db").read_bytes()
    for plain in (b"Ada@Example.com", b"Ada Lovelace", b"Analytical"):
        assert plain not in on_disk
    # the same value twice is two different ciphertexts (no equality leaks)
    keys = fieldcrypt.keys()
    assert keys.encrypt("x", "p") != keys.encrypt("x", "p")


def test_lookups_go_through_the_blind_index(use_keys, engine):
    use_keys(K1)
    from services.auth.lookup import find_user_by_email

    user_id = add_user(engine, email="ada@example.com")
    with Session(engine) as db:
        assert find_user_by_email(db, "ada@example.com").id == user_id
        assert find_user_by_email(db, "bob@example.com") is None
        with pytest.raises(TypeError, match="blind index"):
            db.scalar(sa.select(User).where(User.email == "ada@example.com"))
    # keyed: another index key gives another index; the address normalised first
    [stored] = raw(engine, "email_index")
    assert stored == fieldcrypt.email_index("  ADA@example.com ") != \
        FieldKeys.parse(K1, "another-index-key-long-enough").blind_index("ada@example.com", "email")


@pytest.mark.parametrize("change", ["flip", "truncate", "other_column", "plain"])
def test_tampering_is_detected_never_decrypted_to_something_else(use_keys, engine, change):
    use_keys(K1)
    user_id = add_user(engine, display_name="Ada", bio="bio")
    [name] = raw(engine, "display_name")
    [bio] = raw(engine, "bio")
    prefix, body = name.rsplit(":", 1)
    forged = {"flip": f"{prefix}:{body[:-6]}{'A' if body[-6] != 'A' else 'B'}{body[-5:]}",
              "truncate": name[:-8], "other_column": bio, "plain": "Mallory"}[change]
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE users SET display_name = :v"), {"v": forged})
    with Session(engine) as db, pytest.raises(TamperedField):
        db.get(User, user_id)


def test_a_wrong_or_missing_key_does_not_read(use_keys, engine):
    use_keys(K1)
    add_user(engine)
    [email] = raw(engine, "email")
    with pytest.raises(TamperedField, match="not in FIELD_ENCRYPTION_KEYS"):
        FieldKeys.parse(K2, INDEX).decrypt(email, "users.email")
    impostor = FieldKeys.parse("k1:" + K2.split(":")[1], INDEX)
    with pytest.raises(TamperedField, match="does not authenticate"):
        impostor.decrypt(email, "users.email")


def test_the_start_check_refuses_a_ring_that_cannot_read_the_database(use_keys, engine):
    use_keys(K1)
    add_user(engine)
    with engine.connect() as conn:
        fieldcrypt.check_readable(conn, AuthBase.metadata)
        use_keys(K2)
        with pytest.raises(KeyRingError, match="under the key 'k1', which FIELD_ENCRYPTION_KEYS lacks"):
            fieldcrypt.check_readable(conn, AuthBase.metadata)
        use_keys("k1:" + K2.split(":")[1])
        with pytest.raises(KeyRingError) as caught:
            fieldcrypt.check_readable(conn, AuthBase.metadata)
        assert "'k1' in FIELD_ENCRYPTION_KEYS" in str(caught.value)
        assert K2.split(":")[1] not in str(caught.value)  # never a key
        use_keys(f"{K2},{K1}")
        fieldcrypt.check_readable(conn, AuthBase.metadata)


@pytest.mark.parametrize(("ring", "index", "message"), [
    ("", INDEX, "FIELD_ENCRYPTION_KEYS is empty"),
    ("k1:short", INDEX, "FIELD_ENCRYPTION_KEYS entry 1 (k1): the key is not base64"),
    (K1, "", "FIELD_INDEX_KEY must be a random secret"),
    (K1, "short", "FIELD_INDEX_KEY must be a random secret"),
])
def test_malformed_keys_are_refused_naming_the_variable(ring, index, message):
    with pytest.raises(KeyRingError, match=re.escape(message)):
        FieldKeys.parse(ring, index)


def test_production_without_configured_keys_refuses(monkeypatch):
    fieldcrypt.configure(None)
    monkeypatch.setenv("DARKROOM_ENV", "production")
    with pytest.raises(ConfigurationRefused, match="FIELD_ENCRYPTION_KEYS"):
        fieldcrypt.keys()
    monkeypatch.setenv("DARKROOM_ENV", "development")
    assert fieldcrypt.keys().ring.current_id == "dev-only-insecure"


def test_rekey_moves_every_row_to_the_newest_key_in_committed_batches(use_keys, engine):
    use_keys(K1)
    ids = [add_user(engine, email=f"u{n}@example.com", bio=f"bio {n}") for n in range(7)]
    use_keys(f"{K2},{K1}")
    with engine.connect() as conn:
        assert fieldcrypt.count_stale(conn, AuthBase.metadata) == 7
    seen = []
    done = fieldcrypt.rekey(engine, AuthBase.metadata, batch=3, progress=seen.append)
    assert done == 7 and seen == [3, 3, 1]
    assert all(v.startswith("fc1:k2:") for v in raw(engine, "email") + raw(engine, "bio"))
    assert fieldcrypt.rekey(engine, AuthBase.metadata) == 0  # resumable: nothing left
    use_keys(K2)  # k1 removed: everything still reads
    with Session(engine) as db:
        assert sorted(db.get(User, i).email for i in ids) == sorted(
            f"u{n}@example.com" for n in range(7))


def test_the_encrypted_columns_are_the_personal_fields_docs_privacy_lists():
    from ops.fields import encrypted_services

    found = {service: {f"{table.name}.{column.name}"
                       for table, columns in fieldcrypt.encrypted_columns(metadata)
                       for column in columns}
             for service, metadata in encrypted_services().items()}
    assert found == {
        "auth": {"users.email", "users.display_name", "users.bio", "email_verifications.email",
                 "sessions.user_agent", "sessions.network", "account_changes.changes",
                 "identities.email", "oidc_codes.email", "outbox.body"},
        "notifications": {"notifications.recipient", "outbox.body"},
        "privacy": {"access_logs.network", "outbox.body"},
        # every service's outbox: event bodies may carry an address
        "billing": {"outbox.body"}, "generation": {"outbox.body"}, "storage": {"outbox.body"},
    }
    for metadata in encrypted_services().values():  # each purpose names its column
        for table, columns in fieldcrypt.encrypted_columns(metadata):
            assert all(c.type.purpose == f"{table.name}.{c.name}" for c in columns)


def test_a_core_insert_gets_the_blind_index_too(use_keys, engine):
    use_keys(K1)
    from services.auth.lookup import find_user_by_email
    from services.common.ids import utcnow

    user_id = uuid.uuid4()
    with engine.begin() as conn:
        conn.execute(User.__table__.insert().values(
            id=user_id, email="Core@Example.com", password_hash="x", plan="free",
            created_at=utcnow(), updated_at=utcnow()))
    with Session(engine) as db:
        assert find_user_by_email(db, "core@example.com").id == user_id
