"""The API's blueprints, registered in this order by gateway.app.create_app."""

from gateway.api.accounts import auth_blp, me_blp
from gateway.api.health import health_blp

BLUEPRINTS = (health_blp, auth_blp, me_blp)
