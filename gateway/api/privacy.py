"""Privacy (docs/api.md "Privacy"), over the privacy service's RPC.

Requests (export, erasure, restriction, lifting it), consents, the policy
and its acceptance, the retention schedule actually enforced, erasure
certificates, and the disclosure log (over the generation service's RPC,
which owns it). Another user's request is 404, like an unknown one. Every
answer is ``Cache-Control: no-store`` (a finished export carries a signed
download URL).

An erasure is asked with a session and the account's password (the privacy
service decides: this passes the caller's credential type along) and waits
out a grace period; it is cancelled with the mailed link's token (no sign-in)
or by the owner's session.
"""

from __future__ import annotations

from flask.views import MethodView

from gateway.api.common import Blueprint, call, errors, for_caller, given, no_store, present
from gateway.auth import authenticated, current_principal
from services.common.contracts import generation as g
from services.common.contracts import privacy as c

privacy_blp = Blueprint("privacy", __name__, url_prefix="/v1/privacy",
                        description="Your data: export, erasure, restriction, consents, the "
                                    "privacy policy and the retention schedule")


privacy_blp.after_request(no_store)


@privacy_blp.route("/requests")
class Requests(MethodView):
    @privacy_blp.arguments(c.RequestQuery, location="query")
    @privacy_blp.response(200, c.RequestPage)
    @authenticated
    def get(self, query):
        """The caller's privacy requests, newest first"""
        return for_caller(c.RequestPage, "privacy.list_requests", query)

    @privacy_blp.response(202, c.RequestView)
    @errors(403, 409)
    @authenticated
    @privacy_blp.arguments(c.CreateRequest)
    def post(self, payload):
        """Ask for an export, an erasure (with a session, not an API key: 403
        session_required; with the password and the TOTP code when two-factor sign-in
        is on: 401 reauthentication_required; it waits out a grace period, cancellable
        with the mailed link), a restriction of processing or its lifting; 409 while
        one of that type is open"""
        answer = for_caller(None, "privacy.create_request", payload,
                            current_principal().credential_type)
        return present(c.RequestView, answer), 202, {
            "Location": f"/v1/privacy/requests/{answer['id']}"}


@privacy_blp.route("/requests/<uuid:request_id>")
class OneRequest(MethodView):
    @privacy_blp.response(200, c.RequestView)
    @authenticated
    def get(self, request_id):
        """A request with its per-service parts; a finished export has a download_url"""
        return for_caller(c.RequestView, "privacy.get_request", str(request_id))

    @privacy_blp.response(200, c.RequestView)
    @errors(409)
    @authenticated
    def delete(self, request_id):
        """Cancel an erasure in its grace period with a session (403 session_required);
        409 not_cancellable"""
        return _cancel_signed_in(request_id)


def _cancel_signed_in(request_id):
    return for_caller(c.RequestView, "privacy.cancel_request", str(request_id),
                      current_principal().credential_type)


@privacy_blp.route("/requests/<uuid:request_id>/cancel", methods=["POST"])
@privacy_blp.response(200, c.RequestView)
@privacy_blp.arguments(c.CancelRequest)
@errors(400, 403, 409)
@privacy_blp.doc(security=[{}, {"bearerAuth": []}])
def cancel_request(payload, request_id):
    """Cancel an erasure in its grace period: with the mailed link's token (no sign-in;
    400 invalid_token) or, without one, with a session of the owner (403
    session_required); 409 not_cancellable"""
    if payload.get("token"):
        return call(c.RequestView, "privacy.cancel_with_token", str(request_id), payload)
    return _cancel_signed_in(request_id)


@privacy_blp.route("/certificates/<uuid:request_id>", methods=["GET"])
@privacy_blp.response(200, c.Certificate)
def certificate(request_id):
    """A completed erasure's certificate (no personal data; no authentication: the
    account is gone). 404 until the erasure has completed"""
    return call(c.Certificate, "privacy.get_certificate", str(request_id))


@privacy_blp.route("/consents")
class ConsentsView(MethodView):
    @privacy_blp.response(200, c.Consents)
    @authenticated
    def get(self):
        """The caller's consents and every change of them"""
        return for_caller(c.Consents, "privacy.get_consents")

    @privacy_blp.response(200, c.Consents)
    @authenticated
    @privacy_blp.arguments(c.UpdateConsents)
    def put(self, payload):
        """Give or withdraw consent to marketing mail and analytics, and set the
        regions where your data must not be processed (``refused_regions``)"""
        return for_caller(c.Consents, "privacy.update_consents", payload, "api")


@privacy_blp.route("/policy", methods=["GET"])
@privacy_blp.response(200, c.Policy)
@errors(404)
def policy():
    """The current privacy policy version (404 before any is published)"""
    return call(c.Policy, "privacy.get_policy")


@privacy_blp.route("/policy/accept", methods=["POST"])
@privacy_blp.response(200, c.PolicyStatus)
@errors(404, 409)
@authenticated
@privacy_blp.arguments(c.AcceptPolicy)
def accept_policy(payload):
    """Accept the current policy version (409 policy_version_outdated for another one)"""
    return for_caller(c.PolicyStatus, "privacy.accept_policy", payload)


@privacy_blp.route("/disclosures", methods=["GET"])
@privacy_blp.arguments(g.DisclosureQuery, location="query")
@privacy_blp.response(200, g.DisclosurePage)
@authenticated
def disclosures(query):
    """The caller's disclosure log, newest first: each request sent to a model vendor
    (vendor, region, categories of data sent, outcome, when). The built-in renderer
    sends nothing anywhere and has no entries"""
    return for_caller(g.DisclosurePage, "generation.list_disclosures", given(query))


@privacy_blp.route("/retention", methods=["GET"])
@privacy_blp.response(200, c.Retention)
def retention():
    """The retention schedule the running services enforce, from their own settings"""
    return call(c.Retention, "privacy.get_retention")
