"""Configuration: YAML file, `${VAR}` interpolation, flags over file over defaults, validation.

Validation names the bad key and the file it came from. Secrets are resolved from the environment
and kept only in memory; `Settings.redacted()` is what may be shown to anyone.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipeline.errors import ConfigError
from pipeline.logsetup import register_secret

BACKENDS = ("local", "mistral", "azure")
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")

# Per-backend defaults: the real API's limits (50 MB / 1,000 pages per request on Mistral;
# some Azure deployments are reported at 30 MB / 30 pages). Chunks stay well below both so a
# crash or a retry never costs more than one chunk's worth of pages.
BACKEND_DEFAULTS: dict[str, dict[str, Any]] = {
    "mistral": {
        "endpoint": "https://api.mistral.ai",
        "model": "mistral-ocr-latest",
        "max_pages_per_request": 50,
        "max_bytes_per_request": 45_000_000,
        "api_key_env": "MISTRAL_API_KEY",
        "rps": None,  # auto: learned from rate headers and 429s
    },
    "azure": {
        "endpoint": "",
        "model": "mistral-document-ai-2512",
        "max_pages_per_request": 30,
        "max_bytes_per_request": 25_000_000,
        "api_key_env": "AZURE_API_KEY",
        "rps": None,
    },
    "local": {
        "endpoint": "",
        "model": "local-tesseract",
        "max_pages_per_request": 10,
        "max_bytes_per_request": 200_000_000,
        "api_key_env": "",
        "rps": 0.0,  # no rate limit: the engine's processes are the limit
    },
}
# Keys that take "auto" (sized by the run itself): stored as None.
AUTO_KEYS = frozenset({"rps", "workers", "max_in_flight"})


@dataclass
class LocalSettings:
    """Settings of the embedded offline engine."""

    language: str = "eng"
    dpi: int = 300
    force_ocr: bool = False  # OCR every page even when it has a usable text layer
    processes: int = 0  # 0 = one per core
    max_pixels: int = 200_000_000  # a page above this many pixels is refused as too_large
    tessdata_path: str | None = None


@dataclass
class Settings:
    backend: str = "local"
    input: Path | None = None
    output: Path | None = None
    endpoint: str = ""
    model: str = ""
    api_key: str | None = field(default=None, repr=False)
    auth_header: str = "bearer"  # bearer | api-key (some Azure deployments)
    azure_api_version: str | None = None
    # Throughput: None ("auto") is sized by the run; a number is a hard cap.
    workers: int | None = None  # documents open at once
    rps: float | None = None  # requests per second for all workers together; 0 = unlimited
    max_in_flight: int | None = None  # requests under way at once
    connect_timeout: float = 10.0
    request_timeout: float = 300.0
    document_timeout: float = 3600.0
    retry_attempts: int = 6
    retry_initial: float = 1.0
    retry_max: float = 60.0
    endpoint_deadline: float = 600.0  # a service down longer than this aborts the run (exit 3)
    throttle_deadline: float = 3600.0  # nothing but 429s for this long (quota gone?): exit 3
    max_pages_per_request: int = 0
    max_bytes_per_request: int = 0
    include: list[str] = field(default_factory=lambda: ["**/*"])
    exclude: list[str] = field(default_factory=list)
    follow_symlinks: bool = False
    include_images: bool = True
    extra_request: dict[str, Any] = field(default_factory=dict)  # e.g. table_format
    pdf_passwords: list[str] = field(default_factory=list, repr=False)
    price_per_1000_pages: float | None = None  # default: the model's published price
    max_document_bytes: int = 2_000_000_000  # larger files fail as too_large (read into memory)
    max_pages_per_document: int = 5000  # larger documents fail as too_large ...
    allow_large_documents: bool = False  # ... unless allowed
    metrics_file: Path | None = None  # default <out>/.ocr-pipeline/metrics.prom
    progress: str = "auto"  # auto (bar on a terminal, JSON events otherwise) | bar | json | off
    progress_interval: float = 10.0  # seconds between JSON progress events and metrics writes
    shutdown_grace: float = 30.0
    verify_tls: bool = True
    local: LocalSettings = field(default_factory=LocalSettings)
    # Command-line-only switches
    dry_run: bool = False
    retry_failed: bool = False
    retry_categories: list[str] = field(default_factory=list)
    force: bool = False
    max_pages: int | None = None  # budgets: stop dispatching when reached, exit 3
    max_cost: float | None = None
    max_runtime: float | None = None
    log_level: str = "info"

    def redacted(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        if data.get("api_key"):
            data["api_key"] = "***"
        if data.get("pdf_passwords"):
            data["pdf_passwords"] = ["***"] * len(data["pdf_passwords"])
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in data.items()}


_FIELDS = {f.name: f for f in dataclasses.fields(Settings)}
_LOCAL_FIELDS = {f.name: f for f in dataclasses.fields(LocalSettings)}
_CLI_ONLY = {"dry_run", "retry_failed", "retry_categories", "force"}


def interpolate(value: Any, env: dict[str, str], missing: list[str]) -> Any:
    """Replace `${VAR}` and `${VAR:-default}` in every string of a YAML tree."""
    if isinstance(value, str):

        def sub(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            missing.append(name)
            return ""

        return _VAR.sub(sub, value)
    if isinstance(value, list):
        return [interpolate(v, env, missing) for v in value]
    if isinstance(value, dict):
        return {k: interpolate(v, env, missing) for k, v in value.items()}
    return value


def _coerce(name: str, value: Any, ftype: Any, where: str) -> Any:
    type_name = ftype if isinstance(ftype, str) else getattr(ftype, "__name__", str(ftype))
    try:
        if value is None:
            return None
        if name in AUTO_KEYS and isinstance(value, str) and value.strip().lower() == "auto":
            return None
        if "bool" in type_name:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on"):
                return True
            if isinstance(value, str) and value.lower() in ("false", "no", "0", "off", ""):
                return False
            raise ValueError("expected true or false")
        if type_name.startswith("int"):
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError("expected a whole number")
            if isinstance(value, str) and not value.strip().lstrip("+-").isdigit():
                raise ValueError("expected a whole number")
            return int(value)
        if type_name.startswith("float"):
            return float(value)
        if "Path" in type_name:
            return Path(str(value)).expanduser()
        if type_name.startswith("list"):
            if isinstance(value, str):
                return [value]
            if not isinstance(value, list):
                raise ValueError("expected a list")
            return [str(v) for v in value]
        if type_name.startswith("dict"):
            if not isinstance(value, dict):
                raise ValueError("expected a mapping")
            return value
        if type_name.startswith("str"):
            return str(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: key '{name}': {exc} (got {value!r})") from None
    return value


def _apply(target: Any, fields: dict[str, Any], data: dict[str, Any], where: str) -> None:
    for key, value in data.items():
        norm = key.replace("-", "_")
        if norm not in fields or norm in _CLI_ONLY:
            known = ", ".join(sorted(k for k in fields if k not in _CLI_ONLY))
            raise ConfigError(f"{where}: unknown key '{key}' (known keys: {known})")
        if norm == "local":
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: key 'local' must be a mapping")
            _apply(target.local, _LOCAL_FIELDS, value, f"{where}: local")
            continue
        setattr(target, norm, _coerce(norm, value, fields[norm].type, where))


def load_yaml(path: Path, env: dict[str, str]) -> tuple[dict[str, Any], list[str]]:
    """Read a config file; return its interpolated mapping and the env vars it needs but lacks."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys to values")
    missing: list[str] = []
    return interpolate(raw, env, missing), missing


def load_settings(
    config_path: Path | None,
    overrides: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
) -> Settings:
    """Build Settings from defaults, then the YAML file, then command-line overrides."""
    env = dict(os.environ) if env is None else env
    settings = Settings()
    file_data: dict[str, Any] = {}
    where = "defaults"
    missing: list[str] = []
    if config_path is not None:
        file_data, missing = load_yaml(config_path, env)
        where = str(config_path)
    backend = str((overrides or {}).get("backend") or file_data.get("backend") or "local")
    if backend not in BACKENDS:
        raise ConfigError(
            f"{where}: key 'backend': unknown backend {backend!r}"
            f" (use one of {', '.join(BACKENDS)})"
        )
    defaults = BACKEND_DEFAULTS[backend]
    settings.backend = backend
    settings.endpoint = defaults["endpoint"]
    settings.model = defaults["model"]
    settings.max_pages_per_request = defaults["max_pages_per_request"]
    settings.max_bytes_per_request = defaults["max_bytes_per_request"]
    settings.rps = defaults["rps"]
    _apply(settings, _FIELDS, file_data, where)
    cli = {k: v for k, v in (overrides or {}).items() if v is not None}
    for key, value in cli.items():
        if key == "local":
            _apply(settings.local, _LOCAL_FIELDS, value, "command line")
        elif key in _FIELDS:
            setattr(settings, key, _coerce(key, value, _FIELDS[key].type, "command line"))
        else:
            raise ConfigError(f"command line: unknown option '{key}'")
    if settings.api_key is None and defaults["api_key_env"]:
        settings.api_key = env.get(defaults["api_key_env"]) or None
    if settings.api_key == "":
        settings.api_key = None
    if settings.api_key and any(ord(c) < 32 or ord(c) == 127 for c in settings.api_key):
        raise ConfigError(
            f"{where}: the API key contains a control character (a trailing newline?);"
            " set the variable without it"
        )
    register_secret(settings.api_key)
    for password in settings.pdf_passwords:
        register_secret(password)
    try:
        validate(settings, where, defaults["api_key_env"])
    except ConfigError as exc:
        if missing:
            names = ", ".join(sorted(set(missing)))
            raise ConfigError(f"{exc} (unset environment variables: {names})") from None
        raise
    return settings


def validate(s: Settings, where: str, key_env: str) -> None:
    def bad(key: str, why: str) -> ConfigError:
        return ConfigError(f"{where}: key '{key}': {why}")

    if s.workers is not None and s.workers < 1:
        raise bad("workers", "must be at least 1, or auto")
    if s.rps is not None and s.rps < 0:
        raise bad("rps", "must be auto, 0 (unlimited) or more")
    if s.max_in_flight is not None and s.max_in_flight < 1:
        raise bad("max_in_flight", "must be at least 1, or auto")
    if s.max_pages_per_request < 1:
        raise bad("max_pages_per_request", "must be at least 1")
    if s.max_bytes_per_request < 10_000:
        raise bad("max_bytes_per_request", "must be at least 10000")
    for key in ("connect_timeout", "request_timeout", "document_timeout", "endpoint_deadline"):
        if getattr(s, key) <= 0:
            raise bad(key, "must be more than 0 seconds")
    if s.retry_attempts < 1:
        raise bad("retry_attempts", "must be at least 1")
    if s.auth_header not in ("bearer", "api-key"):
        raise bad("auth_header", "must be 'bearer' or 'api-key'")
    if s.backend != "local":
        if not s.endpoint or not re.match(r"^https?://", s.endpoint):
            raise bad("endpoint", f"needs an http(s) URL for backend '{s.backend}'")
        if not s.api_key:
            raise ConfigError(
                f"{where}: no API key for backend '{s.backend}': set {key_env} in the environment "
                f"(or api_key: ${{{key_env}}} in the config)"
            )
        if not s.model:
            raise bad("model", "must name a model")
    if s.progress not in ("auto", "bar", "json", "off"):
        raise bad("progress", "must be auto, bar, json or off")
    if s.progress_interval <= 0:
        raise bad("progress_interval", "must be more than 0 seconds")
    if s.max_document_bytes < 1:
        raise bad("max_document_bytes", "must be at least 1")
    if s.throttle_deadline <= 0:
        raise bad("throttle_deadline", "must be more than 0 seconds")
    if s.max_pages_per_document < 1:
        raise bad("max_pages_per_document", "must be at least 1")
    for key in ("max_pages", "max_cost", "max_runtime"):
        value = getattr(s, key)
        if value is not None and value <= 0:
            raise bad(key, f"(--{key.replace('_', '-')}) must be more than 0")
    if s.local.dpi < 50 or s.local.dpi > 1200:
        raise bad("local.dpi", "must be between 50 and 1200")


_KEY_HELP = {
    "backend": "`local`, `mistral` or `azure`",
    "input": "folder to digitize, or a single file",
    "output": "folder for the mirrored output tree (manifest in `<output>/.ocr-pipeline/`)",
    "endpoint": "service base URL (`/v1/ocr` is appended unless the URL ends in `/ocr`); per backend",
    "model": "model name; per backend",
    "api_key": "the key, as `${MISTRAL_API_KEY}` or `${AZURE_API_KEY}` (never written anywhere)",
    "auth_header": "`bearer`, or `api-key` for Azure deployments that want that header",
    "azure_api_version": "`api-version` query for the Azure Foundry route",
    "workers": "documents in progress at once",
    "rps": "requests per second for all workers together (0: no limit)",
    "max_in_flight": "requests under way at once",
    "connect_timeout": "seconds to open a connection",
    "request_timeout": "seconds one request may take",
    "document_timeout": "seconds one document may take",
    "retry_attempts": "tries per chunk for transient failures",
    "retry_initial": "first backoff in seconds (exponential, full jitter)",
    "retry_max": "longest backoff in seconds",
    "endpoint_deadline": "seconds a service may fail continuously before the run stops (exit 3)",
    "throttle_deadline": "seconds of nothing but 429s (an exhausted quota) before the run stops (exit 3)",
    "max_pages_per_request": "PDFs with more pages are split into chunks; per backend",
    "max_bytes_per_request": "PDFs with more bytes are split into chunks; per backend",
    "include": "globs on the path relative to the input (case-insensitive)",
    "exclude": "globs of files to leave out",
    "follow_symlinks": "follow links that lead out of the input",
    "include_images": "ask for page images and store them under `<rel>.images/`",
    "extra_request": "more request fields, sent as given (e.g. `table_format: markdown`)",
    "pdf_passwords": "passwords to try on encrypted PDFs",
    "price_per_1000_pages": "US$ per 1,000 pages for cost figures (default: the model's price)",
    "max_document_bytes": "larger files fail as `too_large`",
    "max_pages_per_document": "documents with more pages fail as `too_large`",
    "allow_large_documents": "no cap on pages per document",
    "metrics_file": "Prometheus textfile (default `<output>/.ocr-pipeline/metrics.prom`)",
    "progress": "`auto` (bar on a terminal, JSON events otherwise), `bar`, `json` or `off`",
    "progress_interval": "seconds between JSON progress events and metrics writes",
    "shutdown_grace": "seconds requests in flight get to land after SIGINT/SIGTERM",
    "verify_tls": "check the service's TLS certificate",
    "max_pages": "pages this run may send (budget: exit 3, resumable)",
    "max_cost": "US$ this run may spend (budget: exit 3, resumable)",
    "max_runtime": "seconds before the run stops dispatching (budget: exit 3, resumable)",
    "log_level": "`debug`, `info`, `warning` or `error`",
    "local.language": "Tesseract languages, e.g. `eng` or `eng+deu`",
    "local.dpi": "resolution scanned PDF pages are rendered at",
    "local.force_ocr": "OCR every page even when it has a text layer",
    "local.processes": "OCR processes (0: one per core)",
    "local.max_pixels": "a page above this many pixels fails as `too_large`",
    "local.tessdata_path": "folder of `*.traineddata` (default: TESSDATA_PREFIX, then the tessdata package)",
}


def file_keys() -> dict[str, tuple[Any, str]]:
    """Every key a config file accepts, dotted for sections (`local.dpi`): its default (as
    `Settings()` has it, before per-backend defaults) and a one-line description."""
    keys: dict[str, tuple[Any, str]] = {}
    defaults = Settings()
    for name in _FIELDS:
        if name in _CLI_ONLY:
            continue
        if name == "local":
            for sub in _LOCAL_FIELDS:
                keys[f"local.{sub}"] = (getattr(defaults.local, sub), _KEY_HELP.get(f"local.{sub}", ""))
            continue
        keys[name] = (getattr(defaults, name), _KEY_HELP.get(name, ""))
    return keys
