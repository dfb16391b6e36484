"""The ops CLI's settings: ``deploy/config/ops.yaml`` (or ``--config``, or
``DARKROOM_OPS_CONFIG``), with the ``${VAR:default}`` environment substitution
every Darkroom config file has (``AMQP_URI``, ``RABBIT_MANAGEMENT_URL``...)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ops.errors import OpsError
from services.common.config import config_path, load_config
from services.common.secrets import ConfigurationRefused, refuse_insecure_config

DEFAULTS: dict[str, Any] = {
    "AMQP_URI": "amqp://guest:guest@127.0.0.1:5672/",
    "RABBIT_MANAGEMENT_URL": "http://guest:guest@127.0.0.1:15672",
    "RPC_TIMEOUT_SECONDS": 30,
}


def load_ops_config(path: str | os.PathLike | None = None) -> dict[str, Any]:
    path = Path(path or os.environ.get("DARKROOM_OPS_CONFIG") or config_path("ops"))
    try:
        loaded = load_config(path)
    except FileNotFoundError:
        raise OpsError(f"config file not found: {path}") from None
    except Exception as exc:  # YAML errors and the like: say which file
        raise OpsError(f"cannot read config file {path}: {exc}") from None
    config = {**DEFAULTS, **{k: v for k, v in loaded.items() if v is not None}}
    try:
        refuse_insecure_config(config, "darkroom-ops", path)
    except ConfigurationRefused as exc:
        raise OpsError(str(exc)) from None
    return config
