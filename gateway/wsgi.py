"""gunicorn entry point: ``gunicorn --config deploy/config/gunicorn.conf.py gateway.wsgi:app``.

Configuration comes from deploy/config/gateway.yaml (``${VAR:default}`` filled
from the environment); logs are JSON lines on stderr.
"""

from gateway.app import create_app
from services.common.config import config_path, load_config
from services.common.observability import configure_logging

config = load_config(config_path("gateway"))
configure_logging("gateway", config.get("LOG_LEVEL"))
app = create_app(config)
