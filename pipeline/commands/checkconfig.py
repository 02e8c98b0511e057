"""`ocr-pipeline check-config`: validate a config, show which env vars it needs (never their
values) and, with `--ping`, send one tiny one-page request to the configured endpoint."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import re
import time
from pathlib import Path
from typing import Any

import yaml
from pypdf import PdfWriter

from pipeline.config import BACKEND_DEFAULTS, Settings, load_settings
from pipeline.errors import ConfigError, ExitCode, PipelineError
from pipeline.logsetup import redact
from pipeline.models import Chunk

# Keys that mean nothing to the local engine (it sends nothing anywhere), and the reverse.
HOSTED_ONLY = ("endpoint", "api_key", "auth_header", "azure_api_version", "verify_tls",
               "connect_timeout", "request_timeout", "endpoint_deadline", "throttle_deadline",
               "extra_request", "price_per_1000_pages")
LOCAL_ONLY = ("local",)

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-[^}]*)?\}")


def referenced_variables(path: Path | None, backend: str) -> list[str]:
    names: list[str] = []
    if path is not None and path.exists():
        names = _VAR.findall(path.read_text(encoding="utf-8", errors="replace"))
    key_env = BACKEND_DEFAULTS.get(backend, {}).get("api_key_env")
    if key_env:
        names.append(key_env)
    return list(dict.fromkeys(names))


def tiny_pdf() -> bytes:
    writer = PdfWriter()
    writer.add_blank_page(width=144, height=144)
    buf = io.BytesIO()
    writer.write(buf)
    return buf.getvalue()


async def ping(settings: Settings) -> str:
    """One request with a blank one-page PDF; returns a line saying what came back."""
    from pipeline.backends.base import check_response
    from pipeline.run.transports import build_backend

    data = tiny_pdf()
    chunk = Chunk("check-config-ping.pdf", 0, 0, 1, "application/pdf", data,
                  hashlib.sha256(data).hexdigest())
    backend = build_backend(settings)
    started = time.monotonic()
    try:
        response = check_response(chunk, await backend.ocr(chunk))
    finally:
        await backend.close()
    return (f"ping ok: {settings.service.backend} answered one page in {time.monotonic() - started:.2f} s"
            f" (model {response.get('model', settings.service.model)})")


def effective_settings(settings: Settings) -> list[str]:
    """The settings that apply to this backend, as YAML (secrets redacted); keys left unset
    are named on one line instead of being shown as `null`."""
    skip = set(LOCAL_ONLY if settings.service.backend != "local" else HOSTED_ONLY)
    if settings.service.mode != "batch":
        skip.add("batch")
    groups = settings.redacted()
    flat: dict[str, Any] = {}
    for name in ("service", "limits", "run", "outputs"):
        flat.update(groups[name])
    flat["local"] = groups["local"]
    flat["batch"] = groups["batch"]
    shown: dict[str, Any] = {}
    unset: list[str] = []
    for key, value in flat.items():
        if key in skip:
            continue
        if value is None and key in ("workers", "rps", "max_in_flight"):
            shown[key] = "auto"
        elif value is None:
            unset.append(key)
        else:
            shown[key] = value
    text = yaml.safe_dump(shown, default_flow_style=False, sort_keys=False, allow_unicode=True)
    lines = ["effective settings:"] + [f"  {line}" for line in text.splitlines()]
    if unset:
        lines.append(f"  # not set: {', '.join(unset)}")
    return lines


def still_needed(settings: Settings) -> list[str]:
    """What `run` would still refuse with this config alone."""
    needs = []
    if settings.run.input is None:
        needs.append("an input (--input or `input:`)")
    elif not settings.run.input.exists():
        needs.append(f"an input that exists ({settings.run.input} is not found)")
    if settings.run.output is None:
        needs.append("an output folder (--output or `output:`)")
    return needs


def check_config(
    config: Path | None, overrides: dict[str, Any], *, do_ping: bool
) -> tuple[int, list[str]]:
    env = dict(os.environ)
    lines: list[str] = []
    try:
        settings = load_settings(config, overrides, env=env)
    except ConfigError as exc:
        backend = str(overrides.get("backend") or "")
        for name in referenced_variables(config, backend):
            lines.append(f"  env {name}: {'set' if env.get(name) else 'MISSING'}")
        return int(ExitCode.USAGE), [f"config error: {redact(str(exc))}", *lines]
    needs = still_needed(settings)
    verdict = ("valid; `run` still needs " + " and ".join(needs)) if needs \
        else "valid; ready for `run`"
    lines.append(f"config {config or '(defaults)'}: {verdict}")
    for name in referenced_variables(config, settings.service.backend):
        lines.append(f"  env {name}: {'set' if env.get(name) else 'MISSING'}")
    lines += effective_settings(settings)
    if not do_ping:
        return int(ExitCode.OK), lines
    try:
        lines.append(asyncio.run(ping(settings)))
    except PipelineError as exc:
        lines.append(f"ping failed: {redact(str(exc))}")
        return int(ExitCode.FATAL), lines
    return int(ExitCode.OK), lines
