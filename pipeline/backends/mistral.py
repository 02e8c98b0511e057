"""The Mistral OCR protocol over HTTP, for Mistral's platform and Azure AI Foundry deployments.

One pooled aiohttp session. Each call is a single attempt; `pipeline.transport.retry` decides what to do
with its errors. The decision is made on the status code, never on the body, as the body of an
error varies between the platform, Azure and the gateways in front of them.
"""

from __future__ import annotations

import email.utils
import json
import resource
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from pipeline import __version__, jsonio
from pipeline.backends.base import OCRResponse
from pipeline.config import Settings
from pipeline.config.groups import OutputSettings, ServiceSettings
from pipeline.errors import (
    Category,
    FatalError,
    PipelineError,
    RejectedError,
    RetryableError,
    TooLargeError,
)
from pipeline.models import Chunk
from pipeline.stages.encode import document_field
from pipeline.transport import on_wire
from pipeline.transport.ratelimit import IN_FLIGHT_CEILING, RateListener, rate_info_from_headers

RETRYABLE_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
FATAL_STATUS = {401, 403}
MAX_ANSWER_BYTES = 512 * 1024 * 1024  # an answer larger than this is a broken server


def ocr_url(service: ServiceSettings) -> str:
    """`{endpoint}/v1/ocr`, unless the endpoint already names the OCR route (Azure Foundry)."""
    parts = urlsplit(service.endpoint)
    path = parts.path.rstrip("/")
    if not path.endswith("/ocr"):
        path = path + "/v1/ocr"
    query = parts.query
    if service.azure_api_version and "api-version=" not in query:
        query = (query + "&" if query else "") + f"api-version={service.azure_api_version}"
    return urlunsplit((parts.scheme, parts.netloc, path, query, ""))


def auth_headers(service: ServiceSettings) -> dict[str, str]:
    """Accept, User-Agent and the key: `Authorization: Bearer` (Mistral), or Azure's `api-key`."""
    key = service.api_key or ""
    headers = {"Accept": "application/json", "User-Agent": f"ocr-pipeline/{__version__}"}
    if service.auth_header == "api-key":
        headers["api-key"] = key
    else:
        headers["Authorization"] = f"Bearer {key}"
    return headers


def parse_retry_after(headers: Any, now: float | None = None) -> float | None:
    """Seconds to wait from `retry-after-ms`, or `Retry-After` as seconds or an HTTP date."""
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    value = headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _short(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "…"


def error_detail(body: str) -> str:
    """A readable line from whatever error body the service or a gateway sent."""
    try:
        data = json.loads(body)
    except ValueError:
        return _short(body) or "(empty body)"
    if isinstance(data, dict):
        detail = data.get("message") or data.get("detail") or data.get("error") or data
        if isinstance(detail, list):
            detail = "; ".join(
                f"{'.'.join(str(x) for x in d.get('loc', []))}: {d.get('msg')}"
                if isinstance(d, dict) else str(d)
                for d in detail
            )
        return _short(str(detail))
    return _short(str(data))


def _on_wire_trace() -> aiohttp.TraceConfig:
    """Tell the rate limiter as a request's body is written (`pipeline.transport.on_wire`):
    aiohttp calls `on_request_chunk_sent` just before each write, and the listener counts only
    the first."""

    async def chunk_sent(_session: aiohttp.ClientSession, context: Any, _params: Any) -> None:
        listener = context.trace_request_ctx
        if listener is not None:
            listener()

    config = aiohttp.TraceConfig()
    config.on_request_chunk_sent.append(chunk_sent)
    return config


async def _read_capped(resp: aiohttp.ClientResponse, where: str) -> bytes:
    """The whole body, refusing one larger than MAX_ANSWER_BYTES (a broken server)."""
    parts: list[bytes] = []
    size = 0
    async for part in resp.content.iter_chunked(1 << 16):
        size += len(part)
        if size > MAX_ANSWER_BYTES:
            raise RetryableError(f"{where}: answer larger than {MAX_ANSWER_BYTES:,} bytes")
        parts.append(part)
    return b"".join(parts)


def connection_limit(max_in_flight: int | None) -> int:
    """Connections the pool may open: the limiter's in-flight ceiling, never below it, so the
    limiter alone decides how many requests are out."""
    return max_in_flight if max_in_flight else IN_FLIGHT_CEILING


_nofile_checked = False


def raise_open_file_limit(needed: int) -> None:
    """Raise the soft RLIMIT_NOFILE to the hard limit, once, when it is below `needed`.

    Each request in flight holds a socket; with a ceiling of 2,048 the common soft limit of
    1,024 would fail connections with EMFILE ("Too many open files") before the limiter's
    target is reached. The hard limit is the administrator's, so it is never exceeded.
    """
    global _nofile_checked
    if _nofile_checked:
        return
    _nofile_checked = True
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != resource.RLIM_INFINITY and soft < needed and (hard == resource.RLIM_INFINITY
                                                                  or hard > soft):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError):
        pass  # not permitted here: the limiter's gate still bounds the sockets


@dataclass(frozen=True)
class _Answer:
    status: int
    body: bytes
    location: str  # a redirect's target, reported (never followed)
    retry_after: float | None


class MistralBackend:
    """`POST /v1/ocr` with Bearer (or Azure's `api-key`) authentication.

    It sees only what it needs: the service (endpoint, key, model, timeouts), the output options
    that shape the request body, and the in-flight cap that sizes its connection pool.
    `rate_listener` (the endpoint's RateLimiter) hears every answer's rate headers as a
    `RateInfo`, 200 or not.
    """

    def __init__(self, service: ServiceSettings, outputs: OutputSettings, *,
                 max_in_flight: int | None = None,
                 rate_listener: RateListener | None = None) -> None:
        self.name = service.backend
        self.model = service.model
        self.service = service
        self.outputs = outputs
        self.max_in_flight = max_in_flight
        self.url = ocr_url(service)
        self._session: aiohttp.ClientSession | None = None
        self.bytes_sent = 0
        self.rate_listener = rate_listener

    @classmethod
    def from_settings(cls, settings: Settings,
                      rate_listener: RateListener | None = None) -> MistralBackend:
        return cls(settings.service, settings.outputs, max_in_flight=settings.limits.max_in_flight,
                   rate_listener=rate_listener)

    def _headers(self) -> dict[str, str]:
        return {"Content-Type": "application/json", **auth_headers(self.service)}

    def _session_for_loop(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            svc = self.service
            limit = connection_limit(self.max_in_flight)
            raise_open_file_limit(limit * 2)
            connector = aiohttp.TCPConnector(limit=limit, ssl=None if svc.verify_tls else False)
            timeout = aiohttp.ClientTimeout(
                total=svc.request_timeout, sock_connect=svc.connect_timeout, connect=None
            )
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=timeout, headers=self._headers(),
                trace_configs=[_on_wire_trace()],
            )
        return self._session

    def request_body(self, chunk: Chunk) -> dict[str, Any]:
        from pipeline.backends.request_options import request_options

        body: dict[str, Any] = {"model": self.model, "document": document_field(chunk)}
        if self.outputs.include_images:
            body["include_image_base64"] = True
        body.update(request_options(self.service, self.outputs))  # tables, header/footer, ...
        body.update(self.service.extra_request)
        return body

    async def ocr(self, chunk: Chunk) -> OCRResponse:
        payload = jsonio.request_body(self.request_body(chunk))
        self.bytes_sent += len(payload)
        where = f"{chunk.doc_rel} pages {chunk.first_page + 1}-{chunk.first_page + chunk.page_count}"
        answer = await self._post(payload, where)
        if answer.status == 200:
            try:
                return jsonio.parse(answer.body)
            except ValueError:
                raise RetryableError(f"{where}: service answered 200 with invalid JSON") from None
        text = answer.body.decode("utf-8", "replace")
        raise self._refusal(answer, error_detail(text), where)

    async def _post(self, payload: bytes, where: str) -> _Answer:
        """One POST; transport failures become the pipeline's errors. Every answer's rate
        headers go to the limiter, 200 or not."""
        session = self._session_for_loop()
        try:
            # No redirects: aiohttp would carry Azure's `api-key` header to whatever host a
            # redirect names.
            async with session.post(self.url, data=payload, allow_redirects=False,
                                    trace_request_ctx=on_wire.listener()) as resp:
                if (resp.content_length or 0) > MAX_ANSWER_BYTES:
                    raise RetryableError(f"{where}: answer of {resp.content_length:,} bytes refused")
                body = await _read_capped(resp, where)
                retry_after = parse_retry_after(resp.headers)
                if self.rate_listener is not None:
                    self.rate_listener.observe(rate_info_from_headers(resp.status, resp.headers,
                                                                      retry_after))
                return _Answer(resp.status, body, resp.headers.get("Location", ""), retry_after)
        except TimeoutError:
            raise RetryableError(
                f"{where}: no complete answer within {self.service.request_timeout:g} s",
                category=Category.TIMEOUT,
            ) from None
        except aiohttp.ClientConnectorCertificateError as exc:
            raise FatalError(
                f"the TLS certificate of {urlsplit(self.url).netloc} is not trusted ({exc})",
                hint="fix the endpoint's certificate or the CA bundle (SSL_CERT_FILE);"
                " verify_tls: false only for a test endpoint you control",
            ) from None
        except ValueError as exc:  # aiohttp refuses e.g. a header with a control character
            raise FatalError(f"the request to {self.url} cannot be built: {exc}",
                             hint="check the endpoint URL and the API key") from None
        except (aiohttp.ClientError, ConnectionError, OSError) as exc:
            raise RetryableError(
                f"{where}: connection to {urlsplit(self.url).netloc} failed:"
                f" {type(exc).__name__}: {exc}"
            ) from None

    def _refusal(self, answer: _Answer, detail: str, where: str) -> PipelineError:
        """The error for a status other than 200, decided on the status alone."""
        status = answer.status
        if 300 <= status < 400:
            return FatalError(
                f"the endpoint {self.url} answered HTTP {status} (redirect to"
                f" {answer.location or '?'})",
                hint="set the endpoint to the final URL; redirects are not followed, so the key"
                " is never sent to another host",
            )
        if status in FATAL_STATUS:
            return FatalError(
                f"the OCR service refused the API key (HTTP {status}: {detail})",
                hint="check MISTRAL_API_KEY / AZURE_API_KEY and that the key may use this model",
            )
        if status in RETRYABLE_STATUS:
            return RetryableError(
                f"{where}: HTTP {status}: {detail}",
                retry_after=answer.retry_after,
                status=status,
                category=Category.TIMEOUT if status in (408, 504) else Category.BACKEND,
            )
        if status == 413:
            return TooLargeError(
                f"{where}: the service refused the request as too large (HTTP 413: {detail})",
                hint="lower max_bytes_per_request (or max_pages_per_request) for this backend",
            )
        return RejectedError(
            f"{where}: the service rejected the document (HTTP {status}: {detail})", status=status
        )

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
