"""The fake server's knobs: one typed record, checked once when it is built."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.fakeserver.ratelimit import RATE_LIMIT_MODES, SLIDING_WINDOW, TOKEN_BUCKET

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
LATENCY_DISTRIBUTIONS: frozenset[str] = frozenset({"fixed", "uniform", "lognormal"})
#: A lognormal latency without `latency_max` is capped at this many times its median.
LOGNORMAL_DEFAULT_CAP = 10.0


def is_status_fault(kind: str) -> bool:
    """True for a fault given as an HTTP error status, e.g. "503"."""
    return kind.isdigit() and 400 <= int(kind) <= 599


@dataclass
class FakeServerOptions:
    """How the fake server behaves. Defaults: a well-behaved, instant, unauthenticated server.

    api_key: when set, `Authorization: Bearer <key>` or `api-key: <key>` is required (else 401).
    latency_distribution: how long an admitted request takes before its answer (asyncio sleep,
        after admission): "fixed" (`latency`), "uniform" in [`latency`, `latency_max`] (also what
        "fixed" becomes when `latency_max` is given), or "lognormal" with median `latency` and
        shape `latency_sigma`, capped at `latency_max` (default 10 x the median).
    latency_per_page: seconds added per page answered (a 50-page request takes longer).
    rps_limit: requests per second; 0 means no per-second limit.
    rate_limit_mode: "token-bucket" (burst = max(1, limit), lenient) or "sliding-window" (at
        most floor(rps_limit) admissions in any sliding 1 s window, strict).
    rpm_limit: sliding-window mode only: at most this many admissions in any sliding 60 s window.
    ratelimit_headers: send `x-ratelimit-{limit,remaining}-req-minute` on 200s and 429s; None
        means the mode's default (on for token-bucket, off for sliding-window).
    stuck_first / stuck_request / stuck_seconds: the first N admitted requests, or the k-th
        admitted one (1-based, since the last reset), take `stuck_seconds` more before answering
        (a stuck request, for testing that a client's other requests go on meanwhile).
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
    bad_annotations: annotations (document and bbox) that break the requested schema, to check
        that a client notices (docs/outputs.md).
    seed: seed of the random generators (faults, and latency apart), for reproducible runs.
    """

    api_key: str | None = None
    latency: float = 0.0
    latency_max: float | None = None
    latency_distribution: str = "fixed"
    latency_sigma: float = 0.5
    latency_per_page: float = 0.0
    rps_limit: float = 0.0
    rate_limit_mode: str = TOKEN_BUCKET
    rpm_limit: int | None = None
    ratelimit_headers: bool | None = None
    stuck_first: int = 0
    stuck_request: int | None = None
    stuck_seconds: float = 30.0
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
    bad_annotations: bool = False
    seed: int | None = None

    def __post_init__(self) -> None:
        self.faults = tuple(str(kind).strip() for kind in self.faults)
        if self.latency_distribution == "fixed" and self.latency_max is not None:
            self.latency_distribution = "uniform"  # the historical meaning of latency_max
        problems = _problems(self)
        if problems:
            raise ValueError("invalid fake server options: " + "; ".join(problems))

    @property
    def headers_enabled(self) -> bool:
        """Whether answers carry the x-ratelimit-*-req-minute headers."""
        if self.ratelimit_headers is not None:
            return self.ratelimit_headers
        return self.rate_limit_mode == TOKEN_BUCKET

    def is_stuck(self, admitted_number: int) -> bool:
        """Whether the admitted request number `admitted_number` (1-based) gets stuck."""
        return admitted_number <= self.stuck_first or admitted_number == self.stuck_request

    def __repr__(self) -> str:
        # The key must never reach a log line through a repr.
        fields = {k: v for k, v in vars(self).items() if k != "api_key"}
        key = "'***'" if self.api_key else "None"
        inner = ", ".join(f"{k}={v!r}" for k, v in fields.items())
        return f"FakeServerOptions(api_key={key}, {inner})"


# Lower bounds of the numeric options (None, where allowed, means "not set" and passes).
_MINIMUMS: dict[str, float] = {
    "latency": 0, "rps_limit": 0, "retry_after": 0, "fault_after": 0, "fault_limit": 0,
    "trickle_seconds": 0, "fail_auth_after": 0, "images_per_page": 0, "rpm_limit": 1,
    "stuck_first": 0, "stuck_request": 1, "stuck_seconds": 0, "latency_sigma": 0,
    "latency_per_page": 0,
}
_WHY_MINIMUM = {"stuck_request": " (admitted requests are numbered from 1)"}


def _choices() -> dict[str, set[object]]:
    return {"rate_limit_mode": set(RATE_LIMIT_MODES), "retry_after_style": set(RETRY_AFTER_STYLES),
            "fault_body": set(FAULT_BODIES), "auth_fail_status": set(AUTH_FAIL_STATUSES),
            "image_id_style": set(IMAGE_ID_STYLES),
            "latency_distribution": set(LATENCY_DISTRIBUTIONS)}


def _bound_problems(o: FakeServerOptions) -> list[str]:
    """Each numeric option against its lower bound, each named choice against its set."""
    problems: list[str] = []
    for name, minimum in _MINIMUMS.items():
        value = getattr(o, name)
        if value is not None and value < minimum:
            problems.append(f"{name} must be >= {minimum:g}{_WHY_MINIMUM.get(name, '')}")
    for name, allowed in _choices().items():
        if getattr(o, name) not in allowed:
            problems.append(f"{name} must be one of {sorted(allowed)}")
    return problems


def _problems(o: FakeServerOptions) -> list[str]:
    problems = _bound_problems(o)
    if o.latency_max is not None and o.latency_max < o.latency:
        problems.append("latency_max must be >= latency")
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
    if o.rpm_limit is not None and o.rate_limit_mode != SLIDING_WINDOW:
        problems.append("rpm_limit needs rate_limit_mode 'sliding-window'")
    if o.rate_limit_mode == SLIDING_WINDOW and 0 < o.rps_limit < 1:
        problems.append("sliding-window rps_limit must be 0 (none) or >= 1")
    if o.latency_distribution == "uniform" and o.latency_max is None:
        problems.append("a uniform latency needs latency_max")
    if o.latency_distribution == "lognormal" and o.latency <= 0:
        problems.append("a lognormal latency needs a median latency > 0")
    return problems
