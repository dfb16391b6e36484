"""The job rules (services/common/contracts/generation.py) and those who must
agree with them: the request schemas of generation and billing, billing's
price list (checked when billing starts) and the OpenAPI size pattern."""

from __future__ import annotations

import ast
import re
from dataclasses import replace
from pathlib import Path

import pytest
from marshmallow import ValidationError

from services.billing.settings import BillingSettings
from services.common.contracts import billing as billing_contract
from services.common.contracts import generation as rules


@pytest.mark.parametrize("size, expected", [
    ("512x512", (512, 512)), ("768x1024", (768, 1024)), ("1536x1536", (1536, 1536)),
])
def test_sizes_within_the_rules_parse(size, expected):
    assert rules.parse_size(size) == expected
    assert re.fullmatch(rules.SIZE_PATTERN, size)


@pytest.mark.parametrize("size", [
    "448x512", "512x1600", "500x512", "512", "512x512\n", "512X512", "", None, "٥١٢x512",
])
def test_sizes_outside_the_rules_are_refused_alike_by_parse_size_and_the_pattern(size):
    with pytest.raises(ValidationError):
        rules.parse_size(size)
    assert size is None or not re.fullmatch(rules.SIZE_PATTERN, size)


def test_the_default_size_is_a_valid_size():
    rules.parse_size(rules.DEFAULT_SIZE)


def test_every_state_is_either_active_or_final():
    assert rules.ACTIVE | rules.FINAL == set(rules.JobState)
    assert not rules.ACTIVE & rules.FINAL
    assert "running" in rules.ACTIVE and "cancelled" in rules.FINAL  # plain strings match


def test_a_request_that_names_nothing_gets_the_defaults():
    job = rules.SubmitJob().load({"type": "text-to-image", "prompt": "a fox"})
    assert (job["n"], job["size"], job["duration_s"]) == (rules.DEFAULT_N, rules.DEFAULT_SIZE,
                                                         None)
    quote = billing_contract.Quote().load({"type": "text-to-image"})
    assert quote["n"] == rules.DEFAULT_N


SOURCE = "0190e1a0-0000-7000-8000-000000000000"


@pytest.mark.parametrize("schema, image, video", [
    (rules.SubmitJob, {"type": "text-to-image", "prompt": "a fox"},
     {"type": "image-to-video", "source_image_id": SOURCE}),
    (billing_contract.Quote, {"type": "text-to-image"}, {"type": "image-to-video"}),
])
def test_generation_and_billing_take_the_same_limits(schema, image, video):
    schema().load({**image, "n": rules.N_MAX})
    schema().load({**video, "duration_s": rules.DURATION_MAX_S})
    for refused in ({**image, "n": rules.N_MAX + 1}, {**image, "size": "1600x1600"},
                    {**video, "duration_s": rules.DURATION_MAX_S + 1}):
        with pytest.raises(ValidationError):
            schema().load(refused)


def test_job_states_are_what_the_schemas_accept():
    assert rules.JobQuery().load({"status": "reserved"})["status"] == "reserved"
    with pytest.raises(ValidationError):
        rules.JobQuery().load({"status": "done"})


def test_the_generation_contract_does_not_import_billings():
    """Billing's contract imports the job rules; the other way would be a cycle."""
    tree = ast.parse(Path(rules.__file__).read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                 for alias in node.names}
    assert not {name for name in imported if name and "billing" in name}


# ---------------------------------------------------------------- billing's start check


def test_billing_prices_with_the_job_defaults_start():
    settings = BillingSettings()
    assert settings.prices["image-to-video"].default_duration_s == rules.DEFAULT_VIDEO_DURATION_S
    assert {settings.prices[t].default_size for t in ("text-to-image", "image-to-image")} == {
        rules.DEFAULT_SIZE}


@pytest.mark.parametrize("job_type, field, value", [
    ("image-to-video", "default_duration_s", 5),
    ("text-to-image", "default_size", "512x512"),
    ("image-to-image", "default_size", "1536x1536"),
])
def test_billing_refuses_to_start_with_other_defaults_than_the_jobs(job_type, field, value):
    prices = dict(BillingSettings().prices)
    prices[job_type] = replace(prices[job_type], **{field: value})
    with pytest.raises(ValueError) as caught:
        BillingSettings(prices=prices)
    message = str(caught.value)
    assert f"BILLING.PRICES.{job_type}.{field}" in message
    assert "contracts/generation.py" in message
