"""Backup sets' names and their rotation: how many sets ``darkroom-ops
backup`` keeps (ops/backups/sets.py deletes the others). The privacy service
reads the same ``BACKUP_KEEP_*`` settings, so the published retention schedule
(``GET /v1/privacy/retention``) says what the backup job does."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

NAME_FORMAT = "%Y%m%dT%H%M%SZ"


def parse_name(name: str) -> datetime | None:
    try:
        return datetime.strptime(name, NAME_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        return None


@dataclass(frozen=True)
class Rotation:
    """How many sets to keep: the newest of each of the last ``daily`` days,
    ``weekly`` ISO weeks and ``monthly`` months that have one (the newest
    set is always kept)."""

    daily: int = 7
    weekly: int = 4
    monthly: int = 6

    @classmethod
    def from_config(cls, config: dict) -> Rotation:
        def count(name: str, default: int) -> int:
            value = config.get(name)
            number = default if value in (None, "") else int(value)
            if number < 0:
                raise ValueError(f"{name} must be 0 or more")
            return number

        return cls(daily=count("BACKUP_KEEP_DAILY", 7), weekly=count("BACKUP_KEEP_WEEKLY", 4),
                   monthly=count("BACKUP_KEEP_MONTHLY", 6))

    def keep(self, names: list[str]) -> dict[str, list[str]]:
        """For each kept set, why (``daily``, ``weekly``, ``monthly``, ``newest``)."""
        dated = sorted(((parse_name(n), n) for n in names if parse_name(n)), reverse=True)
        reasons: dict[str, list[str]] = {}
        periods = (("daily", self.daily, lambda t: t.date()),
                   ("weekly", self.weekly, lambda t: t.isocalendar()[:2]),
                   ("monthly", self.monthly, lambda t: (t.year, t.month)))
        for label, limit, period in periods:
            seen = []
            for when, name in dated:  # newest first: the first of a period is its newest
                key = period(when)
                if key in seen:
                    continue
                if len(seen) >= limit:
                    break
                seen.append(key)
                reasons.setdefault(name, []).append(label)
        if dated:
            reasons.setdefault(dated[0][1], []).append("newest")
        return reasons

    def describe(self) -> str:
        return (f"the newest set of each of the last {self.daily} days, {self.weekly} ISO weeks "
                f"and {self.monthly} months")

    def longest_days(self) -> int:
        """The longest a set is kept, in days (a month counted as 31)."""
        return max(self.daily, 7 * self.weekly, 31 * self.monthly, 1)
