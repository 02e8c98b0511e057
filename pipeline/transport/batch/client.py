"""The Files and Batch jobs endpoints of Mistral's API, over aiohttp.

Same rules as the synchronous backend (`pipeline.backends.mistral`): `Authorization: Bearer` (or
`api-key`), redirects never followed (the key would go to another host), the key never logged.
Transient failures (429, 5xx, connection trouble) are retried with backoff; 401/403 stop the run;
any other refusal is a `FatalError` naming the call, as every further call would fail alike.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from pipeline.backends.mistral import auth_headers, error_detail, parse_retry_after
from pipeline.config.groups import ServiceSettings
from pipeline.errors import FatalError

RETRYABLE = {408, 409, 425, 429, 500, 502, 503, 504}
ATTEMPTS = 6
TERMINAL = frozenset({"SUCCESS", "FAILED", "TIMEOUT_EXCEEDED", "CANCELLED"})


class ResultsGone(Exception):
    """A job's output or error file can no longer be downloaded (404)."""


class _Transient(Exception):
    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def api_base(endpoint: str) -> str:
    """The service root: `https://api.mistral.ai` from any of its spellings (`.../v1`,
    `.../v1/ocr`)."""
    parts = urlsplit(endpoint)
    path = parts.path.rstrip("/")
    for suffix in ("/ocr", "/v1"):
        path = path.removesuffix(suffix)
    return f"{parts.scheme}://{parts.netloc}{path}"


class BatchClient:
    def __init__(self, service: ServiceSettings, retry_initial: float = 0.5,
                 retry_max: float = 30.0) -> None:
        self.service = service
        self.base = api_base(service.endpoint)
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self.bytes_sent = 0
        self._session: aiohttp.ClientSession | None = None


    def _open(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            s = self.service
            self._session = aiohttp.ClientSession(
                headers=auth_headers(self.service),
                connector=aiohttp.TCPConnector(limit=8, ssl=None if s.verify_tls else False),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=s.connect_timeout,
                                              sock_read=s.request_timeout),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()

    # ---- the calls ------------------------------------------------------------------------
    async def upload(self, path: Path, filename: str) -> dict[str, Any]:
        """`POST /v1/files` (purpose batch), the file streamed from disk."""
        def form() -> aiohttp.FormData:
            data = aiohttp.FormData()
            data.add_field("purpose", "batch")
            data.add_field("file", path.open("rb"), filename=filename,
                           content_type="application/jsonl")
            return data

        self.bytes_sent += path.stat().st_size
        return await self._json("POST", "/v1/files", "upload a batch file", data=form)

    async def create_job(self, file_id: str, model: str, metadata: dict[str, str],
                         timeout_hours: int) -> dict[str, Any]:
        body = {"input_files": [file_id], "endpoint": "/v1/ocr", "model": model,
                "metadata": metadata, "timeout_hours": timeout_hours}
        return await self._json("POST", "/v1/batch/jobs", "create a batch job", json_body=body)

    async def get_job(self, job_id: str) -> dict[str, Any]:
        return await self._json("GET", f"/v1/batch/jobs/{job_id}", "poll a batch job")

    async def cancel_job(self, job_id: str) -> dict[str, Any]:
        return await self._json("POST", f"/v1/batch/jobs/{job_id}/cancel", "cancel a batch job")

    async def list_jobs(self, metadata: dict[str, str]) -> list[dict[str, Any]]:
        """Every job whose metadata holds `metadata` (filtered here too: the listing's own filter
        is not trusted to be exact)."""
        found: list[dict[str, Any]] = []
        page = 0
        while True:
            # The SDK's encoding of an object query parameter (form style, exploded): one
            # parameter per key.
            params = {"page": str(page), "page_size": "100", **metadata}
            data = await self._json("GET", "/v1/batch/jobs", "list batch jobs", params=params)
            jobs = data.get("data") or []
            found += [j for j in jobs
                      if all((j.get("metadata") or {}).get(k) == v for k, v in metadata.items())]
            if len(jobs) < 100:
                return found
            page += 1

    async def download(self, file_id: str, dest: Path,
                       on_bytes: Callable[[int], None] | None = None) -> None:
        """`GET /v1/files/{id}/content` streamed into `dest`; `ResultsGone` on 404."""
        async def fetch() -> None:
            async with self._open().get(f"{self.base}/v1/files/{file_id}/content",
                                        allow_redirects=False) as resp:
                if resp.status == 404:
                    raise ResultsGone(f"file {file_id} is gone (HTTP 404)")
                await self._check(resp, "download a batch result file")
                with dest.open("wb") as fh:
                    async for part in resp.content.iter_chunked(1 << 16):
                        fh.write(part)
                        if on_bytes:
                            on_bytes(len(part))
        await self._retrying(fetch, "download a batch result file")

    # ---- plumbing --------------------------------------------------------------------------
    async def _json(self, method: str, path: str, what: str, *, json_body: Any = None,
                    params: dict[str, str] | None = None,
                    data: Callable[[], aiohttp.FormData] | None = None) -> dict[str, Any]:
        async def call() -> dict[str, Any]:
            async with self._open().request(
                method, f"{self.base}{path}", json=json_body, params=params,
                data=data() if data else None, allow_redirects=False,
            ) as resp:
                await self._check(resp, what)
                text = await resp.text()
            try:
                value = json.loads(text)
            except ValueError:
                raise _Transient(f"{what}: answer is not JSON") from None
            if not isinstance(value, dict):
                raise _Transient(f"{what}: answer is not a JSON object")
            return value
        return await self._retrying(call, what)

    async def _check(self, resp: aiohttp.ClientResponse, what: str) -> None:
        if resp.status < 300:
            return
        detail = error_detail(await resp.text())
        if resp.status in RETRYABLE:
            raise _Transient(f"{what}: HTTP {resp.status}: {detail}", parse_retry_after(resp.headers))
        if resp.status in (401, 403):
            raise FatalError(f"the Batch API refused the API key (HTTP {resp.status}: {detail})",
                             hint="check MISTRAL_API_KEY and that the key may use batch jobs")
        if 300 <= resp.status < 400:
            raise FatalError(f"{what}: HTTP {resp.status} redirect, not followed",
                             hint="set the endpoint to the final URL")
        raise FatalError(f"cannot {what}: HTTP {resp.status}: {detail}",
                         hint="batch mode needs Mistral's Files and Batch API at the endpoint")

    async def _retrying(self, call: Callable[[], Any], what: str) -> Any:
        delay = self.retry_initial
        for attempt in range(1, ATTEMPTS + 1):
            try:
                return await call()
            except _Transient as exc:
                error: str = str(exc)
                wait = exc.retry_after
            except (aiohttp.ClientError, ConnectionError, TimeoutError, OSError) as exc:
                if isinstance(exc, aiohttp.ClientConnectorCertificateError):
                    raise FatalError(f"the TLS certificate of {urlsplit(self.base).netloc} is"
                                     f" not trusted ({exc})") from None
                error, wait = f"{what}: {type(exc).__name__}: {exc}", None
            if attempt == ATTEMPTS:
                raise FatalError(f"cannot {what} after {ATTEMPTS} tries: {error}",
                                 hint="the run is resumable: nothing is lost, nothing paid twice")
            await asyncio.sleep(wait if wait is not None else random.uniform(0, delay))
            delay = min(self.retry_max, delay * 2)
        raise AssertionError("unreachable")
