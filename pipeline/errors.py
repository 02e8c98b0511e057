"""The one error taxonomy: exit codes, failure categories and the exceptions that carry them.

Every failure a user can meet is one of the classes below. Each carries a category (data, recorded
in the manifest and the report) and a message written for the operator, with a hint to act on.
"""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    OK = 0
    SOME_FAILED = 1
    USAGE = 2
    FATAL = 3
    LOCKED = 75
    INTERRUPTED = 130


class Category(enum.StrEnum):
    """Why a document failed. Stored as text in the manifest and the report."""

    INPUT = "input"  # unreadable, empty, corrupt, unsupported type
    ENCRYPTED = "encrypted"  # password-protected PDF we cannot open
    TOO_LARGE = "too_large"  # above a size, page or pixel limit
    REJECTED = "rejected"  # the service refused the document (400/404/413/422)
    BACKEND = "backend"  # the service failed after every retry (5xx, bad JSON, ...)
    TIMEOUT = "timeout"  # a request or the document ran out of time
    STORAGE = "storage"  # could not write the output (disk full, permissions)
    INTERNAL = "internal"  # a bug in the pipeline: the message says what to report


class PipelineError(Exception):
    """Base for all failures the pipeline reports to a user. A run-level failure carries the exit
    code the command ends with (`exit_code`); a document's failure is recorded, the run goes on."""

    category: Category = Category.INTERNAL
    exit_code: ExitCode = ExitCode.FATAL
    label: str = ""  # how the command line introduces the message ("config error: ")

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class DocumentError(PipelineError):
    """A failure that belongs to one document: record it, go on with the run."""

    def __init__(
        self, category: Category, message: str, *, hint: str | None = None
    ) -> None:
        super().__init__(message, hint=hint)
        self.category = category


class InputError(DocumentError):
    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(Category.INPUT, message, hint=hint)


class EncryptedError(DocumentError):
    def __init__(self, message: str = "PDF is encrypted", *, hint: str | None = None) -> None:
        super().__init__(
            Category.ENCRYPTED,
            message,
            hint=hint or "decrypt it first (e.g. `qpdf --decrypt in.pdf out.pdf`)",
        )


class TooLargeError(DocumentError):
    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(Category.TOO_LARGE, message, hint=hint)


class RejectedError(DocumentError):
    """The service refused this document (4xx other than auth and rate limits)."""

    def __init__(self, message: str, *, hint: str | None = None, status: int | None = None) -> None:
        super().__init__(Category.REJECTED, message, hint=hint)
        self.status = status


class RetryableError(PipelineError):
    """A transient failure: 408/429/5xx, connection trouble, a malformed reply. Retry it."""

    category = Category.BACKEND

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        status: int | None = None,
        category: Category = Category.BACKEND,
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.status = status
        self.category = category


class FatalError(PipelineError):
    """Every further request would fail (bad key, endpoint gone): stop the run, exit 3."""

    category = Category.BACKEND


class ConfigError(PipelineError):
    """Bad configuration or usage: exit 2 before any work starts."""

    exit_code = ExitCode.USAGE
    label = "config error: "


class LockedError(PipelineError):
    """Another run holds the output's lock: exit 75."""

    exit_code = ExitCode.LOCKED


class StopRequested(Exception):
    """Raised inside workers when a signal or budget asks the run to stop dispatching."""
