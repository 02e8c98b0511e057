"""The fake server's knobs: one typed record, checked once when it is built."""

from __future__ import annotations

from dataclasses import dataclass

#: Fault kinds that are not an HTTP status code.
NAMED_FAULTS: frozenset[str] = frozenset(
    {"reset", "malformed", "hang", "wrong_shape", "cut", "trickle", "short"}
)
#: Faults that need the real answer first: they spoil how (or what of) it is delivered.
ANSWER_FAULTS: frozenset[str] = frozenset({"cut", "trickle", "short"})
IMAGE_ID_STYLES: frozenset[str] = frozenset({"normal", "hostile"})
RETRY_AFTER_STYLES: frozenset[str] = frozenset({"both", "seconds", "http-date"})
FAULT_BODIES: frozenset[str] = frozenset({"default", "json", "text", "html"})
AUTH_FAIL_STATUSES: frozenset[int] = frozenset({401, 403})


def is_status_fault(kind: str) -> bool:
    """True for a fault given as an HTTP error status, e.g. "503"."""
    return kind.isdigit() and 400 <= int(kind) <= 599


@dataclass
class FakeServerOptions:
    """How the fake server behaves. Defaults: a well-behaved, instant, unauthenticated server.

    api_key: when set, `Authorization: Bearer <key>` or `api-key: <key>` is required (else 401).
    latency / latency_max: seconds added to each OCR answer, uniform in [latency, latency_max].
    rps_limit: requests per second (token bucket, burst = max(1, limit)); 0 means no limit.
    retry_after: Retry-After sent with a 429 instead of the computed wait.
    retry_after_style: how a 429 says when to come back: "both" (Retry-After in seconds and the
        exact retry-after-ms), "seconds" (Retry-After only) or "http-date" (Retry-After only, as
        an HTTP date).
    fault_rate / faults: probability of a fault, and the kinds drawn from ("500", "reset", ...).
        Named kinds: reset (TCP reset before any byte), cut (reset after the headers and half of
        the body), hang (no answer at all), trickle (the valid answer dribbled out over
        trickle_seconds), malformed (200, JSON cut off), wrong_shape (200, no `pages`), short
        (200, a valid answer missing the last page).
    fault_body: body of HTTP-status faults: "default" (what sends that status in the wild: HTML
        for 502/504, plain text for 408, Mistral's JSON otherwise), or "json", "text", "html"
        for every status.
    fault_after / fault_limit: no fault for the first `fault_after` requests; at most
        `fault_limit` faults in all (None: no limit). Together: "down for K requests, then fine",
        "fine for N requests, then failing". Counted since the last reset.
    trickle_seconds: how long a "trickle" answer takes to be written.
    fail_auth_after: after N valid answers every request gets 401 (a key revoked mid-run).
    auth_fail_status: the status of those refusals, 401 or 403.
    cheap: answer canned text without parsing the PDF (throughput benchmarks).
    images_per_page / image_id_style: synthetic images on each page, ids normal or hostile.
    model_suffix: appended to the requested model in the answer.
    seed: seed of the one random generator (faults, latency).
    """

    api_key: str | None = None
    latency: float = 0.0
    latency_max: float | None = None
    rps_limit: float = 0.0
    retry_after: float | None = None
    retry_after_style: str = "both"
    fault_rate: float = 0.0
    faults: tuple[str, ...] = ("500", "503", "reset", "malformed")
    fault_body: str = "default"
    fault_after: int = 0
    fault_limit: int | None = None
    trickle_seconds: float = 2.0
    fail_auth_after: int | None = None
    auth_fail_status: int = 401
    cheap: bool = False
    images_per_page: int = 0
    image_id_style: str = "normal"
    model_suffix: str = ""
    seed: int | None = None

    def __post_init__(self) -> None:
        self.faults = tuple(str(kind).strip() for kind in self.faults)
        problems = _problems(self)
        if problems:
            raise ValueError("invalid fake server options: " + "; ".join(problems))

    def __repr__(self) -> str:
        # The key must never reach a log line through a repr.
        fields = {k: v for k, v in vars(self).items() if k != "api_key"}
        key = "'***'" if self.api_key else "None"
        inner = ", ".join(f"{k}={v!r}" for k, v in fields.items())
        return f"FakeServerOptions(api_key={key}, {inner})"


def _problems(o: FakeServerOptions) -> list[str]:
    problems: list[str] = []
    if o.latency < 0:
        problems.append("latency must be >= 0")
    if o.latency_max is not None and o.latency_max < o.latency:
        problems.append("latency_max must be >= latency")
    if o.rps_limit < 0:
        problems.append("rps_limit must be >= 0")
    if o.retry_after is not None and o.retry_after < 0:
        problems.append("retry_after must be >= 0")
    if not 0.0 <= o.fault_rate <= 1.0:
        problems.append("fault_rate must be between 0 and 1")
    bad = [k for k in o.faults if k not in NAMED_FAULTS and not is_status_fault(k)]
    if bad:
        problems.append(
            f"unknown fault kinds {bad}: use HTTP statuses 400-599 or "
            + ", ".join(sorted(NAMED_FAULTS))
        )
    if o.fault_rate > 0 and not o.faults:
        problems.append("fault_rate > 0 needs at least one fault kind")
    if o.retry_after_style not in RETRY_AFTER_STYLES:
        problems.append(f"retry_after_style must be one of {sorted(RETRY_AFTER_STYLES)}")
    if o.fault_body not in FAULT_BODIES:
        problems.append(f"fault_body must be one of {sorted(FAULT_BODIES)}")
    if o.fault_after < 0:
        problems.append("fault_after must be >= 0")
    if o.fault_limit is not None and o.fault_limit < 0:
        problems.append("fault_limit must be >= 0")
    if o.trickle_seconds < 0:
        problems.append("trickle_seconds must be >= 0")
    if o.fail_auth_after is not None and o.fail_auth_after < 0:
        problems.append("fail_auth_after must be >= 0")
    if o.auth_fail_status not in AUTH_FAIL_STATUSES:
        problems.append("auth_fail_status must be 401 or 403")
    if o.images_per_page < 0:
        problems.append("images_per_page must be >= 0")
    if o.image_id_style not in IMAGE_ID_STYLES:
        problems.append(f"image_id_style must be one of {sorted(IMAGE_ID_STYLES)}")
    return problems
