"""Optional prompt assist: an OpenAI-compatible chat model polishes a
template's prompts; the template engine's result is always the fallback.

Configured in the providers file (docs/providers.md) as ``prompt_assist:
{type: openai_chat, base_url, api_key, model, timeout_s, temperature,
enabled}``; without it (the default) nothing is called. The model
gets the template's id, name and job type, the brief (the validated template
inputs) and the engine's draft: no user id, email, key or job id.

Its answer must be one JSON object ``{"prompt", "negative_prompt"?,
"shots"?: [{"prompt", "camera"?}]}`` with exactly as many shots as the draft.
Durations always come from the template (they shape the price and the
render), a camera outside the known moves is replaced by the draft's, and
when a moderator is given the rewritten texts are checked against the policy
too. Any failure (not configured, timeout, HTTP error, malformed or
off-policy answer) falls back to the draft and logs the reason, never the
prompt: prompts are user content and retention is an operator setting.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from dataclasses import replace
from typing import Any
from urllib.parse import urlsplit

import requests

from services.common.config import flag
from services.generation.moderation import Moderator, request_texts
from services.generation.providers.base import CAMERA_MOVES, Shot
from services.generation.templates.engine import Expansion, Template, TemplateEngine

log = logging.getLogger(__name__)

PATH = "/chat/completions"
MAX_PROMPT = 2000
MAX_SHOT_PROMPT = 1000
FENCE = re.compile(r"^```(?:json)?\s*|\s*```$", re.IGNORECASE)

SYSTEM = (
    "You write prompts for an image and video generation model. You receive a template, "
    "a user's brief and a draft written from the template as JSON. Improve the draft: vivid, "
    "concrete, faithful to the brief; add no people, brands or text that the brief does not "
    "mention. Answer with one JSON object and nothing else: "
    '{"prompt": str, "negative_prompt": str, "shots": [{"prompt": str, "camera": str}]}. '
    "Give exactly as many shots as the draft has (none when it has none); cameras are one of: "
    + ", ".join(CAMERA_MOVES) + "."
)


class AssistFailed(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class PromptAssistant:
    def __init__(self, base_url: str, api_key: str | None = None, model: str = "gpt-4o-mini",
                 timeout_s: float = 15.0, temperature: float = 0.4,
                 session: requests.Session | None = None):
        base = base_url.rstrip("/")
        # OpenAI's SDKs take the base with its path (https://api.openai.com/v1,
        # .../v1beta/openai); a bare host gets the usual /v1: never /v1/v1
        self.url = base + ("/v1" if not urlsplit(base).path else "") + PATH
        self.api_key = api_key or None
        self.model = model
        self.timeout_s = float(timeout_s)
        self.temperature = float(temperature)
        self.session = session or requests.Session()

    @classmethod
    def from_config(cls, config: Mapping) -> PromptAssistant | None:
        """The configured assistant, or None when prompt assist is off."""
        from services.generation.providers.config import ProviderConfigError, providers_config

        section = providers_config(config).get("prompt_assist") or {}
        if not isinstance(section, Mapping):
            raise ProviderConfigError("prompt_assist: a mapping (type, base_url, api_key, model)")
        if section.get("type", "openai_chat") != "openai_chat":
            raise ProviderConfigError(f"prompt_assist: unknown type {section.get('type')!r} "
                                      "(openai_chat)")
        if not flag(section.get("enabled", True)) or not section.get("base_url"):
            return None
        return cls(str(section["base_url"]), section.get("api_key") or None,
                   str(section.get("model") or "gpt-4o-mini"),
                   float(section.get("timeout_s", 15)), float(section.get("temperature", 0.4)))

    def messages(self, template: Template, brief: Mapping[str, Any], draft: Expansion) -> list:
        """Everything the model sees: the template, the brief and the draft."""
        content = {
            "template": {"id": template.id, "name": template.name, "job_type": template.job_type},
            "brief": dict(brief),
            "draft": {"prompt": draft.prompt, "negative_prompt": draft.negative_prompt,
                      "shots": [{"prompt": s.prompt, "camera": s.camera} for s in draft.shots]},
        }
        return [{"role": "system", "content": SYSTEM},
                {"role": "user", "content": json.dumps(content, ensure_ascii=False)}]

    def assist(self, template: Template, brief: Mapping[str, Any], draft: Expansion) -> Expansion:
        """The model's rewrite of ``draft``, or :class:`AssistFailed`."""
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        body = {"model": self.model, "messages": self.messages(template, brief, draft),
                "temperature": self.temperature}
        try:
            response = self.session.post(self.url, json=body, headers=headers,
                                         timeout=self.timeout_s)
        except requests.Timeout:
            raise AssistFailed("timeout") from None
        except requests.RequestException:
            raise AssistFailed("connection_failed") from None
        with response:
            if response.status_code != 200:
                raise AssistFailed(f"http_{response.status_code}")
            try:
                content = response.json()["choices"][0]["message"]["content"]
                answer = json.loads(FENCE.sub("", content.strip()))
            except (ValueError, KeyError, IndexError, TypeError, AttributeError):
                raise AssistFailed("malformed_answer") from None
        return self._expansion(answer, draft)

    @staticmethod
    def _expansion(answer: Any, draft: Expansion) -> Expansion:
        if not isinstance(answer, dict):
            raise AssistFailed("malformed_answer")
        prompt = answer.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip() or len(prompt) > MAX_PROMPT:
            raise AssistFailed("malformed_answer")
        negative = answer.get("negative_prompt", draft.negative_prompt)
        if not isinstance(negative, str) or len(negative) > MAX_PROMPT:
            negative = draft.negative_prompt
        shots = draft.shots
        if draft.shots:
            given = answer.get("shots")
            if not isinstance(given, list) or len(given) != len(draft.shots):
                raise AssistFailed("wrong_shot_count")
            shots = []
            for mine, theirs in zip(draft.shots, given, strict=True):
                text = theirs.get("prompt") if isinstance(theirs, dict) else None
                if not isinstance(text, str) or not text.strip() or len(text) > MAX_SHOT_PROMPT:
                    raise AssistFailed("malformed_answer")
                camera = theirs.get("camera")
                shots.append(Shot(" ".join(text.split()),
                                  camera if camera in CAMERA_MOVES else mine.camera,
                                  mine.duration_s))
            shots = tuple(shots)
        return replace(draft, prompt=" ".join(prompt.split()), negative_prompt=negative.strip(),
                       shots=shots, source="assist")


def expand_with_assist(engine: TemplateEngine, template_id: str, inputs: Any,
                       assistant: PromptAssistant | None = None,
                       moderator: Moderator | None = None) -> Expansion:
    """The template's expansion, polished by ``assistant`` when there is one.

    Invalid inputs and unknown templates raise as :meth:`TemplateEngine.expand`
    does (they are the caller's mistake); everything that goes wrong with the
    assistant falls back to the template's result.
    """
    template = engine.get(template_id)
    brief = engine.validate(template_id, inputs)
    draft = engine.expand(template_id, inputs)
    if assistant is None:
        return draft
    try:
        result = assistant.assist(template, brief, draft)
    except AssistFailed as exc:
        log.warning("prompt assist failed (%s); using the template's prompts", exc.reason)
        return draft
    except Exception:  # a bug here must not fail the job: the draft is good
        log.exception("prompt assist broke; using the template's prompts")
        return draft
    if moderator is not None:
        violation = moderator.find(request_texts(result.prompt, result.negative_prompt,
                                                 shots=result.shots))
        if violation is not None:
            log.warning("prompt assist answer violates the policy (%s); using the template's "
                        "prompts", violation.category)
            return draft
    return result
