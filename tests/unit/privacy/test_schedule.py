"""The published retention schedule: the privacy service's own items from
its settings, and the other services' answers gathered, a silent one listed
as unavailable rather than guessed."""

from __future__ import annotations

from services.common.contracts.privacy import PARTICIPANTS
from services.privacy import schedule
from tests.unit.privacy.conftest import privacy_settings


def test_own_items_come_from_the_settings():
    settings = privacy_settings(PSEUDONYM_KEY="k", ACCESS_LOG_RETENTION_DAYS=90,
                                ERASURE_GRACE_HOURS=24)
    items = {i["data"].split(" (")[0]: i for i in schedule.own_items(settings)}
    assert items["access logs"]["days"] == 90 and items["access logs"]["kept"] == "90 days"
    closed = items["closed"]
    assert "24 hours" in closed["kept"] and closed["days"] == round((86400 + 30) / 86400, 6)


def test_every_service_is_asked_before_any_answer_is_awaited():
    asked, awaited = [], []

    def ask(service):
        asked.append(service)
        if service == "billing":
            raise RuntimeError("not running")

        def wait():
            awaited.append(service)
            if service == "generation":
                raise TimeoutError("no answer")
            return {"items": [{"data": f"{service} data", "kept": "1 day", "days": 1.0,
                               "enforced_by": "a timer", "service": "forged"}]}

        return wait

    items, unavailable = schedule.gather(ask)
    assert asked == list(PARTICIPANTS) and awaited == [s for s in PARTICIPANTS if s != "billing"]
    assert unavailable == ["billing", "generation"]
    assert {(i["service"], i["data"]) for i in items} == {
        ("auth", "auth data"), ("storage", "storage data"),
        ("notifications", "notifications data")}


def test_backups_and_breach_records_are_published_with_the_backup_rotation():
    settings = privacy_settings(PSEUDONYM_KEY="k")
    items = {i["data"].split(" (")[0].split(":")[0]: i for i in schedule.own_items(settings)}
    backups = items["backup sets"]
    assert backups["service"] == "backups" and backups["days"] == 6 * 31.0
    assert "7 days, 4 ISO weeks and 6 months" in backups["kept"]
    assert "indefinitely" in items["breach records"]["kept"]


def test_the_backup_entry_follows_the_backup_keep_settings():
    from services.privacy.settings import PrivacySettings

    config = {"PRIVACY": {"PSEUDONYM_KEY": "k"}, "MAIL_SECRETS_KEY": "m",
              "BACKUP_KEEP_DAILY": "3", "BACKUP_KEEP_WEEKLY": "2", "BACKUP_KEEP_MONTHLY": "0"}
    backups = next(i for i in schedule.own_items(PrivacySettings.from_config(config))
                   if i["service"] == "backups")
    assert backups["days"] == 14.0 and "3 days, 2 ISO weeks and 0 months" in backups["kept"]
