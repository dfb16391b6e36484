"""Deterministic templates: data files (``*.yaml`` here) and the engine that
expands them (``engine.py``)."""

from services.generation.templates.engine import (
    Expansion,
    Template,
    TemplateEngine,
    TemplateError,
    expand,
    list_templates,
)

__all__ = ["Expansion", "Template", "TemplateEngine", "TemplateError", "expand", "list_templates"]
