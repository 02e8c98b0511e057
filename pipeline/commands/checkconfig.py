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

from pypdf import PdfWriter

from pipeline.config import BACKEND_DEFAULTS, Settings, load_settings
from pipeline.errors import ConfigError, ExitCode, PipelineError
from pipeline.logsetup import redact
from pipeline.models import Chunk

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
    from pipeline.run.runner import build_backend
    from pipeline.stages.merge import check_response

    data = tiny_pdf()
    chunk = Chunk("check-config-ping.pdf", 0, 0, 1, "application/pdf", data,
                  hashlib.sha256(data).hexdigest())
    backend = build_backend(settings)
    started = time.monotonic()
    try:
        response = check_response(chunk, await backend.ocr(chunk))
    finally:
        await backend.close()
    return (f"ping ok: {settings.backend} answered one page in {time.monotonic() - started:.2f} s"
            f" (model {response.get('model', settings.model)})")


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
    lines.append(f"config {config or '(defaults)'}: valid")
    for name in referenced_variables(config, settings.backend):
        lines.append(f"  env {name}: {'set' if env.get(name) else 'MISSING'}")
    for key, value in settings.redacted().items():
        if key in ("dry_run", "retry_failed", "force", "retry_categories"):
            continue
        lines.append(f"  {key}: {value}")
    if not do_ping:
        return int(ExitCode.OK), lines
    try:
        lines.append(asyncio.run(ping(settings)))
    except PipelineError as exc:
        lines.append(f"ping failed: {redact(str(exc))}")
        return int(ExitCode.FATAL), lines
    return int(ExitCode.OK), lines
