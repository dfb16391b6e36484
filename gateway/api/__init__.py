"""The API's blueprints, registered in this order by gateway.app.create_app."""

from gateway.api import passkeys  # noqa: F401  (its routes join auth_blp and me_blp)
from gateway.api.accounts import auth_blp, me_blp
from gateway.api.admin import admin_blp
from gateway.api.billing import billing_blp
from gateway.api.files import files_blp
from gateway.api.generation import generation_blp
from gateway.api.health import health_blp
from gateway.api.images import images_blp, public_blp
from gateway.api.oidc import identities_blp, oidc_blp
from gateway.api.privacy import privacy_blp

BLUEPRINTS = (health_blp, auth_blp, oidc_blp, me_blp, identities_blp, images_blp, public_blp,
              files_blp, billing_blp, generation_blp, privacy_blp, admin_blp)
