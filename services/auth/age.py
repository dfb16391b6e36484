"""The age gate (``AUTH_MINIMUM_AGE``): at sign-up, a birth date (or, with
``AUTH_AGE_CHECK=attestation``, ``age_confirmed: true``) shows the person
meets the minimum age. The birth date is only compared, never stored; an
account keeps only when it was found to meet the minimum
(``users.minimum_age_met_at``). Someone under the minimum is refused with
400 ``under_minimum_age`` before anything about them is written, and the
gateway leaves that answer out of its logs (gateway/errors.py)."""

from __future__ import annotations

from datetime import date

from services.auth.settings import AuthSettings
from services.common.errors import DomainError, invalid_request

UNDER_MINIMUM_AGE = "under_minimum_age"


def under_minimum_age(minimum: int) -> DomainError:
    return DomainError(UNDER_MINIMUM_AGE, f"you must be at least {minimum} to sign up", 400,
                       {"minimum_age": minimum})


def age_required(settings: AuthSettings) -> DomainError:
    field = "age_confirmed" if settings.age_check == "attestation" else "birth_date"
    return DomainError("age_required", f"give {field} to sign up (minimum age "
                       f"{settings.minimum_age})", 400,
                       {"minimum_age": settings.minimum_age, "fields": {
                           field: ["Missing data for required field."]}})


def years_between(born: date, today: date) -> int:
    """Whole years from ``born`` to ``today`` (born on 29 February: a year
    passes on 1 March in other years)."""
    return today.year - born.year - ((today.month, today.day) < (born.month, born.day))


def check(settings: AuthSettings, birth_date: date | None, age_confirmed: bool | None,
          today: date) -> bool:
    """True when the gate is on and the person meets the minimum; False when
    the gate is off (nothing to keep). 400 ``age_required`` when the answer
    is missing, ``under_minimum_age`` under the minimum, ``invalid_request``
    for a birth date in the future."""
    minimum = settings.minimum_age
    if minimum <= 0:
        return False
    if birth_date is not None:
        if birth_date > today:
            raise invalid_request("the birth date is in the future",
                                  fields={"birth_date": ["Must not be in the future."]})
        if years_between(birth_date, today) < minimum:
            raise under_minimum_age(minimum)
        return True
    if settings.age_check == "attestation" and age_confirmed is not None:
        if not age_confirmed:
            raise under_minimum_age(minimum)
        return True
    raise age_required(settings)
