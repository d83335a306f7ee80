"""One vocabulary for what became of a postback, and of the row it left.

`Outcome` is what happened to one postback: its HTTP status, the `status` word of its
JSON answer, the label of the `postback_requests_total` metric and of the log line, and
the kind of row it stored. `RowKind` is what a stored row is (the `outcome` column of
the read API and the admin): an original, a duplicate or an invalid postback. The
responses, the metrics, the logs, the read API, the admin and the OpenAPI schema all
read them from here.
"""

from dataclasses import dataclass
from enum import Enum, StrEnum


class RowKind(StrEnum):
    """What a stored conversion row is (see PartnerConversion.ORIGINAL for 'original')."""

    ORIGINAL = "original"
    DUPLICATE = "duplicate"
    # An invalid postback's row (processing_error and its raw data). "rejected" is the read
    # API's published word for it, kept for its clients; people read "invalid" (`label`).
    # Not the network's status `rejected` (a sale the network turned down).
    INVALID = "rejected"

    @property
    def label(self) -> str:
        """The word people read: original, duplicate, invalid."""
        return "invalid" if self is RowKind.INVALID else self.value


@dataclass(frozen=True)
class _Spec:
    label: str  # the metric label and the log word
    http_status: int
    answer: str | None  # the JSON answer's `status` (None: the answer has none, e.g. a 405)
    stored: RowKind | None  # the row the postback left, if any
    description: str  # for people reading the OpenAPI schema and the README


class Outcome(Enum):
    """What became of one postback (see the module doc)."""

    SUCCESS = _Spec("success", 200, "success", RowKind.ORIGINAL, "Stored as the original of its conversion_id.")
    DUPLICATE = _Spec(
        "duplicate",
        200,
        "duplicate",
        RowKind.DUPLICATE,
        "Already recorded with the same status and amounts (or the very same request again): stored as a "
        "duplicate linked to the original; stop retrying.",
    )
    UPDATED = _Spec(
        "updated",
        200,
        "updated",
        None,
        "A permitted status or amount change: the original is updated, the change is in its history "
        "(`changes`: field -> [before, after]).",
    )
    # A change that would roll the conversion back: recorded in its history, not applied,
    # answered like a duplicate (with a `note`) so the sender stops retrying.
    STALE = _Spec(
        "duplicate",
        200,
        "duplicate",
        None,
        "A change that would roll the state back (a late `pending` after `approved`): recorded as not "
        "applied; `note` says why.",
    )
    INVALID = _Spec(
        "invalid",
        400,
        "error",
        RowKind.INVALID,
        "Invalid data (missing conversion_id, a bad amount or date, a value too long, an unreadable body): "
        "stored as an invalid row with every raw parameter; `errors` names each field.",
    )
    REFUSED = _Spec(
        "invalid",
        400,
        "error",
        None,
        "Too many parameters, or a parameter name or value over its limit: nothing stored; `reason`, `errors`.",
    )
    FORBIDDEN = _Spec(
        "forbidden",
        403,
        "error",
        None,
        "The partner's secret is missing or wrong, the signature's timestamp is outside the window, or the "
        "client address is not on the partner's allowlist: nothing stored; `reason` says which.",
    )
    NOT_FOUND = _Spec("not_found", 404, "error", None, "No active partner at that endpoint path: nothing stored.")
    METHOD_NOT_ALLOWED = _Spec(
        "method_not_allowed", 405, "error", None, "A method other than GET or POST: nothing stored; `Allow` says which."
    )
    TOO_LARGE = _Spec(
        "too_large", 413, "error", None, "The body is larger than POSTBACK_MAX_BODY_BYTES: nothing stored."
    )
    RATE_LIMITED = _Spec(
        "rate_limited",
        429,
        "error",
        None,
        "The partner's daily quota is used up: nothing stored; `Retry-After` = seconds until the partner's midnight.",
    )
    UNAVAILABLE = _Spec(
        "unavailable",
        503,
        "error",
        None,
        "The partner's database is unreachable or too slow: nothing stored. Retry after `Retry-After` seconds.",
    )

    @property
    def label(self) -> str:
        return self.value.label

    @property
    def http_status(self) -> int:
        return self.value.http_status

    @property
    def answer(self) -> str | None:
        return self.value.answer

    @property
    def stored(self) -> RowKind | None:
        return self.value.stored

    @property
    def description(self) -> str:
        return self.value.description

    @classmethod
    def for_status(cls, http_status: int) -> "Outcome | None":
        """The refusal outcome that answers with `http_status` (400 -> REFUSED, 403 -> FORBIDDEN, ...)."""
        return _BY_REFUSAL_STATUS.get(http_status)


_BY_REFUSAL_STATUS = {
    outcome.http_status: outcome
    for outcome in (
        Outcome.REFUSED,
        Outcome.FORBIDDEN,
        Outcome.NOT_FOUND,
        Outcome.METHOD_NOT_ALLOWED,
        Outcome.TOO_LARGE,
        Outcome.RATE_LIMITED,
        Outcome.UNAVAILABLE,
    )
}
