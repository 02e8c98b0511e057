"""Error bodies in the shapes the real service uses, as plain data plus a status."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Reply:
    """An HTTP answer that is not a successful OCR response."""

    status: int
    body: Any  # JSON-serialisable, or str for a plain-text gateway answer
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def is_text(self) -> bool:
        return isinstance(self.body, str)


class Rejected(Exception):
    """Raised while reading a request: answer `reply` instead of OCR output."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(f"HTTP {reply.status}: {reply.body}")
        self.reply = reply


_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    408: "request_timeout",
    413: "request_too_large",
    429: "rate_limited",
    500: "internal_server_error",
    502: "bad_gateway",
    503: "service_unavailable",
    504: "gateway_timeout",
}


def error(status: int, message: str, *, headers: dict[str, str] | None = None) -> Reply:
    """Mistral's generic error body: `{"object": "error", "message", "type", "param", "code"}`."""
    body = {
        "object": "error",
        "message": message,
        "type": _ERROR_TYPES.get(status, "error"),
        "param": None,
        "code": str(status),
    }
    return Reply(status, body, dict(headers or {}))


def unauthorized(status: int = 401) -> Reply:
    """A refused key: 401 `Unauthorized`, or 403 `Forbidden` (a key not allowed any more)."""
    return Reply(status, {"detail": "Unauthorized" if status == 401 else "Forbidden"})


@dataclass(frozen=True)
class FieldError:
    """One entry of a FastAPI-style 422 `detail` list."""

    loc: tuple[str | int, ...]
    msg: str
    type: str

    def as_json(self) -> dict[str, Any]:
        return {"loc": list(self.loc), "msg": self.msg, "type": self.type}


def validation_failed(errors: list[FieldError]) -> Reply:
    return Reply(422, {"detail": [e.as_json() for e in errors]})


def bad_request(message: str) -> Rejected:
    return Rejected(error(400, message))
