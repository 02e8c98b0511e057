"""The output options of an OCR request (`settings.outputs`), named as the API names them and sent
only when set: older deployments answer 422 to keys they do not know (docs/outputs.md).

Annotation schemas are JSON Schema files, read and checked once (at config load, `check_outputs`)
and sent as `{"type": "json_schema", "json_schema": {"name", "schema", "strict"?}}`.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.backends.model_support import Finding, check_options
from pipeline.config.groups import OutputSettings, ServiceSettings
from pipeline.errors import ConfigError
from pipeline.logsetup import get_logger

_NAME_OK = re.compile(r"[^A-Za-z0-9_-]")


@functools.lru_cache(maxsize=16)
def load_schema(path: Path) -> dict[str, Any]:
    """The `json_schema` object for a schema file: `{name, schema, strict?, description?}`.

    The file holds either a JSON Schema (its name is then the file's stem) or that wrapper
    itself. Raises ConfigError naming the file when it is not readable JSON or not a schema.
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"schema file not found: {path}") from None
    except OSError as exc:
        raise ConfigError(f"schema file {path}: cannot read: {exc.strerror}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"schema file {path}: not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"schema file {path}: must hold a JSON object (a JSON Schema)")
    if isinstance(data.get("schema"), dict) and isinstance(data.get("name"), str):
        wrapper = {k: data[k] for k in ("name", "schema", "strict", "description") if k in data}
    else:
        wrapper = {"name": _NAME_OK.sub("_", path.stem)[:64] or "schema", "schema": data}
    _check_is_schema(wrapper["schema"], path)
    if "strict" in wrapper and not isinstance(wrapper["strict"], bool):
        raise ConfigError(f"schema file {path}: `strict` must be true or false")
    return wrapper


def _check_is_schema(schema: dict[str, Any], path: Path) -> None:
    import jsonschema

    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        where = "/".join(str(p) for p in exc.path) or "(top level)"
        raise ConfigError(f"schema file {path}: not a valid JSON Schema at {where}:"
                          f" {exc.message}") from None


def response_format(path: Path) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": load_schema(path)}


@functools.lru_cache(maxsize=16)
def _options(o: OutputSettings) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if o.table_format:
        body["table_format"] = o.table_format
    if o.extract_header:
        body["extract_header"] = True
    if o.extract_footer:
        body["extract_footer"] = True
    if o.include_blocks:
        body["include_blocks"] = True
    if o.confidence_scores_granularity:
        body["confidence_scores_granularity"] = o.confidence_scores_granularity
    if o.document_annotation_schema:
        body["document_annotation_format"] = response_format(o.document_annotation_schema)
    if o.document_annotation_prompt:
        body["document_annotation_prompt"] = o.document_annotation_prompt
    if o.bbox_annotation_schema:
        body["bbox_annotation_format"] = response_format(o.bbox_annotation_schema)
    return body


def request_options(service: ServiceSettings, outputs: OutputSettings) -> dict[str, Any]:
    """The request keys for `outputs` (a fresh top-level dict each call); the warnings of
    `check_outputs` are logged the first time."""
    _warn_once(service, outputs)
    return dict(_options(outputs))


def service_models(service: ServiceSettings) -> list[str]:
    models = [e.model or service.model for e in service.endpoints]
    return models or [service.model]


def check_outputs(settings: Any, where: Callable[[str], str] = str) -> list[Finding]:
    """Raise ConfigError for a known-unsupported combination or a bad schema file (`where(key)`
    says where a key's value came from); return the warnings (where the service decides)."""
    o = settings.outputs
    errors, warnings = check_options(o, settings.service.backend, service_models(settings.service))
    if errors:
        raise ConfigError(f"{where(errors[0].key)}: {errors[0].message}")
    for key in ("document_annotation_schema", "bbox_annotation_schema"):
        path = getattr(o, key)
        if path is not None:
            try:
                load_schema(path)
            except ConfigError as exc:
                raise ConfigError(f"{where(key)}: {exc.message}") from None
    return warnings


_warned: set[tuple[str, str]] = set()


def _warn_once(service: ServiceSettings, outputs: OutputSettings) -> None:
    _errors, warnings = check_options(outputs, service.backend, service_models(service))
    for finding in warnings:
        if (finding.key, finding.message) not in _warned:
            _warned.add((finding.key, finding.message))
            get_logger().warning("output option", key=finding.key, message=finding.message)
