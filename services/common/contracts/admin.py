"""The operators' HTTP API (``/v1/admin``, docs/api.md "Operators"): its
queries, bodies and answers, where they are not a service's own contract
(the users', jobs', privacy requests' and breaches' views are auth's,
generation's and privacy's)."""

from __future__ import annotations

from marshmallow import ValidationError, fields, validate

from services.common.contracts.base import RpcSchema
from services.common.contracts.generation import JobState, OpsJobView
from services.common.ids import parse_since

JOBS_LIMIT_MAX = 500
REPLAY_LIMIT_MAX = 10_000


class Since(fields.String):
    """An age before now (``30m``, ``2h``, ``3d``; s, m, h, d, w) or an
    ISO-8601 time (UTC without an offset), loaded as an aware datetime."""

    MAX = 64

    def _deserialize(self, value, attr, data, **kwargs):
        text = super()._deserialize(value, attr, data, **kwargs)
        if not 1 <= len(text) <= self.MAX:
            raise ValidationError(f"Length must be between 1 and {self.MAX}.")
        try:
            return parse_since(text)
        except (ValueError, OverflowError):
            raise ValidationError("Not an age (30m, 2h, 3d) nor an ISO-8601 time.") from None


class JobQuery(RpcSchema):
    """``GET /v1/admin/jobs?status=&since=&reason=&limit=``"""

    status = fields.String(load_default="failed",
                           validate=validate.OneOf([state.value for state in JobState]),
                           metadata={"description": "the jobs' status (default failed)"})
    since = Since(load_default=None, metadata={
        "description": "changed since: an age (30m, 2h, 3d) or an ISO-8601 time",
        "minLength": 1, "maxLength": Since.MAX})
    reason = fields.String(load_default=None, validate=validate.Length(min=1, max=100),
                           metadata={"description": "the error code (error.code)"})
    limit = fields.Integer(load_default=100, validate=validate.Range(min=1, max=JOBS_LIMIT_MAX))


class JobList(RpcSchema):
    items = fields.List(fields.Nested(OpsJobView), required=True)


class DeadLetter(RpcSchema):
    """One dead letter, without its body (it can hold personal data)."""

    event = fields.String(allow_none=True, metadata={"description": "the event it carried"})
    error = fields.String(allow_none=True, metadata={"description": "why it was given up on"})
    attempts = fields.Integer(allow_none=True)
    replays = fields.Integer(required=True, metadata={"description": "replayed so far"})
    dead_lettered_at = fields.AwareDateTime(allow_none=True)
    original_queue = fields.String(required=True, metadata={
        "description": "the queue whose handler failed it (a replay goes back there)"})
    correlation_id = fields.String(allow_none=True)
    expires_at = fields.AwareDateTime(allow_none=True, metadata={
        "description": "when the queue's TTL drops it; null when the service cannot tell"})


class DeadLetterQueue(RpcSchema):
    service = fields.String(required=True)
    queue = fields.String(required=True, metadata={"description": "dlq.<queue>"})
    messages = fields.Integer(required=True)
    letters = fields.List(fields.Nested(DeadLetter), required=True,
                          metadata={"description": "up to 10, peeked: they stay queued"})


class DeadLetters(RpcSchema):
    items = fields.List(fields.Nested(DeadLetterQueue), required=True)
    unavailable = fields.List(fields.String(), required=True, metadata={
        "description": "services that did not answer (the others are listed)"})


class ReplayDeadLetters(RpcSchema):
    """``POST /v1/admin/dead-letters/{service}/{queue}/replay``: at most ``limit``
    (all that are there now without it)."""

    limit = fields.Integer(load_default=None, validate=validate.Range(min=1, max=REPLAY_LIMIT_MAX))


class DeadLettersReplayed(RpcSchema):
    service = fields.String(required=True)
    queue = fields.String(required=True)
    replayed = fields.Integer(required=True)
