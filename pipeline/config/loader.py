"""Loading settings: YAML file, `${VAR}` interpolation, flags over file over per-backend defaults,
then each group validated on its own. A validation error names where the value came from: a flag,
a file and key, or an environment variable through a file's `${VAR}`. Secrets are resolved from
the environment and kept only in memory (and registered for redaction)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from pipeline.config.groups import (
    BACKENDS,
    CLI_ONLY,
    FILE_GROUPS,
    KEY_GROUPS,
    SECTIONS,
    CommandLine,
    Group,
)
from pipeline.config.settings import SECRET_KEYS, Settings
from pipeline.errors import ConfigError
from pipeline.logsetup import register_secret

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


def interpolate(value: Any, env: dict[str, str], missing: list[str],
                used: list[str] | None = None) -> Any:
    """Replace `${VAR}` and `${VAR:-default}` in every string of a YAML tree; the names used go
    into `used`, those unset with no default into `missing`."""
    if isinstance(value, str):

        def sub(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            if used is not None:
                used.append(name)
            if name in env:
                return env[name]
            if default is not None:
                return default
            missing.append(name)
            return ""

        return _VAR.sub(sub, value)
    if isinstance(value, list):
        return [interpolate(v, env, missing, used) for v in value]
    if isinstance(value, dict):
        return {k: interpolate(v, env, missing, used) for k, v in value.items()}
    return value


def load_yaml(path: Path) -> dict[str, Any]:
    """A config file's raw mapping (before interpolation)."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys to values")
    return raw


class _Values:
    """Flat key -> value, with where each value came from."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}
        self.origin: dict[str, str] = {}

    def set(self, key: str, value: Any, origin: str) -> None:
        self.values[key] = value
        self.origin[key] = origin

    def where(self, key: str) -> str:
        return self.origin.get(key, f"default of '{key}'")


def _known_keys() -> list[str]:
    return sorted([*KEY_GROUPS, *SECTIONS])


def _from_file(values: _Values, path: Path, env: dict[str, str], missing: list[str]) -> None:
    for raw_key, raw in load_yaml(path).items():
        key = str(raw_key).replace("-", "_")
        if key in CLI_ONLY or (key not in KEY_GROUPS and key not in SECTIONS):
            raise ConfigError(f"{path}: unknown key '{raw_key}' (known keys: {', '.join(_known_keys())})")
        if key in SECTIONS:
            if not isinstance(raw, dict):
                raise ConfigError(f"{path}: key '{key}' must be a mapping")
            for sub, sub_raw in raw.items():
                name = str(sub).replace("-", "_")
                if name not in SECTIONS[key].model_fields:
                    known = ", ".join(sorted(SECTIONS[key].model_fields))
                    raise ConfigError(f"{path}: {key}: unknown key '{sub}' (known keys: {known})")
                _set_interpolated(values, f"{key}.{name}", sub_raw, path, env, missing)
            continue
        _set_interpolated(values, key, raw, path, env, missing)


def _set_interpolated(values: _Values, key: str, raw: Any, path: Path, env: dict[str, str],
                      missing: list[str]) -> None:
    used: list[str] = []
    value = interpolate(raw, env, missing, used)
    origin = f"{path}: key '{key}'"
    if used:
        origin += " (from the environment: " + ", ".join(f"${{{n}}}" for n in dict.fromkeys(used)) + ")"
    values.set(key, value, origin)


def _from_flags(values: _Values, overrides: dict[str, Any]) -> dict[str, Any]:
    command: dict[str, Any] = {}
    for key, value in overrides.items():
        if value is None:
            continue  # a flag left unset does not erase the file's value
        if key in CLI_ONLY:
            command[key] = value
        elif key in SECTIONS and isinstance(value, dict):
            for sub, sub_value in value.items():
                values.set(f"{key}.{sub}", sub_value, f"command line: --{key}-{sub.replace('_', '-')}")
        elif key in KEY_GROUPS:
            values.set(key, value, f"command line: --{key.replace('_', '-')}")
        else:
            raise ConfigError(f"command line: unknown option '{key}'")
    return command


def _build(model: type[Group], data: dict[str, Any], values: _Values, prefix: str = "") -> Any:
    try:
        return model(**data)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = str(error["loc"][0]) if error["loc"] else ""
        key = prefix + field
        shown = "***" if field in SECRET_KEYS else repr(error.get("input"))
        message = str(error["msg"]).removeprefix("Value error, ")
        raise ConfigError(f"{values.where(key)}: {message} (got {shown})") from None


def load_settings(
    config_path: Path | None,
    overrides: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
) -> Settings:
    """Build Settings from per-backend defaults, then the YAML file, then command-line flags."""
    env = dict(os.environ) if env is None else env
    values = _Values()
    missing: list[str] = []
    where = "defaults"
    if config_path is not None:
        _from_file(values, config_path, env, missing)
        where = str(config_path)
    command = _from_flags(values, overrides or {})
    backend = str(values.values.get("backend") or "local")
    if backend not in BACKENDS:
        raise ConfigError(f"{values.where('backend')}: unknown backend {backend!r}"
                          f" (use one of {', '.join(BACKENDS)})")
    defaults = BACKEND_DEFAULTS[backend]
    for key in ("endpoint", "model", "max_pages_per_request", "max_bytes_per_request", "rps"):
        if key not in values.values:
            values.set(key, defaults[key], f"the default of '{key}' for backend '{backend}'")
    key_env = defaults["api_key_env"]
    if values.values.get("api_key") in (None, "") and key_env and env.get(key_env):
        values.set("api_key", env[key_env], f"environment variable {key_env}")
    try:
        settings = _assemble(values, command)
        _check_secrets(settings, values)
        _check_extra_request(settings, values)
        validate(settings, where, key_env, values)
    except ConfigError as exc:
        if missing:
            names = ", ".join(sorted(set(missing)))
            raise ConfigError(f"{exc} (unset environment variables: {names})") from None
        raise
    register_secret(settings.service.api_key)
    for endpoint in settings.service.endpoints:
        register_secret(endpoint.api_key)
    for password in settings.run.pdf_passwords:
        register_secret(password)
    return settings


def _assemble(values: _Values, command: dict[str, Any]) -> Settings:
    groups: dict[str, Any] = {}
    for name, model in FILE_GROUPS.items():
        data = {k: v for k, v in values.values.items() if KEY_GROUPS.get(k) == name}
        groups[name] = _build(model, data, values)
    for section, model in SECTIONS.items():
        prefix = f"{section}."
        data = {k.removeprefix(prefix): v for k, v in values.values.items() if k.startswith(prefix)}
        groups[section] = _build(model, data, values, prefix)
    groups["command"] = _build(CommandLine, command, values)
    service = groups["service"]
    if service.api_key == "":
        groups["service"] = service.model_copy(update={"api_key": None})
    return Settings(**groups)


def _check_secrets(s: Settings, values: _Values) -> None:
    key = s.service.api_key
    if key and any(ord(c) < 32 or ord(c) == 127 for c in key):
        raise ConfigError(
            f"{values.where('api_key')}: the API key contains a control character (a trailing"
            " newline?); set the variable without it"
        )


# OCR request fields the pipeline sends itself, each with the setting that sets it (None: set per
# chunk). Sent through extra_request they would bypass validation and the handling of what they
# return (tables, annotations), or break the chunking (pages).
_REQUEST_KEY_SETTINGS: dict[str, str | None] = {
    "model": "model",
    "document": None,
    "pages": None,
    "include_image_base64": "include_images",
    "table_format": "table_format",
    "extract_header": "extract_header",
    "extract_footer": "extract_footer",
    "include_blocks": "include_blocks",
    "confidence_scores_granularity": "confidence_scores_granularity",
    "document_annotation_format": "document_annotation_schema",
    "document_annotation_prompt": "document_annotation_prompt",
    "bbox_annotation_format": "bbox_annotation_schema",
}


def _check_extra_request(s: Settings, values: _Values) -> None:
    """A request field the pipeline sets itself is refused in extra_request, naming the setting."""
    for key in s.service.extra_request:
        if key not in _REQUEST_KEY_SETTINGS:
            continue
        setting = _REQUEST_KEY_SETTINGS[key]
        if setting is None:
            raise ConfigError(f"{values.where('extra_request')}: '{key}' cannot be sent through"
                              " extra_request: the pipeline sets it for each chunk it cuts")
        use = f"'{setting}: FILE' (a JSON Schema file)" if setting.endswith("_schema") else (
            f"'{setting}: ...'")
        raise ConfigError(f"{values.where('extra_request')}: '{key}' is a setting of its own:"
                          f" use {use} instead of extra_request, so it is checked against the"
                          " model and its output stored")


def validate(s: Settings, where: str, key_env: str, values: _Values | None = None) -> None:
    """What no single group can check alone: a hosted backend needs an endpoint, a key, a model."""
    values = values or _Values()
    svc = s.service
    if svc.mode == "batch" and svc.backend != "mistral":
        raise ConfigError(
            f"{values.where('mode')}: batch mode needs the mistral backend: the Batch API"
            f" (/v1/files, /v1/batch/jobs) is Mistral's platform; an {svc.backend} deployment has"
            " no batch endpoint (use mode: sync)")
    from pipeline.backends.request_options import check_outputs  # output options vs the models

    check_outputs(s, values.where)
    if s.local.cluster and svc.backend != "local":
        # The flag `--cluster` is stored as local.cluster; name it as the user typed it.
        origin = values.where("local.cluster").replace("--local-cluster", "--cluster")
        raise ConfigError(
            f"{origin}: a Dask cluster runs only the local engine's pages; backend"
            f" '{svc.backend}' sends them to its hosted service, so the cluster would be unused"
            " (use backend: local, or remove --cluster / local.cluster)")
    if svc.backend == "local":
        return
    if svc.endpoints:
        if svc.mode == "batch":
            raise ConfigError(f"{values.where('endpoints')}: batch mode uses one endpoint; remove"
                              " `endpoints:` or use mode: sync")
        for n, endpoint in enumerate(svc.endpoints):
            if not (endpoint.api_key or svc.api_key):
                raise ConfigError(f"{values.where('endpoints')}: endpoint {n + 1} ({endpoint.url})"
                                  f" has no api_key and {key_env} is not set")
            if endpoint.api_key and any(ord(c) < 32 or ord(c) == 127 for c in endpoint.api_key):
                raise ConfigError(f"{values.where('endpoints')}: the key of endpoint {n + 1} contains"
                                  " a control character (a trailing newline?)")
        return
    if not svc.endpoint or not re.match(r"^https?://", svc.endpoint):
        raise ConfigError(f"{values.where('endpoint')}: needs an http(s) URL for backend"
                          f" '{svc.backend}' (got {svc.endpoint!r})")
    if not svc.api_key:
        raise ConfigError(
            f"{where}: no API key for backend '{svc.backend}': set {key_env} in the environment "
            f"(or api_key: ${{{key_env}}} in the config)"
        )
    if not svc.model:
        raise ConfigError(f"{values.where('model')}: must name a model for backend '{svc.backend}'")


def file_keys() -> dict[str, tuple[Any, str]]:
    """Every key a config file accepts, dotted for sections (`local.dpi`): its default (before
    per-backend defaults) and a one-line description, from the groups' field definitions."""
    keys: dict[str, tuple[Any, str]] = {}
    for key, group in KEY_GROUPS.items():
        info = FILE_GROUPS[group].model_fields[key]
        keys[key] = (info.get_default(call_default_factory=True), info.description or "")
    for section, model in SECTIONS.items():
        for key, info in model.model_fields.items():
            keys[f"{section}.{key}"] = (info.get_default(call_default_factory=True),
                                        info.description or "")
    return keys
