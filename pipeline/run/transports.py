"""Which transport answers a run's chunks: batch jobs, several endpoints, or one endpoint."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from pipeline.backends.base import Backend
from pipeline.budget import Budget
from pipeline.config import Settings
from pipeline.transport.base import RunTransport
from pipeline.transport.endpoints import Lane, MultiEndpointTransport
from pipeline.transport.ratelimit import RateLimiter
from pipeline.transport.retry import EndpointHealth, RetryPolicy
from pipeline.transport.sync import SyncTransport


def build_backend(settings: Settings, limiter: RateLimiter | None = None) -> Backend:
    if settings.service.backend == "local":
        from pipeline.backends.local import LocalBackend

        return LocalBackend(settings.local, model=settings.service.model, outputs=settings.outputs)
    from pipeline.backends.mistral import MistralBackend

    return MistralBackend.from_settings(settings, rate_listener=limiter)


def _health(settings: Settings) -> EndpointHealth:
    svc = settings.service
    return EndpointHealth(svc.endpoint_deadline, throttle_deadline=svc.throttle_deadline)


def _policy(settings: Settings) -> RetryPolicy:
    svc = settings.service
    return RetryPolicy(svc.retry_attempts, svc.retry_initial, svc.retry_max)


def endpoint_lanes(settings: Settings) -> list[Lane]:
    """One lane per entry of `endpoints:`, each with its own limiter and backend."""
    lanes = []
    svc, limits = settings.service, settings.limits
    for n, endpoint in enumerate(svc.endpoints):
        own = dataclasses.replace(
            settings,
            service=svc.model_copy(update={
                "endpoint": endpoint.url,
                "api_key": endpoint.api_key or svc.api_key,
                "model": endpoint.model or svc.model,
                "auth_header": endpoint.auth_header or svc.auth_header,
                "endpoints": [],
            }),
            limits=limits.model_copy(update={"rps": endpoint.rps}),
        )
        limiter = RateLimiter(endpoint.rps, limits.max_in_flight)
        name = endpoint.name or f"{n + 1}:{urlsplit(endpoint.url).netloc}"
        lanes.append(Lane(name, build_backend(own, limiter), limiter, _health(settings)))
    return lanes


def build_transport(settings: Settings, *, run_id: str, batch_folder: Path, budget: Budget,
                    backend: Backend | None = None, log: Any = None) -> RunTransport:
    if settings.service.mode == "batch":  # docs/batch.md
        from pipeline.transport.batch.submit import BatchSubmitTransport

        return BatchSubmitTransport(settings, run_id, batch_folder, budget)
    if settings.service.endpoints and backend is None:
        return MultiEndpointTransport(endpoint_lanes(settings), _policy(settings), log=log)
    limiter = RateLimiter(settings.limits.rps, settings.limits.max_in_flight)
    return SyncTransport(backend or build_backend(settings, limiter), limiter, _policy(settings),
                         _health(settings))


class ClusterBackend(Protocol):
    """What the run reads of the local engine on a Dask cluster (pipeline/backends/local)."""

    cluster: str | None  # the scheduler's address

    @property
    def workers(self) -> int: ...  # Dask workers connected now

    @property
    def peak_workers(self) -> int: ...  # the most connected at once during the run

    @property
    def processes(self) -> int: ...  # their threads: the pages that can be read at once


def cluster_backend(transport: RunTransport | None) -> ClusterBackend | None:
    """The local engine's backend when it runs on a cluster, else None."""
    backend = getattr(transport, "backend", None)  # only the sync transport has one backend
    return backend if getattr(backend, "cluster", None) else None
