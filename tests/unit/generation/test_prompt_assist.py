"""Prompt assist: used only when configured, validated, always falling back."""

from __future__ import annotations

import json
import logging

import pytest
import requests

from services.common.errors import DomainError
from services.generation.moderation import Moderator
from services.generation.prompt_assist import PromptAssistant, expand_with_assist
from services.generation.templates.engine import TemplateEngine

BRIEF = {"product_name": "Aurora lamp", "shot_count": 3}


class StubResponse:
    def __init__(self, status=200, body=None):
        self.status_code = status
        self._body = body

    def json(self):
        if isinstance(self._body, Exception):
            raise self._body
        return self._body

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class StubSession:
    """Answers with ``content`` (or raises ``error``) and records each call."""

    def __init__(self, content=None, status=200, error=None, body=None):
        self.content, self.status, self.error, self.body = content, status, error, body
        self.calls = []

    def post(self, url, json=None, headers=None, timeout=None):
        self.calls.append({"url": url, "json": json, "headers": headers, "timeout": timeout})
        if self.error:
            raise self.error
        body = self.body if self.body is not None else {
            "choices": [{"message": {"role": "assistant", "content": self.content}}]}
        return StubResponse(self.status, body)


@pytest.fixture(scope="module")
def engine():
    return TemplateEngine()


def answer(shots=3, **kw) -> str:
    body = {"prompt": "a luminous product film of the Aurora lamp",
            "negative_prompt": "blur",
            "shots": [{"prompt": f"shot {i} of the lamp", "camera": "tilt_up"}
                      for i in range(shots)], **kw}
    return json.dumps(body)


def assistant(session) -> PromptAssistant:
    return PromptAssistant("http://chat.example", api_key="sk-chat", model="m", timeout_s=3,
                           session=session)


def test_without_an_assistant_the_template_result_is_used(engine):
    assert expand_with_assist(engine, "product-showcase", BRIEF) == \
        engine.expand("product-showcase", BRIEF)


def test_a_good_answer_rewrites_the_prompts_but_keeps_the_durations(engine):
    session = StubSession(answer())
    result = expand_with_assist(engine, "product-showcase", BRIEF, assistant(session))
    draft = engine.expand("product-showcase", BRIEF)
    assert result.source == "assist"
    assert result.prompt == "a luminous product film of the Aurora lamp"
    assert result.negative_prompt == "blur"
    assert [s.prompt for s in result.shots] == ["shot 0 of the lamp", "shot 1 of the lamp",
                                                "shot 2 of the lamp"]
    assert [s.camera for s in result.shots] == ["tilt_up"] * 3
    assert [s.duration_s for s in result.shots] == [s.duration_s for s in draft.shots]
    call = session.calls[0]
    assert call["url"] == "http://chat.example/v1/chat/completions"
    assert call["headers"] == {"Authorization": "Bearer sk-chat"} and call["timeout"] == 3


def test_the_assistant_sees_the_template_the_brief_and_the_draft_only(engine):
    session = StubSession(answer())
    expand_with_assist(engine, "product-showcase", BRIEF, assistant(session))
    body = session.calls[0]["json"]
    assert set(body) == {"model", "messages", "temperature"}
    user = json.loads(body["messages"][1]["content"])
    assert set(user) == {"template", "brief", "draft"}
    assert user["brief"] == {"product_name": "Aurora lamp", "shot_count": 3, "style": "studio",
                             "description": ""}
    assert set(user["template"]) == {"id", "name", "job_type"}


def test_an_unknown_camera_is_replaced_by_the_drafts(engine):
    session = StubSession(json.dumps({"prompt": "p", "shots": [
        {"prompt": "a", "camera": "barrel_roll"}, {"prompt": "b"}, {"prompt": "c",
                                                                      "camera": "static"}]}))
    result = expand_with_assist(engine, "product-showcase", BRIEF, assistant(session))
    draft = engine.expand("product-showcase", BRIEF)
    assert [s.camera for s in result.shots] == [draft.shots[0].camera, draft.shots[1].camera,
                                                "static"]
    assert result.negative_prompt == draft.negative_prompt


def test_a_fenced_json_answer_is_accepted(engine):
    session = StubSession("```json\n" + answer() + "\n```")
    assert expand_with_assist(engine, "product-showcase", BRIEF,
                              assistant(session)).source == "assist"


@pytest.mark.parametrize("session, reason", [
    (StubSession(error=requests.Timeout()), "timeout"),
    (StubSession(error=requests.ConnectionError()), "connection_failed"),
    (StubSession(answer(), status=500), "http_500"),
    (StubSession("I'd be happy to help! Here is a prompt: ..."), "malformed_answer"),
    (StubSession(body={"choices": []}), "malformed_answer"),
    (StubSession(body=ValueError("not json")), "malformed_answer"),
    (StubSession(answer(shots=2)), "wrong_shot_count"),
    (StubSession(json.dumps({"prompt": "", "shots": []})), "malformed_answer"),
    (StubSession(json.dumps(["a list"])), "malformed_answer"),
    (StubSession(json.dumps({"prompt": "x" * 5000})), "malformed_answer"),
])
def test_any_failure_falls_back_to_the_template(engine, caplog, session, reason):
    with caplog.at_level(logging.WARNING, "services.generation.prompt_assist"):
        result = expand_with_assist(engine, "product-showcase", BRIEF, assistant(session))
    assert result == engine.expand("product-showcase", BRIEF)
    assert f"({reason})" in caplog.text
    assert "Aurora" not in caplog.text  # prompts are never logged


def test_an_answer_that_breaks_the_policy_falls_back(engine, caplog):
    session = StubSession(answer(prompt="a decapitated lamp"))
    with caplog.at_level(logging.WARNING, "services.generation.prompt_assist"):
        result = expand_with_assist(engine, "product-showcase", BRIEF, assistant(session),
                                    moderator=Moderator())
    assert result.source == "template" and "violence_extreme" in caplog.text


def test_a_bug_in_the_assistant_does_not_fail_the_job(engine):
    class Broken(PromptAssistant):
        def assist(self, *args):
            raise RuntimeError("bug")

    result = expand_with_assist(engine, "portrait", {"subject": "a fox"},
                                Broken("http://chat.example"))
    assert result == engine.expand("portrait", {"subject": "a fox"})


def test_image_templates_need_no_shots_from_the_assistant(engine):
    session = StubSession(json.dumps({"prompt": "a fox, oil on canvas"}))
    result = expand_with_assist(engine, "portrait", {"subject": "a fox"}, assistant(session))
    assert result.prompt == "a fox, oil on canvas" and result.shots == ()


def test_the_callers_mistakes_still_raise(engine):
    session = StubSession(answer())
    with pytest.raises(DomainError) as caught:
        expand_with_assist(engine, "product-showcase", {"shot_count": 2}, assistant(session))
    assert caught.value.code == "invalid_request" and session.calls == []
    with pytest.raises(DomainError) as caught:
        expand_with_assist(engine, "nope", {}, assistant(session))
    assert caught.value.code == "not_found"


def test_prompt_assist_is_off_unless_configured():
    assert PromptAssistant.from_config({}) is None  # the bundled providers file: none
    assert PromptAssistant.from_config({"prompt_assist": {
        "enabled": "false", "base_url": "http://chat.example"}}) is None
    assert PromptAssistant.from_config({"prompt_assist": {
        "enabled": True, "base_url": ""}}) is None
    configured = PromptAssistant.from_config({"prompt_assist": {
        "type": "openai_chat", "base_url": "http://chat.example/", "api_key": "k",
        "model": "small", "timeout_s": 4}})
    assert (configured.url, configured.model, configured.timeout_s) == (
        "http://chat.example/v1/chat/completions", "small", 4.0)


@pytest.mark.parametrize("base_url, url", [
    ("https://api.openai.com/v1", "https://api.openai.com/v1/chat/completions"),
    ("https://api.openai.com/v1/", "https://api.openai.com/v1/chat/completions"),
    ("https://ark.example/api/v3", "https://ark.example/api/v3/chat/completions"),
    ("http://ollama:11434", "http://ollama:11434/v1/chat/completions"),
    ("https://generativelanguage.googleapis.com/v1beta/openai/",
     "https://generativelanguage.googleapis.com/v1beta/openai/chat/completions"),
])
def test_a_base_url_with_its_version_path_is_not_versioned_twice(base_url, url):
    assert PromptAssistant(base_url).url == url


def test_prompt_assist_comes_from_the_providers_file(tmp_path):
    from services.generation.providers.config import ProviderConfigError

    path = tmp_path / "providers.yaml"
    path.write_text("prompt_assist: {type: openai_chat, base_url: 'http://chat.example',"
                    " api_key: '${CHAT_KEY_FOR_TEST}', model: small}\n")
    with pytest.raises(ProviderConfigError, match="CHAT_KEY_FOR_TEST"):
        PromptAssistant.from_config({"GENERATION": {"PROVIDERS_FILE": str(path)}})
    with pytest.raises(ProviderConfigError, match="unknown type"):
        PromptAssistant.from_config({"prompt_assist": {"type": "chat9", "base_url": "http://x"}})
