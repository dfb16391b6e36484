"""services.common.config's settings reader (Section, flag), which the
services' settings classes share."""

from __future__ import annotations

from datetime import timedelta

import pytest

from services.common.config import Section, flag


@pytest.mark.parametrize("value, expected", [
    (True, True), (False, False), (1, True), (0, False), (None, False),
    ("1", True), (" TRUE ", True), ("yes", True), ("On", True),
    ("0", False), ("false", False), ("no", False), ("", False), ("maybe", False),
])
def test_flag(value, expected):
    assert flag(value) is expected


def test_the_section_is_the_named_one_or_the_config_itself():
    assert Section({"X": {"A": 1}, "A": 2}, "X").get("A", 0) == 1
    assert Section({"A": 2}, "X").get("A", 0) == 2
    assert Section({"X": None}, "X").get("A", 0) == 0


def test_missing_null_and_empty_values_give_the_default_but_an_empty_string_setting_stays():
    section = Section({"X": {"N": None, "E": "", "Z": 0, "S": ""}}, "X")
    assert section.get("MISSING", 5) == 5
    assert section.get("N", 5) == 5
    assert section.get("E", 5) == 5
    assert section.get("Z", 5) == 0
    assert section.get("S", "default") == ""
    assert section.get("N", "default") == "default"


def test_required_names_the_setting_it_misses():
    section = Section({"AUTH": {"SECRET_KEY": "k", "EMPTY": ""}}, "AUTH")
    assert section.required("SECRET_KEY") == "k"
    for key in ("EMPTY", "MISSING"):
        with pytest.raises(ValueError, match=f"AUTH.{key} must be set"):
            section.required(key)


def test_a_duration_is_a_number_of_its_unit_with_fractions():
    section = Section({"X": {"TTL_DAYS": "0.5", "WAIT_SECONDS": 90, "BLANK_MINUTES": ""}}, "X")
    assert section.duration("TTL_DAYS", timedelta(days=7), "days") == timedelta(hours=12)
    assert section.duration("WAIT_SECONDS", timedelta(0), "seconds") == timedelta(seconds=90)
    assert section.duration("BLANK_MINUTES", timedelta(minutes=15), "minutes") == timedelta(minutes=15)
    assert section.duration("MISSING_HOURS", timedelta(hours=72), "hours") == timedelta(hours=72)


def test_positive_refuses_zero_and_below_naming_the_setting():
    section = Section({"GENERATION": {"A": "3", "B": "0", "C": "-1"}}, "GENERATION")
    assert section.positive("A", 1, int) == 3
    assert section.positive("MISSING", 2.5, float) == 2.5
    for key in ("B", "C"):
        with pytest.raises(ValueError, match=f"GENERATION.{key} must be positive"):
            section.positive(key, 1, int)
