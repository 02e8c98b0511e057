"""Command line: `ocr-pipeline run | status | fake-server` (also `python -m pipeline`)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

from pipeline import __version__
from pipeline.config import BACKENDS, Settings, load_settings
from pipeline.errors import Category, ConfigError, ExitCode, PipelineError
from pipeline.logsetup import configure_logging, redact, register_secret

DEFAULT_CONFIG = Path("config/default.yaml")


def _run_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "run",
        help="OCR every new or changed document of a tree",
        description="Walk --input, OCR every new or changed document and write JSON + markdown"
        " into the mirrored --output tree. Flags override the config file, which overrides"
        " defaults. API keys come from the environment (MISTRAL_API_KEY, AZURE_API_KEY).",
    )
    p.add_argument("--config", type=Path,
                   help="YAML config file (default: config/default.yaml when present)")
    p.add_argument("--input", type=Path,
                   help="folder to digitize, or a single file (its output: <output>/NAME.json)")
    p.add_argument("--output", type=Path, help="folder for the mirrored output tree")
    p.add_argument("--backend", choices=BACKENDS)
    p.add_argument("--endpoint", help="service base URL, e.g. https://api.mistral.ai")
    p.add_argument("--model")
    p.add_argument("--workers", help="documents processed at once (a cap; default auto)")
    p.add_argument("--rps", help="requests per second for all workers: a hard cap in any 1-second"
                   " window, 0 for no limit, auto (the default for hosted backends) to learn it")
    p.add_argument("--max-in-flight", help="requests under way at once (a cap; default auto)")
    p.add_argument("--cluster", metavar="tcp://HOST:PORT",
                   help="local engine: read the pages on this Dask scheduler's workers (pip install"
                   " 'ocr-pipeline[cluster]'); config local.cluster")
    p.add_argument("--max-pages-per-request", type=int,
                   help="split PDFs into requests of at most this many pages")
    p.add_argument("--max-bytes-per-request", type=int,
                   help="split PDFs into requests of at most this many bytes")
    p.add_argument("--max-pages-per-document", type=int,
                   help="documents with more pages fail as too_large (default 5000)")
    p.add_argument("--allow-large-documents", action="store_true",
                   help="no cap on pages per document")
    p.add_argument("--document-timeout", type=float, help="seconds one document may take")
    p.add_argument("--mode", choices=["sync", "batch"],
                   help="sync: a request per chunk (default); batch: Mistral's Batch API at half"
                   " the price, resumable across runs (docs/batch.md)")
    p.add_argument("--no-wait", action="store_true",
                   help="batch: submit, collect what has finished, exit 0; a later run collects")
    budget = p.add_argument_group("budgets (when reached: stop dispatching, exit 3, resumable)")
    budget.add_argument("--max-pages", type=int, help="pages this run may send")
    budget.add_argument("--max-cost", type=float, help="US$ this run may spend")
    budget.add_argument("--max-runtime", type=float,
                        help="seconds before the run stops dispatching (end before the next cron)")
    p.add_argument("--metrics-file", type=Path,
                   help="Prometheus textfile (default <output>/.ocr-pipeline/metrics.prom)")
    p.add_argument("--progress", choices=["auto", "bar", "json", "off"],
                   help="bar on a terminal, JSON events otherwise (auto)")
    p.add_argument("--quiet", action="store_true", help="no progress, warnings and summary only")
    p.add_argument("--verbose", action="store_true", help="debug logs")
    p.add_argument("--dry-run", action="store_true", help="plan and estimate; call nothing")
    p.add_argument("--retry-failed", action="store_true",
                   help="try again the documents that failed in earlier runs")
    p.add_argument("--only-failed-category", action="append", metavar="CAT",
                   dest="retry_categories", choices=[c.value for c in Category],
                   help="retry only the earlier failures of this category (repeatable; implies"
                   f" --retry-failed): {', '.join(c.value for c in Category)}")
    p.add_argument("--force", action="store_true", help="redo every document, even unchanged")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])


def _status_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("status", help="what the output's manifest holds",
                       description="Counts by state, recent runs, failures with their reasons.")
    p.add_argument("--output", type=Path,
                   help="the run's output folder (default: the config's `output`)")
    p.add_argument("--config", type=Path,
                   help="YAML config whose `output` to read (default: config/default.yaml when"
                   " present)")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ocr-pipeline",
        description="Batch OCR of PDF and image trees into JSON + markdown.",
    )
    parser.add_argument("--version", action="version", version=f"ocr-pipeline {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _run_parser(sub)
    _status_parser(sub)
    check = sub.add_parser(
        "check-config", help="validate a config; --ping sends one tiny request",
        description="Validate a config file, show the environment variables it needs (set or"
        " missing, never their values) and the effective settings; with --ping, send one"
        " one-page request to the endpoint. Exit 0 good, 2 config error, 3 ping failed.")
    check.add_argument("--config", type=Path, help="YAML config file")
    check.add_argument("--backend", choices=BACKENDS)
    check.add_argument("--endpoint")
    check.add_argument("--model")
    check.add_argument("--ping", action="store_true", help="send one tiny request")
    sub.add_parser("fake-server", help="a fake Mistral OCR endpoint on loopback (see --help)",
                   add_help=False)
    return parser


def _subparser(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser:
    for action in parser._subparsers._group_actions if parser._subparsers else []:
        if isinstance(action, argparse._SubParsersAction) and command in action.choices:
            return action.choices[command]
    return parser


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    keys = ("input", "output", "backend", "endpoint", "model", "workers", "rps",
            "max_in_flight", "log_level", "retry_categories", "max_pages_per_request",
            "max_bytes_per_request", "max_pages_per_document", "document_timeout", "max_pages",
            "max_cost", "max_runtime", "metrics_file", "progress", "mode")
    out = {k: getattr(args, k) for k in keys if getattr(args, k, None) is not None}
    for flag in ("dry_run", "retry_failed", "force", "allow_large_documents"):
        if getattr(args, flag, False):
            out[flag] = True
    if getattr(args, "cluster", None):
        out["local"] = {"cluster": args.cluster}
    if getattr(args, "no_wait", False):
        out["batch"] = {"wait": False}
    if out.get("retry_categories"):
        out["retry_failed"] = True  # naming the categories to retry is asking for a retry
    if getattr(args, "quiet", False):
        out["progress"] = "off"
        out.setdefault("log_level", "warning")
    if getattr(args, "verbose", False):
        out["log_level"] = "debug"
    return out


def _check_input(settings: Settings) -> None:
    if settings.run.input is None or settings.run.output is None:
        raise ConfigError("both an input and an output folder are needed (--input, --output)")
    if not settings.run.input.exists():
        raise ConfigError(f"input not found: {settings.run.input}")
    if not (settings.run.input.is_dir() or settings.run.input.is_file()):
        raise ConfigError(f"input is neither a folder nor a regular file: {settings.run.input}")


def cmd_run(args: argparse.Namespace) -> int:
    from pipeline.run.progress import BarTerminal, resolve_mode

    config = args.config
    if config is None and DEFAULT_CONFIG.exists() and args.backend is None:
        config = DEFAULT_CONFIG
    settings: Settings = load_settings(config, _overrides(args))
    register_secret(settings.service.api_key)
    for password in settings.run.pdf_passwords:
        register_secret(password)
    _check_input(settings)
    stderr = sys.stderr
    mode = resolve_mode(settings.run.progress)
    if mode == "bar":
        # Log lines and the bar share the terminal: the bar stays below the lines.
        sys.stderr = BarTerminal(stderr)
    try:
        configure_logging(settings.run.log_level)
        return _execute(settings)
    finally:
        sys.stderr = stderr


def _execute(settings: Settings) -> int:
    from pipeline.malloc_arenas import limit_malloc_arenas
    from pipeline.run.runner import Run

    limit_malloc_arenas()  # before the run's threads allocate (pipeline/malloc_arenas.py)
    run = Run(settings)
    report = asyncio.run(run.execute())
    for line in report.summary_lines():
        print(redact(line))
    sys.stdout.flush()
    if run.has_stuck_threads():
        # A split abandoned after its document timed out is still spinning in a thread that
        # cannot be killed; everything is recorded, so do not wait for it (and hold the lock).
        sys.stderr.flush()
        os._exit(report.exit_code)
    return report.exit_code


def _status_output(args: argparse.Namespace) -> Path:
    """--output, else the `output` of --config (or of config/default.yaml when present)."""
    from pipeline.config import interpolate, load_yaml

    if args.output is not None:
        return Path(args.output)
    config = args.config or (DEFAULT_CONFIG if DEFAULT_CONFIG.exists() else None)
    if config is None:
        raise ConfigError("which output? give --output DIR, or --config FILE with an `output` key")
    data = interpolate(load_yaml(config), dict(os.environ), [])
    if not data.get("output"):
        raise ConfigError(f"{config} has no `output` key: give --output DIR")
    return Path(str(data["output"])).expanduser()


def cmd_status(args: argparse.Namespace) -> int:
    from pipeline.commands.status import render_status, status

    data = status(_status_output(args))
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    print("\n".join(render_status(data)))
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    from pipeline.commands.checkconfig import check_config

    overrides = {k: getattr(args, k) for k in ("backend", "endpoint", "model")
                 if getattr(args, k) is not None}
    code, lines = check_config(args.config, overrides, do_ping=args.ping)
    print("\n".join(lines))
    return code


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "fake-server":
        from pipeline.fakeserver import main as fake_main

        return fake_main(argv[1:])
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        # Said with the verb's usage (argparse would show the top-level one).
        _subparser(parser, args.command).error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        if args.command == "run":
            return cmd_run(args)
        if args.command == "status":
            return cmd_status(args)
        if args.command == "check-config":
            return cmd_check_config(args)
    except PipelineError as exc:  # each error class carries its exit code (pipeline/errors.py)
        print(f"ocr-pipeline: {exc.label}{redact(str(exc))}", file=sys.stderr)
        return int(exc.exit_code)
    except KeyboardInterrupt:
        return int(ExitCode.INTERRUPTED)
    parser.error(f"unknown command {args.command}")
    return int(ExitCode.USAGE)
