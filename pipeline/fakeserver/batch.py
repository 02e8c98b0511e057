"""Batch jobs on the fake server, as in Mistral's published schema (CreateBatchJobRequest,
BatchJob, ListBatchJobsResponse): `POST/GET /v1/batch/jobs`, `GET /v1/batch/jobs/{id}`,
`POST /v1/batch/jobs/{id}/cancel`, with the Files API of `pipeline.fakeserver.files`.

A job runs in the server's event loop: QUEUED for `queue_seconds`, then RUNNING at `speed`
requests per second; each line's body is validated and answered like a `POST /v1/ocr`, its
output options included (tables, header/footer, confidence, blocks, annotations: `rich.enrich`),
and counted in the server's `ok_by_document` (per document sha256) and here per custom_id, into
an output file; refused lines go to an error file. `BatchBehaviour` (Python, or `POST /_batch`)
sets the speed and the faults: lines that fail, jobs that end FAILED or TIMEOUT_EXCEEDED,
results that are gone by the time they are downloaded, jobs held in the queue.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from pipeline.fakeserver import files
from pipeline.fakeserver.answers import ocr_response
from pipeline.fakeserver.documents import DocumentError
from pipeline.fakeserver.replies import Rejected
from pipeline.fakeserver.validation import parse_request

ENDPOINTS = ("/v1/chat/completions", "/v1/embeddings", "/v1/fim/completions", "/v1/moderations",
             "/v1/chat/moderations", "/v1/ocr", "/v1/classifications",
             "/v1/chat/classifications", "/v1/conversations", "/v1/audio/transcriptions")
STATUSES = ("QUEUED", "RUNNING", "SUCCESS", "FAILED", "TIMEOUT_EXCEEDED",
            "CANCELLATION_REQUESTED", "CANCELLED")
TERMINAL = frozenset({"SUCCESS", "FAILED", "TIMEOUT_EXCEEDED", "CANCELLED"})
LIST_PARAMS = frozenset({"page", "page_size", "model", "agent_id", "metadata", "created_after",
                         "created_by_me", "status", "order_by"})


@dataclass
class BatchBehaviour:
    """How the fake's batch jobs behave (all changeable while it runs)."""

    speed: float = float(os.environ.get("OCR_FAKE_BATCH_SPEED", "500"))  # requests per second
    queue_seconds: float = 0.05  # time QUEUED before RUNNING
    hold: bool = False  # jobs stay QUEUED until this is false again
    fail_custom_ids: list[str] = field(default_factory=list)  # substrings: those lines fail
    fail_status: int = 422  # the status of a failed line
    outcome: str = "success"  # success | failed | timeout (after half the lines)
    results_gone: bool = False  # output/error files answer 404 once the job is over


@dataclass
class Job:
    id: str
    input_files: list[str]
    endpoint: str
    model: str | None
    metadata: dict[str, str] | None
    timeout_hours: int
    created_at: int = field(default_factory=lambda: int(time.time()))
    status: str = "QUEUED"
    total_requests: int = 0
    completed_requests: int = 0
    succeeded_requests: int = 0
    failed_requests: int = 0
    output_file: str | None = None
    error_file: str | None = None
    errors: list[dict[str, Any]] = field(default_factory=list)
    started_at: int | None = None
    completed_at: int | None = None
    created_seq: int = 0

    def schema(self) -> dict[str, Any]:
        return {
            "id": self.id, "object": "batch", "input_files": self.input_files,
            "metadata": self.metadata, "endpoint": self.endpoint, "model": self.model,
            "agent_id": None, "output_file": self.output_file, "error_file": self.error_file,
            "errors": self.errors, "outputs": None, "status": self.status,
            "created_at": self.created_at, "total_requests": self.total_requests,
            "completed_requests": self.completed_requests,
            "succeeded_requests": self.succeeded_requests,
            "failed_requests": self.failed_requests, "started_at": self.started_at,
            "completed_at": self.completed_at,
        }


@dataclass
class BatchServer:
    """Files, jobs and counters of one fake server."""

    stats: Any  # the server's Stats: batch answers count in ok_by_document like sync ones
    options: Any
    behaviour: BatchBehaviour = field(default_factory=BatchBehaviour)
    store: files.FileStore = field(default_factory=files.FileStore)
    jobs: dict[str, Job] = field(default_factory=dict)
    by_custom_id: dict[str, int] = field(default_factory=dict)  # answered lines per custom_id
    jobs_created: int = 0
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def to_dict(self) -> dict[str, Any]:
        return {"jobs_created": self.jobs_created, "uploads": self.store.uploads,
                "answered_twice": sum(1 for n in self.by_custom_id.values() if n > 1),
                "answered": sum(self.by_custom_id.values()),
                "statuses": {j.id: j.status for j in self.jobs.values()},
                "behaviour": dataclasses.asdict(self.behaviour)}


BATCH_KEY = web.AppKey("fakeserver_batch", BatchServer)


def add_batch_routes(app: web.Application, stats: Any, options: Any) -> BatchServer:
    server = BatchServer(stats, options)
    app[BATCH_KEY] = server
    r = app.router
    r.add_post("/v1/files", _guard(lambda q, s: files.upload(q, s.store)))
    r.add_get("/v1/files", _guard(lambda q, s: files.listing(q, s.store)))
    r.add_get("/v1/files/{file_id}", _guard(lambda q, s: files.retrieve(q, s.store)))
    r.add_delete("/v1/files/{file_id}", _guard(lambda q, s: files.delete(q, s.store)))
    r.add_get("/v1/files/{file_id}/content", _guard(lambda q, s: files.content(q, s.store)))
    r.add_post("/v1/batch/jobs", _guard(create_job))
    r.add_get("/v1/batch/jobs", _guard(list_jobs))
    r.add_get("/v1/batch/jobs/{job_id}", _guard(get_job))
    r.add_post("/v1/batch/jobs/{job_id}/cancel", _guard(cancel_job))
    r.add_post("/_batch", configure)
    r.add_get("/_batch", batch_stats)
    app.on_cleanup.append(_stop_jobs)
    return server


def batch_of(fake: Any) -> BatchServer:
    """The batch side of a running `FakeServer` (for tests and benchmarks)."""
    return fake._runner.app[BATCH_KEY]


async def batch_stats(request: web.Request) -> web.Response:
    return web.json_response(request.app[BATCH_KEY].to_dict())


async def _stop_jobs(app: web.Application) -> None:
    for task in list(app[BATCH_KEY].tasks):
        task.cancel()


def _guard(handler: Any) -> Any:
    async def guarded(request: web.Request) -> web.StreamResponse:
        from pipeline.fakeserver.app import _authorized

        server = request.app[BATCH_KEY]
        if not _authorized(request, server.options.api_key):
            return web.json_response({"message": "Unauthorized", "request_id": "fake"},
                                     status=401)
        return await handler(request, server)
    return guarded


async def configure(request: web.Request) -> web.Response:
    server = request.app[BATCH_KEY]
    changes = await request.json()
    for key, value in changes.items():
        if not hasattr(server.behaviour, key):
            return files.invalid(f"unknown batch behaviour {key!r}", 400)
        setattr(server.behaviour, key, value)
    return web.json_response(server.to_dict())


def _check_create(payload: Any, server: BatchServer) -> str | None:
    if not isinstance(payload, dict):
        return "body must be a JSON object"
    extra = set(payload) - {"input_files", "requests", "endpoint", "model", "agent_id",
                            "metadata", "timeout_hours"}
    if extra:
        return f"Extra inputs are not permitted: {', '.join(sorted(extra))}"
    if payload.get("endpoint") not in ENDPOINTS:
        return "endpoint: Input should be one of " + ", ".join(ENDPOINTS)
    inputs = payload.get("input_files")
    if not isinstance(inputs, list) or not inputs:
        return "input_files: a list of file ids is required (inline requests are not faked)"
    for file_id in inputs:
        stored = server.store.get(str(file_id))
        if stored is None or stored.purpose != "batch":
            return f"input file {file_id} not found or not a batch file"
    meta = payload.get("metadata")
    if meta is not None:
        if not isinstance(meta, dict):
            return "metadata must be an object"
        for k, v in meta.items():
            if not 1 <= len(k) <= 32 or not isinstance(v, str) or not 1 <= len(v) <= 512:
                return f"metadata {k!r}: keys 1-32 characters, values strings of 1-512"
    hours = payload.get("timeout_hours", 24)
    if not isinstance(hours, int) or not 1 <= hours <= 168:
        return "timeout_hours must be an integer between 1 and 168"
    return None


async def create_job(request: web.Request, server: BatchServer) -> web.Response:
    try:
        payload = await request.json()
    except ValueError:
        return files.invalid("body is not valid JSON", 400)
    problem = _check_create(payload, server)
    if problem:
        return files.invalid(problem)
    server.jobs_created += 1
    job = Job(str(uuid.uuid4()), [str(f) for f in payload["input_files"]], payload["endpoint"],
              payload.get("model"), payload.get("metadata"), payload.get("timeout_hours", 24),
              created_seq=server.jobs_created)
    job.total_requests = sum(_count_lines(server.store.files[f].data) for f in job.input_files)
    server.jobs[job.id] = job
    task = asyncio.get_running_loop().create_task(_process(server, job))
    server.tasks.add(task)
    task.add_done_callback(server.tasks.discard)
    return web.json_response(job.schema())


async def get_job(request: web.Request, server: BatchServer) -> web.Response:
    job = server.jobs.get(request.match_info["job_id"])
    return web.json_response(job.schema()) if job else files.not_found("batch job")


async def cancel_job(request: web.Request, server: BatchServer) -> web.Response:
    job = server.jobs.get(request.match_info["job_id"])
    if job is None:
        return files.not_found("batch job")
    if job.status not in TERMINAL:
        job.status = "CANCELLATION_REQUESTED"
    return web.json_response(job.schema())


async def list_jobs(request: web.Request, server: BatchServer) -> web.Response:
    q = request.query
    wanted: dict[str, Any] = {}
    if "metadata" in q:  # a JSON object
        try:
            wanted = json.loads(q["metadata"])
        except ValueError:
            return files.invalid("metadata must be a JSON object")
    # The SDK sends the object exploded, form style: one query parameter per key.
    wanted.update({k: v for k, v in q.items() if k not in LIST_PARAMS})
    statuses = set(q.getall("status", []))
    chosen = [
        j for j in server.jobs.values()
        if all((j.metadata or {}).get(k) == v for k, v in wanted.items())
        and (not statuses or j.status in statuses)
        and ("model" not in q or j.model == q["model"])
        and ("created_after" not in q or j.created_at >= _epoch(q["created_after"]))
    ]
    chosen.sort(key=lambda j: j.created_seq, reverse=q.get("order_by", "-created") == "-created")
    page, size = int(q.get("page", 0)), int(q.get("page_size", 100))
    return web.json_response({"data": [j.schema() for j in chosen[page * size:(page + 1) * size]],
                              "object": "list", "total": len(chosen)})


def _epoch(text: str) -> float:
    from datetime import datetime

    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


def _count_lines(data: bytes) -> int:
    return sum(1 for line in data.splitlines() if line.strip())


# ---- running a job --------------------------------------------------------------------------
async def _process(server: BatchServer, job: Job) -> None:
    b = server.behaviour
    await asyncio.sleep(b.queue_seconds)
    while server.behaviour.hold and job.status == "QUEUED":
        await asyncio.sleep(0.02)
    if job.status == "CANCELLATION_REQUESTED":
        return _end(server, job, "CANCELLED", [], [])
    if server.behaviour.outcome == "failed":
        job.errors = [{"message": "the batch job failed (fake server: outcome=failed)",
                       "count": 1}]
        return _end(server, job, "FAILED", [], [])
    job.status, job.started_at = "RUNNING", int(time.time())
    outputs: list[bytes] = []
    errors: list[bytes] = []
    lines = [line for f in job.input_files
             for line in server.store.files[f].data.splitlines() if line.strip()]
    stop_after = len(lines) // 2 if server.behaviour.outcome == "timeout" else len(lines)
    for n, raw in enumerate(lines):
        if job.status == "CANCELLATION_REQUESTED":
            return _end(server, job, "CANCELLED", outputs, errors)
        if n >= stop_after:
            return _end(server, job, "TIMEOUT_EXCEEDED", outputs, errors)
        await asyncio.sleep(1.0 / max(server.behaviour.speed, 1e-6))
        ok, line = await _answer_line(server, job, raw)
        (outputs if ok else errors).append(line)
        job.completed_requests += 1
        if ok:
            job.succeeded_requests += 1
        else:
            job.failed_requests += 1
    return _end(server, job, "SUCCESS", outputs, errors)


def _end(server: BatchServer, job: Job, status: str, outputs: list[bytes], errors: list[bytes]
         ) -> None:
    if outputs:
        stored = server.store.add(f"{job.id}.output.jsonl", "batch", b"".join(outputs),
                                  "batch_result", "mistral")
        stored.gone = server.behaviour.results_gone
        job.output_file = stored.id
    if errors:
        stored = server.store.add(f"{job.id}.error.jsonl", "batch", b"".join(errors),
                                  "batch_error", "mistral")
        stored.gone = server.behaviour.results_gone
        job.error_file = stored.id
    job.status, job.completed_at = status, int(time.time())


async def _answer_line(server: BatchServer, job: Job, raw: bytes) -> tuple[bool, bytes]:
    """One request line, answered like `POST /v1/ocr` would: (succeeded, the result line)."""
    try:
        line = json.loads(raw)
        custom_id, body = line.get("custom_id"), line["body"]
        if not isinstance(body, dict):
            raise ValueError("body must be an object")
    except (ValueError, KeyError, AttributeError) as exc:
        return False, _result(None, 400, {"message": f"invalid request line: {exc}"}, True)
    if any(s in str(custom_id) for s in server.behaviour.fail_custom_ids):
        status = server.behaviour.fail_status
        return False, _result(custom_id, status, {"message": f"fake failure (HTTP {status})"}, True)
    request = {**body, "model": body.get("model") or job.model or "mistral-ocr-latest"}
    try:
        call = await asyncio.to_thread(parse_request, json.dumps(request).encode())
        from pipeline.fakeserver.app import _pages

        pages = await _pages(call, server.options.cheap)
    except Rejected as exc:
        return False, _result(custom_id, exc.reply.status, exc.reply.body, True)
    except DocumentError as exc:
        return False, _result(custom_id, 400, {"message": str(exc)}, True)
    answer = ocr_response(pages, model=call.model + server.options.model_suffix,
                          doc_size=len(call.data), images_per_page=server.options.images_per_page,
                          image_id_style=server.options.image_id_style,
                          include_image_base64=call.include_image_base64,
                          image_limit=call.image_limit,
                          rich=dataclasses.replace(call.rich,
                                                   bad_annotations=server.options.bad_annotations))
    server.stats.count_ok(call.sha256, len(pages))
    server.by_custom_id[str(custom_id)] = server.by_custom_id.get(str(custom_id), 0) + 1
    return True, _result(custom_id, 200, answer, False)


def _result(custom_id: Any, status: int, body: Any, failed: bool) -> bytes:
    line = {"id": f"batchreq-{uuid.uuid4().hex[:12]}", "custom_id": custom_id,
            "response": {"status_code": status, "body": body},
            "error": {"message": (body or {}).get("message", "failed") if isinstance(body, dict)
                      else str(body), "code": str(status)} if failed else None}
    return (json.dumps(line) + "\n").encode("utf-8")
