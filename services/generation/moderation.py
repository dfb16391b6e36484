"""Moderation of prompts before any credit is spent.

A policy file (YAML; the bundled ``policy/moderation.yaml`` unless
``GENERATION.MODERATION_POLICY`` names another) lists categories, each with
rules of terms and regular expressions; see the bundled file for the format.
The prompt, the negative prompt, every template input and every shot prompt
are checked one by one; the first violation refuses the request with 422
``content_policy_violation`` and ``details: {category, field}``. The matched
terms are never echoed: the answer must not teach anyone how to get around
the list.

Normalisation makes trivial evasion useless: Unicode compatibility forms
and accents are folded (``ｎúdé`` → ``nude``), common Cyrillic and Greek
look-alike letters are mapped to Latin ones, invisible characters are
dropped, punctuation becomes a space (``n.u.d.e``), runs of single letters
are joined (``n u d e``), and each text is matched twice: as written (digits
split from letters, so ``12yo`` reads ``12 yo``) and with leetspeak undone in
words that contain a letter (``nud3`` → ``nude``; plain numbers stay numbers).
Terms match whole words only, so ``therapist`` never matches ``rapist``.

Term lists catch the obvious; they are not a classifier. An operator who
needs more puts a moderation model in front (or a provider that refuses),
and the policy file stays the cheap, predictable first line.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from services.common.errors import DomainError

BUNDLED_POLICY = Path(__file__).resolve().parent / "policy" / "moderation.yaml"

LEET = str.maketrans({"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "8": "b",
                      "@": "a", "$": "s", "!": "i", "|": "i", "+": "t"})
CONFUSABLES = str.maketrans("аеорсухіјѕкмтнвαοερτυινκ", "aeopcyxijskmthbaoeptuivk")
INVISIBLE = re.compile("[\u00ad\u034f\u115f\u1160\u17b4\u17b5\u180e\u200b-\u200f"
                       "\u202a-\u202e\u2060-\u2064\u3164\ufeff\uffa0]")
NON_WORD = re.compile(r"[^a-z0-9]+")
WIDE_GAP = re.compile(r"\s{2,}")
DIGIT_LETTER = re.compile(r"(?<=[0-9])(?=[a-z])|(?<=[a-z])(?=[0-9])")


class PolicyError(ValueError):
    """The policy file is malformed; the service must not start with it."""


# ------------------------------------------------------------------ normalisation


def _fold(text: str) -> str:
    text = INVISIBLE.sub("", unicodedata.normalize("NFKD", text))
    text = "".join(c for c in text if not unicodedata.combining(c))
    return text.casefold().translate(CONFUSABLES)


def _join_spaced_letters(text: str) -> str:
    out: list[str] = []
    run: list[str] = []
    for token in text.split():
        if len(token) == 1 and token.isalpha():
            run.append(token)
            continue
        out.extend(["".join(run)] if len(run) >= 3 else run)
        run = []
        out.append(token)
    out.extend(["".join(run)] if len(run) >= 3 else run)
    return " ".join(out)


def normalise(text: str, leet: bool = False) -> str:
    """Lowercase ASCII words separated by single spaces (see the module doc)."""
    folded = _fold(text)
    if leet:
        folded = re.sub(r"\S+", lambda m: m[0].translate(LEET)
                        if any(c.isalpha() for c in m[0]) else m[0], folded)
    # a wider gap separates spaced-out words: "n u d e  c h i l d" is two words
    segments = (DIGIT_LETTER.sub(" ", NON_WORD.sub(" ", s)) for s in WIDE_GAP.split(folded))
    return " ".join(filter(None, (_join_spaced_letters(s) for s in segments)))


def variants(text: str) -> set[str]:
    return {normalise(text), normalise(text, leet=True)}


# ------------------------------------------------------------------ the policy


def _term_regex(term: str) -> str:
    prefix = term.endswith("*")
    words = normalise(term.rstrip("*"))
    if not words:
        raise PolicyError(f"the term {term!r} is empty once normalised")
    return re.escape(words) + ("[a-z0-9]*" if prefix else "")


def _group(raw: Any, where: str) -> tuple[re.Pattern, ...]:
    if not isinstance(raw, dict) or not (raw.get("terms") or raw.get("patterns")):
        raise PolicyError(f"{where}: a rule needs terms or patterns")
    regexes = []
    terms = raw.get("terms") or []
    if not isinstance(terms, list) or not all(isinstance(t, str) for t in terms):
        raise PolicyError(f"{where}: terms is a list of strings")
    if terms:
        alternatives = "|".join(sorted({_term_regex(t) for t in terms}, key=len, reverse=True))
        regexes.append(re.compile(rf"(?<![a-z0-9])(?:{alternatives})(?![a-z0-9])"))
    for pattern in raw.get("patterns") or []:
        try:
            regexes.append(re.compile(str(pattern)))
        except re.error as exc:
            raise PolicyError(f"{where}: pattern {pattern!r} does not compile: {exc}") from None
    return tuple(regexes)


@dataclass(frozen=True)
class Rule:
    """Every group must match; a group matches when any of its regexes does."""

    groups: tuple[tuple[re.Pattern, ...], ...]

    def matches(self, texts: set[str]) -> bool:
        return all(any(r.search(t) for r in group for t in texts) for group in self.groups)


@dataclass(frozen=True)
class Category:
    name: str
    description: str
    rules: tuple[Rule, ...]


@dataclass(frozen=True)
class Policy:
    version: str
    categories: tuple[Category, ...]


def parse_policy(raw: Any, source: str = "<policy>") -> Policy:
    if not isinstance(raw, dict) or not isinstance(raw.get("categories"), dict):
        raise PolicyError(f"{source}: a policy is a mapping with 'categories'")
    categories = []
    for name, body in raw["categories"].items():
        where = f"{source}: {name}"
        if not re.match(r"^[a-z][a-z0-9_]*$", str(name)):
            raise PolicyError(f"{where}: category names are snake_case")
        if not isinstance(body, dict) or not isinstance(body.get("rules"), list):
            raise PolicyError(f"{where}: a category has a list of rules")
        rules = []
        for i, rule in enumerate(body["rules"]):
            rwhere = f"{where} rule {i + 1}"
            if isinstance(rule, dict) and "all_of" in rule:
                groups = rule["all_of"]
                if not isinstance(groups, list) or not groups:
                    raise PolicyError(f"{rwhere}: all_of is a list of groups")
                rules.append(Rule(tuple(_group(g, rwhere) for g in groups)))
            else:
                rules.append(Rule((_group(rule, rwhere),)))
        categories.append(Category(str(name), str(body.get("description", "")), tuple(rules)))
    return Policy(str(raw.get("version", "1")), tuple(categories))


def load_policy(path: str | Path | None = None) -> Policy:
    """The policy at ``path``, or the bundled one."""
    path = Path(path) if path else BUNDLED_POLICY
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise PolicyError(f"cannot read the moderation policy {path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise PolicyError(f"{path.name}: not valid YAML: {exc}") from None
    return parse_policy(raw, path.name)


# ------------------------------------------------------------------ checking


@dataclass(frozen=True)
class Violation:
    category: str
    field: str


def request_texts(prompt: str | None = None, negative_prompt: str | None = None,
                  inputs: Mapping[str, Any] | None = None,
                  shots: Sequence[Any] = ()) -> dict[str, str]:
    """The texts of a request by field name (``inputs.<name>``, ``shots[i].prompt``);
    shots may be :class:`~services.generation.providers.base.Shot` objects or dicts."""
    texts = {"prompt": prompt or "", "negative_prompt": negative_prompt or ""}
    for name, value in (inputs or {}).items():
        if isinstance(value, str):
            texts[f"inputs.{name}"] = value
    for i, shot in enumerate(shots or ()):
        text = shot.get("prompt") if isinstance(shot, Mapping) else getattr(shot, "prompt", "")
        texts[f"shots[{i}].prompt"] = text or ""
    return {k: v for k, v in texts.items() if v}


class Moderator:
    def __init__(self, policy: Policy | None = None):
        self.policy = policy or load_policy()

    @classmethod
    def from_config(cls, config: Mapping) -> Moderator:
        section = config.get("GENERATION", config) or {}
        return cls(load_policy(section.get("MODERATION_POLICY") or None))

    def find(self, texts: Mapping[str, str | None]) -> Violation | None:
        for field, text in texts.items():
            if not text:
                continue
            forms = variants(str(text))
            for category in self.policy.categories:
                if any(rule.matches(forms) for rule in category.rules):
                    return Violation(category.name, field)
        return None

    def check(self, texts: Mapping[str, str | None]) -> None:
        """Raise 422 ``content_policy_violation`` for the first violation."""
        violation = self.find(texts)
        if violation is not None:
            raise DomainError(
                "content_policy_violation", "the request is not allowed by the content policy",
                422, {"category": violation.category, "field": violation.field})
