"""The template engine: a brief in, prompts (and a storyboard) out, no model.

A template is a YAML data file (this directory holds the bundled ones; an
operator may add a directory with ``TEMPLATES_DIR``). It declares its input
fields, some vocabulary, and prompt text with ``{placeholders}``:

- ``inputs``: fields of type ``string`` (``min_length``, ``max_length``),
  ``integer`` / ``number`` (``min``, ``max``), ``enum`` (``values``) or
  ``boolean``, each ``required`` or with a ``default``.
- ``vocab``: named lists of phrases, or ``{by: <enum input>, values: {<enum
  value>: [phrases]}}`` to depend on an enum input. One phrase is chosen per
  expansion and used everywhere ``{name}`` appears, so shots stay coherent.
- ``prompt`` and ``negative_prompt``: lists of parts joined with ", ";
  a part with an empty placeholder (an optional input left blank) is left
  out whole.
- ``storyboard`` (video templates): ``count`` names the integer input giving
  the number of shots; ``beats`` is an ordered narrative; ``n`` shots take
  ``n`` beats spread evenly from first to last (one shot takes the last,
  the hero shot). Each beat has prompt parts, camera moves and durations to
  choose from (``duration_s`` falls back to the storyboard's).

Choices are never random: each one is an index into its list taken from a
SHA-256 of the template id, the validated inputs (defaults filled in) and the
choice's own name, so the same brief always gives the same result and
different briefs vary.
"""

from __future__ import annotations

import hashlib
import json
import re
import string
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from services.common.contracts.generation import JOB_TYPES
from services.common.errors import DomainError, not_found
from services.generation.providers.base import CAMERA_MOVES, Shot

BUNDLED_DIR = Path(__file__).resolve().parent
FIELD_TYPES = ("string", "integer", "number", "enum", "boolean")
DEFAULT_MAX_LENGTH = 200
ID = re.compile(r"^[a-z][a-z0-9-]{0,63}$")
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
INVISIBLE = re.compile(r"[\u00ad\u200b-\u200f\u202a-\u202e\u2060-\u206f\ufeff]")


class TemplateError(ValueError):
    """A template file is malformed; the service must not start with it."""


@dataclass(frozen=True)
class InputField:
    name: str
    type: str
    required: bool = False
    default: Any = None
    description: str = ""
    values: tuple[str, ...] = ()
    min: float | None = None
    max: float | None = None
    min_length: int | None = None
    max_length: int | None = None

    def describe(self) -> dict:
        out: dict[str, Any] = {"name": self.name, "type": self.type, "required": self.required}
        if self.description:
            out["description"] = self.description
        if self.values:
            out["enum"] = list(self.values)
        for key in ("min", "max", "min_length", "max_length"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if not self.required:
            out["default"] = self.default
        return out

    def load(self, value: Any) -> tuple[Any, str | None]:
        """``(clean value, None)`` or ``(None, error message)``."""
        if self.type == "string":
            if not isinstance(value, str):
                return None, "Not a valid string."
            value = INVISIBLE.sub("", unicodedata.normalize("NFC", value))
            value = " ".join(CONTROL.sub(" ", value).split())
            if self.min_length is not None and len(value) < self.min_length:
                return None, f"Shorter than minimum length {self.min_length}."
            if len(value) > (self.max_length or DEFAULT_MAX_LENGTH):
                return None, f"Longer than maximum length {self.max_length or DEFAULT_MAX_LENGTH}."
            return value, None
        if self.type == "enum":
            if value not in self.values:
                return None, f"Must be one of: {', '.join(self.values)}."
            return value, None
        if self.type == "boolean":
            return (value, None) if isinstance(value, bool) else (None, "Not a valid boolean.")
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None, f"Not a valid {self.type}."
        if self.type == "integer":
            if isinstance(value, float) and not value.is_integer():
                return None, "Not a valid integer."
            value = int(value)
        else:
            value = float(value)
            if value != value or value in (float("inf"), float("-inf")):
                return None, "Not a valid number."
        if (self.min is not None and value < self.min) or (self.max is not None and value > self.max):
            return None, f"Must be between {_num(self.min)} and {_num(self.max)}."
        return value, None


def _num(value: float | None) -> str:
    if value is None:
        return "any"
    return str(int(value)) if float(value).is_integer() else str(value)


@dataclass(frozen=True)
class Beat:
    name: str
    prompt: tuple[str, ...]
    cameras: tuple[str, ...]
    durations: tuple[float, ...]


@dataclass(frozen=True)
class Template:
    id: str
    name: str
    job_type: str
    description: str
    inputs: tuple[InputField, ...]
    prompt: tuple[str, ...]
    negative_prompt: tuple[str, ...] = ()
    vocab: Mapping[str, Any] = field(default_factory=dict)
    shot_count_input: str | None = None
    beats: tuple[Beat, ...] = ()

    def describe(self) -> dict:
        return {"id": self.id, "name": self.name, "job_type": self.job_type,
                "description": self.description, "storyboard": bool(self.beats),
                "inputs": [f.describe() for f in self.inputs]}


@dataclass(frozen=True)
class Expansion:
    """What a template turns a brief into. ``shots`` is empty for image templates."""

    template_id: str
    job_type: str
    prompt: str
    negative_prompt: str
    shots: tuple[Shot, ...] = ()
    source: str = "template"  # or "assist" when prompt_assist rewrote it

    @property
    def total_duration_s(self) -> float:
        return round(sum(s.duration_s for s in self.shots), 3)

    def to_dict(self) -> dict:
        return {"template": self.template_id, "job_type": self.job_type, "prompt": self.prompt,
                "negative_prompt": self.negative_prompt,
                "shots": [s.to_dict() for s in self.shots],
                "total_duration_s": self.total_duration_s, "source": self.source}


# ------------------------------------------------------------------ loading


def _parts(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise TemplateError(f"{where}: expected a string or a list of strings")


def _field(raw: Any, where: str) -> InputField:
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
        raise TemplateError(f"{where}: each input needs a name")
    name, kind = raw["name"], raw.get("type")
    where = f"{where}.{name}"
    if not re.match(r"^[a-z][a-z0-9_]*$", name):
        raise TemplateError(f"{where}: input names are snake_case")
    if kind not in FIELD_TYPES:
        raise TemplateError(f"{where}: type must be one of {', '.join(FIELD_TYPES)}")
    values = tuple(str(v) for v in raw.get("values") or ())
    if kind == "enum" and not values:
        raise TemplateError(f"{where}: an enum needs values")
    spec = InputField(
        name=name, type=kind, required=bool(raw.get("required", False)),
        default=raw.get("default"), description=str(raw.get("description", "")),
        values=values, min=raw.get("min"), max=raw.get("max"),
        min_length=raw.get("min_length", 1 if raw.get("required") and kind == "string" else None),
        max_length=raw.get("max_length"),
    )
    if not spec.required:
        if spec.default is None:
            raise TemplateError(f"{where}: an optional input needs a default")
        _, error = spec.load(spec.default)
        if error:
            raise TemplateError(f"{where}: the default is not valid: {error}")
    return spec


def _placeholders(parts: Iterable[str]) -> set[str]:
    names = set()
    for part in parts:
        for _, name, spec, conversion in string.Formatter().parse(part):
            if name is not None:
                if not re.match(r"^[a-z][a-z0-9_]*$", name) or spec or conversion:
                    raise TemplateError(f"placeholder {{{name}}} is not a plain name")
                names.add(name)
    return names


def _durations(value: Any, where: str) -> tuple[float, ...]:
    values = value if isinstance(value, list) else [value]
    try:
        durations = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise TemplateError(f"{where}: durations are numbers") from None
    if not durations or any(not 0.5 <= d <= 20 for d in durations):
        raise TemplateError(f"{where}: durations are between 0.5 and 20 seconds")
    return durations


def parse_template(raw: Any, source: str = "<template>") -> Template:
    """A :class:`Template` from a loaded YAML document, checked thoroughly, so
    a mistake in a data file stops the service at start and not a job later."""
    if not isinstance(raw, dict):
        raise TemplateError(f"{source}: a template is a mapping")
    tid = raw.get("id")
    if not isinstance(tid, str) or not ID.match(tid):
        raise TemplateError(f"{source}: id must be lowercase letters, digits and dashes")
    where = f"{source} ({tid})"
    if raw.get("job_type") not in JOB_TYPES:
        raise TemplateError(f"{where}: job_type must be one of {', '.join(JOB_TYPES)}")
    inputs = tuple(_field(f, f"{where} inputs") for f in raw.get("inputs") or ())
    by_name = {f.name: f for f in inputs}
    if len(by_name) != len(inputs):
        raise TemplateError(f"{where}: input names must be unique")

    vocab: dict[str, Any] = {}
    for name, entry in (raw.get("vocab") or {}).items():
        if name in by_name:
            raise TemplateError(f"{where}: vocab {name!r} shadows an input")
        if isinstance(entry, dict):
            key = entry.get("by")
            values = entry.get("values") or {}
            if key not in by_name or by_name[key].type != "enum":
                raise TemplateError(f"{where}: vocab {name!r} must be 'by' an enum input")
            missing = set(by_name[key].values) - set(values)
            if missing:
                raise TemplateError(f"{where}: vocab {name!r} has no phrases for {sorted(missing)}")
            vocab[name] = {"by": key, "values": {k: _parts(v, f"{where} vocab {name}")
                                                 for k, v in values.items()}}
        else:
            vocab[name] = _parts(entry, f"{where} vocab {name}")
        phrases = vocab[name]["values"].values() if isinstance(vocab[name], dict) else [vocab[name]]
        if any(not p for p in phrases):
            raise TemplateError(f"{where}: vocab {name!r} has an empty list")

    prompt = _parts(raw.get("prompt"), f"{where} prompt")
    if not prompt:
        raise TemplateError(f"{where}: a template needs a prompt")
    negative = _parts(raw.get("negative_prompt"), f"{where} negative_prompt")

    count_input, beats = None, ()
    board = raw.get("storyboard")
    if board is not None:
        if raw["job_type"] != "image-to-video":
            raise TemplateError(f"{where}: only image-to-video templates have a storyboard")
        count_input = board.get("count")
        spec = by_name.get(count_input)
        if spec is None or spec.type != "integer" or spec.min is None or spec.max is None \
                or spec.min < 1:
            raise TemplateError(f"{where}: storyboard.count must name an integer input "
                                "with min >= 1 and a max")
        default_durations = _durations(board.get("duration_s", 3), f"{where} storyboard")
        beat_list = []
        for i, beat in enumerate(board.get("beats") or ()):
            bwhere = f"{where} beat {i + 1}"
            cameras = tuple(beat.get("camera") or ("static",)) if isinstance(beat, dict) else ()
            if not isinstance(beat, dict) or any(c not in CAMERA_MOVES for c in cameras):
                raise TemplateError(f"{bwhere}: camera moves are {', '.join(CAMERA_MOVES)}")
            beat_list.append(Beat(
                name=str(beat.get("name", f"beat-{i + 1}")),
                prompt=_parts(beat.get("prompt"), bwhere) or prompt,
                cameras=cameras,
                durations=_durations(beat["duration_s"], bwhere) if "duration_s" in beat
                else default_durations,
            ))
        beats = tuple(beat_list)
        if len(beats) < spec.max:
            raise TemplateError(f"{where}: storyboard needs at least {_num(spec.max)} beats")

    known = set(by_name) | set(vocab)
    used = _placeholders(prompt) | _placeholders(negative)
    for beat in beats:
        used |= _placeholders(beat.prompt)
    unknown = used - known
    if unknown:
        raise TemplateError(f"{where}: unknown placeholders {sorted(unknown)}")

    return Template(id=tid, name=str(raw.get("name") or tid), job_type=raw["job_type"],
                    description=str(raw.get("description", "")).strip(), inputs=inputs,
                    prompt=prompt, negative_prompt=negative, vocab=vocab,
                    shot_count_input=count_input, beats=beats)


def load_directory(directory: Path | str) -> dict[str, Template]:
    templates: dict[str, Template] = {}
    for path in sorted(Path(directory).glob("*.yaml")):
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise TemplateError(f"{path.name}: not valid YAML: {exc}") from None
        template = parse_template(raw, path.name)
        if template.id in templates:
            raise TemplateError(f"{path.name}: template id {template.id!r} is used twice")
        templates[template.id] = template
    return templates


# ------------------------------------------------------------------ expansion


def _chooser(template: Template, inputs: Mapping[str, Any]):
    brief = json.dumps([template.id, sorted(inputs.items())], sort_keys=True, default=str)

    def choose(options: tuple, *key) -> Any:
        digest = hashlib.sha256(json.dumps([brief, *key]).encode()).digest()
        return options[int.from_bytes(digest[:8], "big") % len(options)]

    return choose


def _format(parts: tuple[str, ...], values: Mapping[str, Any]) -> str:
    """Join the formatted parts with ", "; a part with an empty placeholder
    (an optional input left blank) is left out whole, words around it too."""
    out = []
    for part in parts:
        if any(str(values[name]).strip() == "" for name in _placeholders([part])):
            continue
        text = " ".join(part.format_map(values).split()).strip(" ,")
        if text:
            out.append(text)
    return ", ".join(out)


def _spread(count: int, total: int) -> list[int]:
    """``count`` indices of ``range(total)`` in order, evenly spread, first and
    last included; one index is the last (the hero shot)."""
    if count == 1:
        return [total - 1]
    return [round(i * (total - 1) / (count - 1)) for i in range(count)]


class TemplateEngine:
    """The templates of one or more directories (later ones override by id)."""

    def __init__(self, directories: Iterable[Path | str] = (BUNDLED_DIR,)):
        self.templates: dict[str, Template] = {}
        for directory in directories:
            self.templates.update(load_directory(directory))

    @classmethod
    def from_config(cls, config: Mapping) -> TemplateEngine:
        """Bundled templates plus ``GENERATION.TEMPLATES_DIR`` when set."""
        section = config.get("GENERATION", config) or {}
        extra = section.get("TEMPLATES_DIR")
        if extra and not Path(extra).is_dir():
            raise TemplateError(f"TEMPLATES_DIR {extra!r} is not a directory")
        return cls([BUNDLED_DIR, extra] if extra else [BUNDLED_DIR])

    def list_templates(self) -> list[dict]:
        return [self.templates[tid].describe() for tid in sorted(self.templates)]

    def get(self, template_id: str) -> Template:
        template = self.templates.get(template_id) if isinstance(template_id, str) else None
        if template is None:
            raise not_found("template")
        return template

    def validate(self, template_id: str, inputs: Any) -> dict[str, Any]:
        """The inputs with defaults filled in, or 400 ``invalid_request`` with
        ``details.fields.inputs`` holding one message list per bad field."""
        template = self.get(template_id)
        if inputs is None:
            inputs = {}
        if not isinstance(inputs, Mapping):
            raise DomainError("invalid_request", "the template inputs are not valid", 400,
                              {"fields": {"inputs": ["Not a valid mapping."]}})
        errors: dict[str, list[str]] = {}
        clean: dict[str, Any] = {}
        specs = {f.name: f for f in template.inputs}
        for name in inputs:
            if name not in specs:
                errors[str(name)] = ["Unknown field."]
        for spec in template.inputs:
            if inputs.get(spec.name) is None:
                if spec.required:
                    errors[spec.name] = ["Missing data for required field."]
                else:
                    clean[spec.name] = spec.default
                continue
            value, error = spec.load(inputs[spec.name])
            if error:
                errors[spec.name] = [error]
            else:
                clean[spec.name] = value
        if errors:
            raise DomainError("invalid_request", "the template inputs are not valid", 400,
                              {"fields": {"inputs": errors}})
        return clean

    def expand(self, template_id: str, inputs: Any) -> Expansion:
        template = self.get(template_id)
        values: dict[str, Any] = self.validate(template_id, inputs)
        choose = _chooser(template, values)
        for name, entry in template.vocab.items():
            options = entry["values"][values[entry["by"]]] if isinstance(entry, dict) else entry
            values[name] = choose(options, "vocab", name)
        shots: list[Shot] = []
        if template.beats:
            count = int(values[template.shot_count_input])
            for index, beat_index in enumerate(_spread(count, len(template.beats))):
                beat = template.beats[beat_index]
                shots.append(Shot(
                    prompt=_format(beat.prompt, values),
                    camera=choose(beat.cameras, "camera", index, beat.name),
                    duration_s=choose(beat.durations, "duration", index, beat.name),
                ))
        return Expansion(template_id=template.id, job_type=template.job_type,
                         prompt=_format(template.prompt, values),
                         negative_prompt=_format(template.negative_prompt, values),
                         shots=tuple(shots))


@lru_cache(maxsize=1)
def default_engine() -> TemplateEngine:
    return TemplateEngine()


def list_templates() -> list[dict]:
    """The bundled templates: id, name, job type, description, input fields."""
    return default_engine().list_templates()


def expand(template_id: str, inputs: Any) -> Expansion:
    """Expand a bundled template (404 ``not_found``, 400 ``invalid_request``)."""
    return default_engine().expand(template_id, inputs)
