"""The content policy: categories, normalisation against evasion, the refusal."""

from __future__ import annotations

import json

import pytest
import yaml

from services.common.errors import DomainError
from services.generation.moderation import (
    Moderator,
    PolicyError,
    load_policy,
    normalise,
    parse_policy,
    request_texts,
)
from services.generation.providers.base import Shot


@pytest.fixture(scope="module")
def moderator() -> Moderator:
    return Moderator()


def category(moderator: Moderator, text: str) -> str | None:
    violation = moderator.find({"prompt": text})
    return violation and violation.category


@pytest.mark.parametrize("text, expected", [
    ("a naked child on a beach", "sexual_minors"),
    ("sexy schoolgirl", "sexual_minors"),
    ("a 12 year old in lingerie", "sexual_minors"),
    ("a 15yo, nsfw", "sexual_minors"),
    ("graphic depiction of rape", "sexual_violence"),
    ("a man being beheaded", "violence_extreme"),
    ("dismembered bodies everywhere", "violence_extreme"),
    ("a girl about to slit her wrists", "self_harm"),
    ("self-harm scars", "self_harm"),
])
def test_the_bundled_policy_catches_each_category(moderator, text, expected):
    assert category(moderator, text) == expected


@pytest.mark.parametrize("text", [
    "N.U.D.E photo of a k1d",         # punctuation and leetspeak
    "n u d e   c h i l d",            # spaced out
    "ｎúdé little girl",               # full-width and accents
    "NaKeD ToDdLeR",                  # case
    "nud3 t0ddler",                   # digits for letters
    "sеxy schoolgirl",                # a Cyrillic е
    "na\u200bked ch\u00adild",         # invisible characters
])
def test_trivial_evasion_does_not_work(moderator, text):
    assert category(moderator, text) == "sexual_minors"


@pytest.mark.parametrize("text", [
    "kids playing football in the park",
    "a nude figure study in charcoal",      # art, no minor
    "a therapist's office with plants",     # contains "rapist"
    "a Gore-Tex jacket on a mountain",
    "grapes and drapes in a still life",
    "a 1970s poster of a toddler's birthday party",
    "portrait of a 45 year old fisherman",
    "a minor chord written on a chalkboard",
    "3d render of a baby elephant",
    "1girl, smiling, cherry blossoms",
])
def test_ordinary_prompts_pass(moderator, text):
    assert category(moderator, text) is None


def test_a_violation_is_a_422_naming_category_and_field_but_no_terms(moderator):
    with pytest.raises(DomainError) as caught:
        moderator.check(request_texts(prompt="a lighthouse", negative_prompt="naked child"))
    error = caught.value
    assert (error.code, error.status) == ("content_policy_violation", 422)
    assert error.details == {"category": "sexual_minors", "field": "negative_prompt"}
    said = (error.message + json.dumps(error.details)).lower()
    assert "naked" not in said and "child" not in said


def test_template_inputs_and_shot_prompts_are_checked_one_by_one(moderator):
    texts = request_texts(prompt="product video", inputs={"product_name": "Lamp",
                                                          "description": "decapitated dolls",
                                                          "shot_count": 3},
                          shots=[Shot("calm"), {"prompt": "suicide scene"}])
    assert set(texts) == {"prompt", "inputs.product_name", "inputs.description",
                          "shots[0].prompt", "shots[1].prompt"}
    violation = moderator.find(texts)
    assert (violation.category, violation.field) == ("violence_extreme", "inputs.description")
    del texts["inputs.description"]
    assert moderator.find(texts).field == "shots[1].prompt"


def test_terms_must_cooccur_in_one_text_for_an_all_of_rule(moderator):
    # a common negative prompt next to an innocent prompt is no violation
    assert moderator.find(request_texts(prompt="children at a birthday party",
                                        negative_prompt="nsfw, nude, lowres")) is None


def test_normalisation_keeps_numbers_and_splits_them_from_words():
    assert normalise("A 12yo, N.U.D.E!") == "a 12 yo nude"
    assert normalise("k1d", leet=True) == "kid"
    assert normalise("born in 1990", leet=True) == "born in 1990"


# ------------------------------------------------------------------ custom policies


def write_policy(tmp_path, body) -> str:
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(body))
    return str(path)


def test_an_operator_policy_replaces_the_bundled_one(tmp_path):
    path = write_policy(tmp_path, {"version": 7, "categories": {
        "weapons": {"rules": [{"terms": ["bazooka", "flame thrower*"]}]},
        "spam": {"rules": [{"patterns": [r"\bbuy now\b"]}]},
        "brand_minors": {"rules": [{"all_of": [{"terms": ["mascot"]}, {"terms": ["beer"]}]}]},
    }})
    custom = Moderator.from_config({"GENERATION": {"MODERATION_POLICY": path}})
    assert custom.policy.version == "7"
    assert category(custom, "b a z o o k a") == "weapons"
    assert category(custom, "two flame-throwers") == "weapons"
    assert category(custom, "BUY NOW!!!") == "spam"
    assert category(custom, "a mascot drinking beer") == "brand_minors"
    assert category(custom, "a mascot drinking tea") is None
    assert category(custom, "a naked child") is None  # only the operator's rules apply


@pytest.mark.parametrize("body, message", [
    ({"version": 1}, "categories"),
    ({"categories": {"Bad Name": {"rules": []}}}, "snake_case"),
    ({"categories": {"c": {"rules": [{}]}}}, "terms or patterns"),
    ({"categories": {"c": {"rules": [{"patterns": ["(unclosed"]}]}}}, "does not compile"),
    ({"categories": {"c": {"rules": [{"terms": "just a string"}]}}}, "list of strings"),
    ({"categories": {"c": {"rules": [{"terms": ["!!!"]}]}}}, "empty once normalised"),
    ({"categories": {"c": {"rules": [{"all_of": []}]}}}, "all_of"),
])
def test_a_malformed_policy_is_refused(body, message):
    with pytest.raises(PolicyError, match=message):
        parse_policy(body)


def test_a_missing_policy_file_is_refused(tmp_path):
    with pytest.raises(PolicyError, match="cannot read"):
        load_policy(tmp_path / "missing.yaml")


def test_the_bundled_policy_is_the_default():
    assert {c.name for c in load_policy().categories} == {
        "sexual_minors", "sexual_violence", "violence_extreme", "self_harm"}
    assert Moderator.from_config({}).policy == load_policy()
