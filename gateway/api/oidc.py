"""Sign-in with OpenID Connect providers (docs/api.md "Sign-in with Google and
other OpenID providers"): /v1/auth/oidc/* and /v1/me/identities, mapped onto
the auth service's RPC (services/auth/oidc.py holds every rule)."""

from __future__ import annotations

from flask import redirect
from flask.views import MethodView

from gateway.api.accounts import client_info
from gateway.api.common import Blueprint, call, errors, for_caller, given
from gateway.auth import authenticated
from services.common.contracts import auth as c
from services.common.contracts import oidc as oc

LOCATION = {"Location": {"schema": {"type": "string"}}}

oidc_blp = Blueprint("oidc", __name__, url_prefix="/v1/auth/oidc",
                     description="Sign-in with Google and other OpenID Connect providers")
identities_blp = Blueprint("identities", __name__, url_prefix="/v1/me/identities",
                           description="The sign-in providers linked to the caller's account")


@oidc_blp.route("", methods=["GET"])
@oidc_blp.response(200, oc.ProviderList)
def providers():
    """The sign-in providers the operator enabled"""
    return call(oc.ProviderList, "auth.oidc_providers")


@oidc_blp.route("/<string:name>/start", methods=["GET"])
@oidc_blp.arguments(oc.Start, location="query")
@oidc_blp.response(302, description="to the provider's sign-in page", headers=LOCATION)
@errors(400)
def start(query, name):
    """Send the browser to the provider; it comes back to the callback, which sends it on to
    redirect_uri (on the operator's allow-list) with a one-time code"""
    started = call(None, "auth.oidc_start", name, given(query))
    return redirect(started["authorization_url"], 302)


@oidc_blp.route("/<string:name>/callback", methods=["GET"])
@oidc_blp.arguments(oc.Callback, location="query")
@oidc_blp.response(302, description="to the app's redirect_uri with `code` (exchange it) or "
                                    "`error` (a code: link_required, identity_taken, "
                                    "oidc_invalid_token, oidc_denied, ...)", headers=LOCATION)
@errors(400)
def callback(query, name):
    """Where the provider sends the browser back (OAuth 2.0 authorization response)"""
    answer = call(None, "auth.oidc_callback", name, given(query))
    return redirect(answer["location"], 302)


@oidc_blp.route("/exchange", methods=["POST"])
@oidc_blp.arguments(oc.Exchange)
@oidc_blp.response(200, c.LoggedIn)
@errors(403, 409)
def exchange(payload):
    """Trade the one-time code for a session, exactly like a login. A new account needs
    birth_date (or age_confirmed) when the operator sets a minimum age: 400 age_required leaves
    the code usable for another try"""
    return call(c.LoggedIn, "auth.oidc_exchange", payload, **client_info())


@identities_blp.route("")
class Identities(MethodView):
    @identities_blp.response(200, oc.IdentityList)
    @authenticated
    def get(self):
        """The sign-in providers linked to the caller's account"""
        return for_caller(oc.IdentityList, "auth.list_identities")

    @identities_blp.response(201, oc.Started)
    @errors(400, 404)
    @authenticated
    @identities_blp.arguments(oc.Link)
    def post(self, payload):
        """Link a provider: send the browser to authorization_url; the callback links the
        provider's account to the caller's (409 identity_taken when it is another's)"""
        return for_caller(oc.Started, "auth.oidc_start_link", payload["provider"],
                          {"redirect_uri": payload["redirect_uri"]})


@identities_blp.route("/<uuid:identity_id>", methods=["DELETE"])
@identities_blp.response(204)
@errors(409)
@authenticated
def unlink(identity_id):
    """Unlink a provider; 409 last_sign_in_method when it is the account's only way to sign in"""
    for_caller(None, "auth.unlink_identity", str(identity_id))
