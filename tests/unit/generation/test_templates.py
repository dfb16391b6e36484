"""The template engine: listing, validation, deterministic expansion."""

from __future__ import annotations

import random

import pytest
import yaml

from services.common.errors import DomainError
from services.generation.providers.base import CAMERA_MOVES
from services.generation.templates import engine as templates
from services.generation.templates.engine import (
    TemplateEngine,
    TemplateError,
    expand,
    list_templates,
    parse_template,
)

BRIEF = {"product_name": "Aurora desk lamp", "description": "brushed aluminium, warm LED",
         "style": "luxury", "shot_count": 5}


def invalid_fields(call) -> dict:
    with pytest.raises(DomainError) as caught:
        call()
    assert (caught.value.code, caught.value.status) == ("invalid_request", 400)
    return caught.value.details["fields"]["inputs"]


# ------------------------------------------------------------------ listing


def test_the_bundled_templates_are_listed_with_their_fields():
    listed = {t["id"]: t for t in list_templates()}
    assert {"product-showcase", "portrait", "poster"} <= set(listed)
    showcase = listed["product-showcase"]
    assert showcase["job_type"] == "image-to-video" and showcase["storyboard"] is True
    assert showcase["name"] and showcase["description"]
    fields = {f["name"]: f for f in showcase["inputs"]}
    assert fields["product_name"]["required"] is True and fields["product_name"]["type"] == "string"
    assert fields["style"]["enum"] == ["studio", "lifestyle", "luxury", "minimal", "bold"]
    assert fields["style"]["default"] == "studio" and fields["style"]["required"] is False
    assert (fields["shot_count"]["min"], fields["shot_count"]["max"]) == (1, 8)
    assert listed["portrait"]["job_type"] == listed["poster"]["job_type"] == "text-to-image"


@pytest.mark.parametrize("template", list_templates(), ids=lambda t: t["id"])
def test_every_bundled_template_expands_from_its_required_inputs(template):
    inputs = {f["name"]: (f["enum"][0] if "enum" in f else "something")
              for f in template["inputs"] if f["required"]}
    result = expand(template["id"], inputs)
    assert result.prompt and "{" not in result.prompt and "}" not in result.prompt
    assert result.job_type == template["job_type"]
    assert bool(result.shots) == template["storyboard"]


# ------------------------------------------------------------------ the storyboard


def test_a_product_showcase_brief_becomes_a_storyboard():
    result = expand("product-showcase", BRIEF)
    assert len(result.shots) == 5
    assert all("Aurora desk lamp" in s.prompt for s in result.shots)
    assert all(s.camera in CAMERA_MOVES for s in result.shots)
    assert all(2.5 <= s.duration_s <= 4 for s in result.shots)
    assert result.total_duration_s == pytest.approx(sum(s.duration_s for s in result.shots))
    assert result.shots[-1].prompt.startswith("hero shot")
    assert result.shots[0].prompt.startswith("opening shot")
    assert "Aurora desk lamp" in result.prompt and "brushed aluminium" in result.prompt
    assert "watermark" in result.negative_prompt
    assert result.to_dict()["total_duration_s"] == result.total_duration_s


def test_the_same_brief_always_gives_the_same_storyboard():
    assert expand("product-showcase", BRIEF) == expand("product-showcase", dict(BRIEF))
    fresh = TemplateEngine()  # a new process would load the files again
    assert fresh.expand("product-showcase", BRIEF) == expand("product-showcase", BRIEF)


def test_giving_a_default_explicitly_is_the_same_brief():
    implicit = expand("product-showcase", {"product_name": "Kettle"})
    explicit = expand("product-showcase", {"product_name": "Kettle", "style": "studio",
                                           "shot_count": 4, "description": ""})
    assert implicit == explicit and len(implicit.shots) == 4


def test_different_briefs_vary():
    names = ["Kettle", "Lamp", "Sneaker", "Watch", "Backpack", "Camera", "Chair", "Mug"]
    boards = {tuple((s.camera, s.duration_s) for s in
                    expand("product-showcase", {"product_name": n, "shot_count": 8}).shots)
              for n in names}
    assert len(boards) > 1
    styles = {expand("product-showcase", {"product_name": "Kettle", "style": s}).prompt
              for s in ("studio", "lifestyle", "luxury", "minimal", "bold")}
    assert len(styles) == 5


@pytest.mark.parametrize("count", range(1, 9))
def test_n_shots_take_n_distinct_beats_in_story_order(count):
    result = expand("product-showcase", {"product_name": "Kettle", "shot_count": count})
    assert len(result.shots) == count
    assert len({s.prompt for s in result.shots}) == count
    assert result.shots[-1].prompt.startswith("hero shot")


def test_expansion_never_uses_the_global_random(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("random() used")

    for name in ("random", "choice", "randint", "randrange", "shuffle"):
        monkeypatch.setattr(random, name, forbidden)
    assert expand("product-showcase", BRIEF).shots


def test_an_empty_optional_input_leaves_no_dangling_words():
    with_tagline = expand("poster", {"title": "Night Jazz", "theme": "jazz by the river",
                                     "tagline": "Every Friday"})
    without = expand("poster", {"title": "Night Jazz", "theme": "jazz by the river"})
    assert 'tagline "Every Friday"' in with_tagline.prompt
    assert "tagline" not in without.prompt and ", ," not in without.prompt


def test_user_text_is_inserted_literally_and_cleaned():
    result = expand("portrait", {"subject": "a {setting} \x00 f\u200box  in\nsnow"})
    assert "portrait of a {setting} fox in snow" in result.prompt


# ------------------------------------------------------------------ validation


def test_an_unknown_template_is_not_found():
    with pytest.raises(DomainError) as caught:
        expand("music-video", {})
    assert (caught.value.code, caught.value.status) == ("not_found", 404)


@pytest.mark.parametrize("inputs, field, message", [
    ({}, "product_name", "Missing data for required field."),
    ({"product_name": "   "}, "product_name", "Shorter than minimum length 1."),
    ({"product_name": "x" * 81}, "product_name", "Longer than maximum length 80."),
    ({"product_name": 7}, "product_name", "Not a valid string."),
    ({"product_name": "K", "shot_count": 0}, "shot_count", "Must be between 1 and 8."),
    ({"product_name": "K", "shot_count": 9}, "shot_count", "Must be between 1 and 8."),
    ({"product_name": "K", "shot_count": 2.5}, "shot_count", "Not a valid integer."),
    ({"product_name": "K", "shot_count": "3"}, "shot_count", "Not a valid integer."),
    ({"product_name": "K", "shot_count": True}, "shot_count", "Not a valid integer."),
    ({"product_name": "K", "style": "grunge"}, "style",
     "Must be one of: studio, lifestyle, luxury, minimal, bold."),
    ({"product_name": "K", "colour": "red"}, "colour", "Unknown field."),
])
def test_bad_inputs_are_refused_field_by_field(inputs, field, message):
    fields = invalid_fields(lambda: expand("product-showcase", inputs))
    assert fields[field] == [message]


def test_all_bad_fields_are_reported_at_once():
    fields = invalid_fields(lambda: expand("product-showcase", {"shot_count": 99, "x": 1}))
    assert set(fields) == {"product_name", "shot_count", "x"}


def test_inputs_that_are_not_a_mapping_are_refused():
    with pytest.raises(DomainError) as caught:
        expand("portrait", ["a fox"])
    assert caught.value.details == {"fields": {"inputs": ["Not a valid mapping."]}}


def test_a_whole_float_is_an_integer():
    assert len(expand("product-showcase", {"product_name": "K", "shot_count": 3.0}).shots) == 3


# ------------------------------------------------------------------ template files


MINIMAL = {"id": "t", "job_type": "text-to-image", "prompt": ["a {thing}"],
           "inputs": [{"name": "thing", "type": "string", "required": True}]}


@pytest.mark.parametrize("change, message", [
    ({"id": "Bad Id"}, "id must be"),
    ({"job_type": "text-to-music"}, "job_type"),
    ({"prompt": ["a {nothing}"]}, "unknown placeholders"),
    ({"prompt": ["a {thing!r}"]}, "plain name"),
    ({"prompt": []}, "needs a prompt"),
    ({"inputs": [{"name": "thing", "type": "colour"}]}, "type must be"),
    ({"inputs": [{"name": "thing", "type": "string"}]}, "needs a default"),
    ({"inputs": [{"name": "n", "type": "integer", "min": 1, "max": 3, "default": 9}],
      "prompt": ["{n}"]}, "default is not valid"),
    ({"inputs": [{"name": "s", "type": "enum", "values": ["a", "b"], "default": "a"}],
      "vocab": {"v": {"by": "s", "values": {"a": ["x"]}}}, "prompt": ["{v}"]}, "no phrases"),
    ({"storyboard": {"count": "thing", "beats": []}}, "only image-to-video"),
])
def test_a_malformed_template_is_refused_at_load(change, message):
    with pytest.raises(TemplateError, match=message):
        parse_template({**MINIMAL, **change})


def _video(beats, max_shots=2):
    return {"id": "v", "job_type": "image-to-video", "prompt": ["{thing}"],
            "inputs": [{"name": "thing", "type": "string", "required": True},
                       {"name": "shots", "type": "integer", "min": 1, "max": max_shots,
                        "default": 1}],
            "storyboard": {"count": "shots", "beats": beats}}


def test_a_storyboard_needs_enough_beats_and_known_camera_moves():
    beat = {"prompt": ["{thing}"], "camera": ["zoom_in"]}
    parse_template(_video([beat, beat]))
    with pytest.raises(TemplateError, match="at least 2 beats"):
        parse_template(_video([beat]))
    with pytest.raises(TemplateError, match="camera moves"):
        parse_template(_video([beat, {"prompt": "x", "camera": ["dolly_zoom"]}]))
    with pytest.raises(TemplateError, match="between 0.5 and 20"):
        parse_template(_video([beat, {**beat, "duration_s": 60}]))


def test_an_operator_directory_adds_and_overrides_templates(tmp_path):
    (tmp_path / "portrait.yaml").write_text(yaml.safe_dump(
        {**MINIMAL, "id": "portrait", "name": "House portrait"}))
    (tmp_path / "extra.yaml").write_text(yaml.safe_dump({**MINIMAL, "id": "extra"}))
    engine = TemplateEngine.from_config({"GENERATION": {"TEMPLATES_DIR": str(tmp_path)}})
    names = {t["id"]: t["name"] for t in engine.list_templates()}
    assert names["portrait"] == "House portrait" and "extra" in names
    assert "product-showcase" in names
    assert engine.expand("extra", {"thing": "kite"}).prompt == "a kite"


def test_a_missing_operator_directory_or_broken_file_stops_the_start(tmp_path):
    with pytest.raises(TemplateError, match="not a directory"):
        TemplateEngine.from_config({"TEMPLATES_DIR": str(tmp_path / "nope")})
    (tmp_path / "broken.yaml").write_text("id: [unclosed")
    with pytest.raises(TemplateError, match="not valid YAML"):
        TemplateEngine([tmp_path])


def test_the_module_functions_use_the_bundled_directory():
    assert templates.default_engine().templates.keys() == TemplateEngine().templates.keys()
