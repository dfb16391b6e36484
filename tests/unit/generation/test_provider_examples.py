"""The example providers files under deploy/providers/ work as shipped: each
loads with its keys set, builds every provider and route, and names a region
for every vendor (docs/providers.md; issue 20's ready-made examples)."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.generation.prompt_assist import PromptAssistant
from services.generation.providers.config import (
    VARIABLE,
    ProviderConfigError,
    load_providers_file,
    plain_yaml,
)
from services.generation.providers.router import build_router

EXAMPLES = sorted((Path(__file__).resolve().parents[3] / "deploy" / "providers").glob("*.yaml"))


def variables(value) -> set[str]:
    """The ``${NAME}``s in a file's values (comments aside)."""
    if isinstance(value, str):
        return set(VARIABLE.findall(value))
    items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    return set().union(*map(variables, items)) if items else set()


def keys_of(path: Path) -> dict[str, str]:
    return {name: f"test-key-{name.lower()}"
            for name in variables(plain_yaml(path.read_text()))}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_an_example_builds_its_providers_and_routes(path):
    structure = load_providers_file(path, keys_of(path))
    router = build_router(structure)
    for job_type, names in structure["routes"].items():
        assert list(router.routes[job_type]) == names
        for name in names:
            assert router.region_of(name) == structure["providers"][name]["region"]
    PromptAssistant.from_config(structure)  # a prompt_assist section must build too


@pytest.mark.parametrize("path", [p for p in EXAMPLES if keys_of(p)],
                         ids=lambda p: p.name)
def test_an_example_without_its_keys_does_not_start(path):
    with pytest.raises(ProviderConfigError, match="environment variable .* is not set"):
        load_providers_file(path, {})


def test_the_policy_004_example_is_seedream_then_qwen_with_deepseek_prompt_help():
    path = next(p for p in EXAMPLES if p.name == "seed-004.yaml")
    assert set(keys_of(path)) == {"ARK_API_KEY", "DASHSCOPE_API_KEY", "DEEPSEEK_API_KEY"}
    structure = load_providers_file(path, keys_of(path))
    assert structure["routes"]["text-to-image"] == ["seedream", "qwen"]
    assert structure["providers"]["seedream"]["type"] == "volcengine_ark"
    assert structure["providers"]["qwen"]["type"] == "dashscope"
    assistant = PromptAssistant.from_config(structure)
    assert assistant is not None and assistant.model == "deepseek-chat"


def test_a_variable_is_ours_to_fill_even_after_nameko_set_up_its_yaml_parser(tmp_path):
    """nameko's config loader teaches SafeLoader to read ${VAR} itself (an
    unset one becomes null); the providers file must still name what is missing."""
    from nameko.cli.main import setup_yaml_parser

    setup_yaml_parser()
    path = tmp_path / "providers.yaml"
    path.write_text("providers:\n  o:\n    type: openai_images\n    api_key: ${NOT_SET_ANYWHERE}\n"
                    "    base_url: https://api.openai.com\n")
    with pytest.raises(ProviderConfigError, match="NOT_SET_ANYWHERE is not set"):
        load_providers_file(path, {})
    loaded = load_providers_file(path, {"NOT_SET_ANYWHERE": "k-1"})
    assert loaded["providers"]["o"]["api_key"] == "k-1"
