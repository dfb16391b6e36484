"""From a request to the prompts a job runs with: a template's expansion (and
prompt assist, when configured) or the user's own prompt, then moderation.

Everything here runs at submit, before billing holds anything: a request the
content policy refuses costs nothing (422 ``content_policy_violation``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from services.common.errors import invalid_request
from services.generation.moderation import Moderator, request_texts
from services.generation.prompt_assist import PromptAssistant, expand_with_assist
from services.generation.templates.engine import TemplateEngine


@dataclass
class Prompts:
    templates: TemplateEngine
    moderator: Moderator
    assistant: PromptAssistant | None = None

    @classmethod
    def from_config(cls, config: Mapping) -> Prompts:
        return cls(TemplateEngine.from_config(config), Moderator.from_config(config),
                   PromptAssistant.from_config(config))

    def expand(self, data: dict) -> dict:
        """``{prompt, negative_prompt, shots}`` for a loaded SubmitJob payload;
        400/404 for a bad template or inputs, 422 for a policy violation (the
        user's own texts are checked before any template or assistant sees them)."""
        self.moderator.check(request_texts(data.get("prompt"), data.get("negative_prompt"),
                                           data.get("inputs")))
        if not data.get("template"):
            # a video may animate its source with no prompt at all
            return {"prompt": data.get("prompt") or "", "negative_prompt": data.get("negative_prompt"),
                    "shots": []}
        template = self.templates.get(data["template"])
        if template.job_type != data["type"]:
            raise invalid_request(f"the template {template.id} makes {template.job_type} jobs",
                                  fields={"template": [f"Not a {data['type']} template."]})
        expansion = expand_with_assist(self.templates, data["template"], data.get("inputs") or {},
                                       self.assistant, self.moderator)
        shots = [shot.to_dict() for shot in expansion.shots]
        self.moderator.check(request_texts(expansion.prompt, expansion.negative_prompt,
                                           shots=shots))
        return {"prompt": expansion.prompt, "negative_prompt": expansion.negative_prompt or None,
                "shots": shots}
