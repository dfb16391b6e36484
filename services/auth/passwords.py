"""Password policy and hashing (argon2id at OWASP's recommended parameters)."""

from __future__ import annotations

from functools import lru_cache

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from services.auth.errors import weak_password
from services.common.concurrency import offload
from services.common.contracts.auth import PASSWORD_MAX, PASSWORD_MIN, normalise_email

# OWASP Password Storage Cheat Sheet: argon2id, m=19 MiB, t=2, p=1.
TIME_COST = 2
MEMORY_COST = 19456
PARALLELISM = 1

HASHER = PasswordHasher(time_cost=TIME_COST, memory_cost=MEMORY_COST, parallelism=PARALLELISM)

# The local part of an email is only looked for inside a password when it is
# at least this long (an address like "jo@..." must not forbid every "jo").
MIN_LOCAL_PART_TO_MATCH = 3

# Very common passwords that pass the length rule (from public breach lists).
COMMON_PASSWORDS = frozenset(
    """
    0000000000 0123456789 1111111111 1234567890 12345678910 123456789a 123456789q
    1234qwerty 1q2w3e4r5t 1q2w3e4r5t6y 1qaz2wsx3edc 2222222222 5555555555 9876543210
    987654321a a123456789 aaaaaaaaaa abc1234567 abcd123456 abcd1234ef abcdefghij
    admin12345 admin123456 administrator asdfghjkl1 asdfghjkl; asdfghjklm baseball123
    changeme123 darkroom123 darkroom1234 dragon1234 football123 iloveyou12 iloveyou123
    letmein123 letmein1234 michael123 monkey1234 p@ssw0rd123 p@ssword123 passw0rd123
    password01 password1 password12 password123 password1234 password12345 password!
    passwordpassword princess123 q1w2e3r4t5 qazwsxedc123 qazwsxedcrfv qwerty1234
    qwerty12345 qwerty123456 qwertyuiop qwertyuiop123 starwars123 sunshine123
    superman123 trustno1234 welcome123 welcome1234 zaq12wsxcde zxcvbnm123 zxcvbnmasdf
    """.split()
)


def check_policy(password: str, email: str) -> None:
    """Raise 400 ``weak_password`` unless ``password`` is acceptable for ``email``."""
    if not PASSWORD_MIN <= len(password) <= PASSWORD_MAX:
        raise weak_password(f"must be {PASSWORD_MIN} to {PASSWORD_MAX} characters")
    folded = password.casefold()
    local = normalise_email(email).partition("@")[0].casefold()
    if local and (
        folded == local or (len(local) >= MIN_LOCAL_PART_TO_MATCH and local in folded)
    ):
        raise weak_password("must not contain your email address")
    if folded in COMMON_PASSWORDS:
        raise weak_password("is too common")


# The password hash of an account made by signing in with an OpenID provider:
# no password matches it (argon2 refuses it as a hash) until one is set by a reset.
NO_PASSWORD = "!no-password"


def has_password(password_hash: str) -> bool:
    return password_hash != NO_PASSWORD


def hash_password(password: str, hasher: PasswordHasher = HASHER) -> str:
    return offload(hasher.hash, password)


def verify_password(password_hash: str, password: str, hasher: PasswordHasher = HASHER) -> bool:
    try:
        return offload(hasher.verify, password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def needs_rehash(password_hash: str, hasher: PasswordHasher = HASHER) -> bool:
    """True when the hash was made with other parameters than ``hasher``'s."""
    try:
        return hasher.check_needs_rehash(password_hash)
    except InvalidHashError:
        return True


@lru_cache(maxsize=1)
def _dummy_hash() -> str:
    return HASHER.hash("dummy password for unknown accounts")


def burn_dummy_verification(password: str) -> None:
    """Spend the time of a real verification (for an email without an account,
    so that response times do not tell which emails have accounts)."""
    verify_password(_dummy_hash(), password)
