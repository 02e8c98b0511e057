"""Shared fixtures: a real fake Mistral server on 127.0.0.1, settings, pipeline runs."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from pipeline.config import Settings, load_settings
from pipeline.fakeserver import FakeServer, FakeServerOptions, start_fake_server
from pipeline.run.report import RunReport
from pipeline.run.runner import Run

REPO = Path(__file__).resolve().parent.parent
TEST_KEY = "sk-test-9f8e7d6c5b4a-DO-NOT-LEAK"


@asynccontextmanager
async def serve_app(app: web.Application) -> AsyncIterator[str]:
    """Serve an ad-hoc aiohttp app on 127.0.0.1 (a free port) for the block; yields its URL."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


@pytest.fixture
async def fake_server() -> AsyncIterator[Callable[..., Any]]:
    """Start fake servers with given options; all stopped at the end of the test."""
    servers: list[FakeServer] = []

    async def start(**options: Any) -> FakeServer:
        server = await start_fake_server(FakeServerOptions(**options))
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.stop()


def make_settings(
    input_dir: Path, output_dir: Path, endpoint: str, *, api_key: str = TEST_KEY, **overrides: Any
) -> Settings:
    values: dict[str, Any] = {
        "backend": "mistral",
        "endpoint": endpoint,
        "input": input_dir,
        "output": output_dir,
        "workers": 4,
        "rps": 0,
        "max_in_flight": 8,
        "retry_initial": 0.05,
        "retry_max": 0.5,
    }
    values.update(overrides)
    return load_settings(None, values, env={"MISTRAL_API_KEY": api_key})


async def run_pipeline(input_dir: Path, output_dir: Path, endpoint: str, **overrides: Any) -> RunReport:
    return await Run(make_settings(input_dir, output_dir, endpoint, **overrides)).execute()


@dataclass
class Proc:
    returncode: int
    stdout: str
    stderr: str
    seconds: float


def pipeline_env(api_key: str | None = TEST_KEY, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MISTRAL_API_KEY", "AZURE_API_KEY")}
    if api_key is not None:
        env["MISTRAL_API_KEY"] = api_key
    env.update(extra)
    return env


async def start_pipeline_process(args: list[str], env: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pipeline", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env, cwd=REPO,
    )


async def run_pipeline_process(args: list[str], env: dict[str, str], timeout: float = 120) -> Proc:
    loop = asyncio.get_running_loop()
    started = loop.time()
    proc = await start_pipeline_process(args, env)
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return Proc(proc.returncode, out.decode(), err.decode(), loop.time() - started)


def run_args(input_dir: Path, output_dir: Path, endpoint: str, *extra: str) -> list[str]:
    return ["run", "--backend", "mistral", "--endpoint", endpoint, "--input", str(input_dir),
            "--output", str(output_dir), *extra]


def load_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))
