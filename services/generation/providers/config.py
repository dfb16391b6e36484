"""The providers file: the one place an operator describes model vendors.

``GENERATION.PROVIDERS_FILE`` (env ``GENERATION_PROVIDERS_FILE``) names a YAML
file (docs/providers.md)::

    providers:   name -> {type, base_url, api_key, model, region, job_types,
                          timeout_s, max_concurrency, allow_private_network, ...}
    routes:      job type -> [provider names], the failover order
    prompt_assist: {type: openai_chat, base_url, api_key, model, ...}
    retry:       {attempts, base_delay_s, max_delay_s}
    breaker:     {failures, cooldown_s}

Secrets are never written in the file: every ``${NAME}`` in a string is
filled in from the environment, and a variable that is not set stops the
service at start with the variable's name (no defaults: an empty value must
be written ``${NAME}`` with ``NAME=`` set). Relative paths in a provider's
config resolve against the file's directory, passed to every provider as
``base_dir``. Without a file name the bundled ``deploy/providers/local.yaml``
(``local`` only) is used, so a checkout runs offline.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[3]
DEFAULT_FILE = ROOT / "deploy" / "providers" / "local.yaml"
SECTIONS = ("providers", "routes", "prompt_assist", "retry", "breaker")
VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class ProviderConfigError(ValueError):
    """The provider configuration cannot work; the service must not start."""


def fill_variables(value: Any, environ: Mapping[str, str], where: str = "") -> Any:
    """``value`` with every ``${NAME}`` in its strings replaced by the
    environment's value; :class:`ProviderConfigError` naming a missing one."""
    if isinstance(value, str):
        def one(match: re.Match) -> str:
            name = match.group(1)
            if name not in environ:
                raise ProviderConfigError(f"{where or 'providers file'}: environment variable "
                                          f"{name} is not set")
            return environ[name]
        return VARIABLE.sub(one, value)
    if isinstance(value, Mapping):
        return {key: fill_variables(item, environ, f"{where}.{key}" if where else str(key))
                for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [fill_variables(item, environ, where) for item in value]
    return value


def plain_yaml(text: str):
    """YAML as ``yaml.safe_load`` reads it before nameko's config loader adds
    its ``${VAR}`` resolver to ``SafeLoader`` (which every nameko process and
    ``services.common.config.load_config`` do): here ``${NAME}`` must stay
    text, for :func:`fill_variables` to fill in or refuse naming the variable."""

    class Loader(yaml.SafeLoader):
        yaml_implicit_resolvers = {
            first: [(tag, rx) for tag, rx in resolvers if tag.startswith("tag:yaml.org,2002:")]
            for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}

    return yaml.load(text, Loader=Loader)  # a SafeLoader


def load_providers_file(path: str | os.PathLike | None = None,
                        environ: Mapping[str, str] | None = None) -> dict:
    """The providers file at ``path`` (the bundled one when empty), its
    variables filled in and ``base_dir`` set on every provider."""
    path = Path(path) if path else DEFAULT_FILE
    try:
        data = plain_yaml(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ProviderConfigError(f"providers file {path}: cannot read it "
                                  f"({exc.strerror or exc})") from None
    except yaml.YAMLError as exc:
        raise ProviderConfigError(f"providers file {path}: not valid YAML ({exc})") from None
    data = data or {}
    if not isinstance(data, Mapping):
        raise ProviderConfigError(f"providers file {path}: a mapping of {', '.join(SECTIONS)}")
    unknown = sorted(str(k) for k in data if k not in SECTIONS)
    if unknown:
        raise ProviderConfigError(f"providers file {path}: unknown key {unknown[0]!r} "
                                  f"(known: {', '.join(SECTIONS)})")
    data = fill_variables(dict(data), os.environ if environ is None else environ)
    return with_base_dir(data, path.resolve().parent)


def with_base_dir(data: Mapping, base_dir: str | os.PathLike) -> dict:
    """``data`` with ``base_dir`` on every provider that has none."""
    data = dict(data)
    providers = data.get("providers")
    if isinstance(providers, Mapping):
        data["providers"] = {name: {"base_dir": str(base_dir), **(conf or {})}
                             if isinstance(conf or {}, Mapping) else conf
                             for name, conf in providers.items()}
    return data


def providers_config(config: Mapping | None) -> dict:
    """The providers file's structure for a service config: the file named by
    ``GENERATION.PROVIDERS_FILE`` (bundled default when empty). A mapping that
    already is that structure (has any of :data:`SECTIONS`) is returned as is,
    so tests and tools can pass one directly."""
    config = config or {}
    if any(key in config for key in SECTIONS):
        return dict(config)
    section = config.get("GENERATION", config) or {}
    return load_providers_file(str(section.get("PROVIDERS_FILE") or "").strip() or None)
