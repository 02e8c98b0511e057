"""The fake server's knobs: one typed record, checked once when it is built."""

from __future__ import annotations

from dataclasses import dataclass

#: Fault kinds that are not an HTTP status code.
NAMED_FAULTS: frozenset[str] = frozenset({"reset", "malformed", "hang", "wrong_shape"})
IMAGE_ID_STYLES: frozenset[str] = frozenset({"normal", "hostile"})


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
    fault_rate / faults: probability of a fault, and the kinds drawn from ("500", "reset", ...).
    fail_auth_after: after N valid answers every request gets 401 (a key revoked mid-run).
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
    fault_rate: float = 0.0
    faults: tuple[str, ...] = ("500", "503", "reset", "malformed")
    fail_auth_after: int | None = None
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
    if o.fail_auth_after is not None and o.fail_auth_after < 0:
        problems.append("fail_auth_after must be >= 0")
    if o.images_per_page < 0:
        problems.append("images_per_page must be >= 0")
    if o.image_id_style not in IMAGE_ID_STYLES:
        problems.append(f"image_id_style must be one of {sorted(IMAGE_ID_STYLES)}")
    return problems
