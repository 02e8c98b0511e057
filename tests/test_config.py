"""Configuration: `${VAR}` interpolation, flags over file over defaults, validation, redaction."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from pipeline.config import (
    BACKEND_DEFAULTS,
    LimitSettings,
    ServiceSettings,
    Settings,
    file_keys,
    interpolate,
    load_settings,
)
from pipeline.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent
KEY = "sk-config-test-7f3a91-SECRET"
AZURE_ROUTE = "https://res.services.ai.azure.com/providers/mistral/azure/ocr"


def write_config(tmp_path: Path, text: str, name: str = "settings.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# ---- interpolation ------------------------------------------------------------------------------


def test_interpolation_replaces_vars_and_defaults_in_nested_values() -> None:
    missing: list[str] = []
    tree = {
        "a": "${HOST}",
        "b": "${PORT:-8080}",
        "c": ["http://${HOST}:${PORT:-1}/x", 3, None],
        "d": {"deep": "${EMPTY:-}"},
        "e": "no vars here",
    }
    out = interpolate(tree, {"HOST": "example.org"}, missing)
    assert out == {
        "a": "example.org",
        "b": "8080",
        "c": ["http://example.org:1/x", 3, None],
        "d": {"deep": ""},
        "e": "no vars here",
    }
    assert missing == []


def test_interpolation_prefers_the_environment_over_the_default() -> None:
    missing: list[str] = []
    assert interpolate("${PORT:-8080}", {"PORT": "9"}, missing) == "9"
    assert missing == []


def test_interpolation_reports_unset_variables_without_a_default() -> None:
    missing: list[str] = []
    assert interpolate("key=${NOPE_A} and ${NOPE_B:-b}", {}, missing) == "key= and b"
    assert missing == ["NOPE_A"]


def test_interpolated_strings_are_coerced_to_the_key_types(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        "workers: ${W}\nrps: ${R:-2.5}\nfollow_symlinks: ${FOLLOW}\nmodel: ${M:-local-x}\n",
    )
    s = load_settings(path, env={"W": "7", "FOLLOW": "false"})
    assert s.limits.workers == 7
    assert s.limits.rps == 2.5
    assert s.run.follow_symlinks is False
    assert s.service.model == "local-x"


# ---- precedence -------------------------------------------------------------------------------


def test_flags_override_the_file_which_overrides_the_defaults(tmp_path: Path) -> None:
    path = write_config(tmp_path, "workers: 3\nrps: 2\nmax_in_flight: 5\nlocal:\n  dpi: 200\n")
    s = load_settings(path, {"workers": 9, "rps": None}, env={})
    assert s.limits.workers == 9  # flag beats file
    assert s.limits.rps == 2.0  # a flag left unset (None) does not erase the file's value
    assert s.limits.max_in_flight == 5  # file beats default
    assert s.local.dpi == 200
    assert s.service.connect_timeout == Settings().service.connect_timeout  # untouched default
    assert s.service.backend == "local"


def test_per_backend_defaults_apply_and_azure_is_smaller_than_mistral() -> None:
    mistral = load_settings(None, {"backend": "mistral"}, env={"MISTRAL_API_KEY": KEY})
    azure = load_settings(
        None, {"backend": "azure", "endpoint": AZURE_ROUTE}, env={"AZURE_API_KEY": KEY}
    )
    assert mistral.service.endpoint == BACKEND_DEFAULTS["mistral"]["endpoint"].rstrip("/")
    assert mistral.service.model == "mistral-ocr-latest"
    assert mistral.service.api_key == KEY  # from MISTRAL_API_KEY when the config names no key
    assert azure.service.api_key == KEY  # from AZURE_API_KEY
    assert azure.limits.max_pages_per_request < mistral.limits.max_pages_per_request
    assert azure.limits.max_bytes_per_request < mistral.limits.max_bytes_per_request
    local = load_settings(None, env={})
    assert local.backend == "local"
    assert local.service.api_key is None


def test_file_overrides_the_backend_default_and_flag_overrides_the_backend(tmp_path: Path) -> None:
    path = write_config(tmp_path, f"backend: azure\nendpoint: {AZURE_ROUTE}\nmax_pages_per_request: 12\n")
    s = load_settings(path, env={"AZURE_API_KEY": KEY})
    assert s.limits.max_pages_per_request == 12
    assert s.limits.max_bytes_per_request == BACKEND_DEFAULTS["azure"]["max_bytes_per_request"]

    local_file = write_config(tmp_path, "backend: local\nworkers: 2\n", name="local.yaml")
    switched = load_settings(local_file, {"backend": "mistral"}, env={"MISTRAL_API_KEY": KEY})
    assert switched.backend == "mistral"
    assert switched.limits.max_pages_per_request == BACKEND_DEFAULTS["mistral"]["max_pages_per_request"]
    assert switched.limits.workers == 2


# ---- validation ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("wrokers: 2\n", "wrokers"),  # unknown key
        ("workers: many\n", "workers"),  # bad type
        ("workers: 0\n", "workers"),  # out of range
        ("rps: fast\n", "rps"),
        ("rps: -1\n", "rps"),
        ("backend: tesseract\n", "backend"),
        ("follow_symlinks: maybe\n", "follow_symlinks"),
        ("include: 5\n", "include"),
        ("local:\n  dpi: lots\n", "dpi"),
        ("local:\n  dpi: 10\n", "dpi"),
        ("auth_header: token\n", "auth_header"),
        ("max_in_flight: 0\n", "max_in_flight"),
    ],
)
def test_validation_error_names_the_key_and_the_file(tmp_path: Path, text: str, key: str) -> None:
    path = write_config(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_settings(path, env={})
    message = str(info.value)
    assert key in message
    assert str(path) in message


def test_a_fractional_number_for_a_whole_number_key_is_rejected(tmp_path: Path) -> None:
    # `workers: 2.5` is a broken config; silently running with 2 workers hides the mistake.
    path = write_config(tmp_path, "workers: 2.5\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path, env={})
    assert "workers" in str(info.value)
    assert str(path) in str(info.value)


def test_a_file_that_is_not_a_mapping_is_refused_with_its_path(tmp_path: Path) -> None:
    path = write_config(tmp_path, "- just\n- a list\n")
    with pytest.raises(ConfigError, match="mapping") as info:
        load_settings(path, env={})
    assert str(path) in str(info.value)


def test_a_missing_config_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(tmp_path / "absent.yaml", env={})
    assert "absent.yaml" in str(info.value)


def test_mistral_without_a_key_names_the_variable_and_lists_it_as_unset(tmp_path: Path) -> None:
    path = write_config(tmp_path, "backend: mistral\napi_key: ${MISTRAL_API_KEY}\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path, env={})
    message = str(info.value)
    assert "MISTRAL_API_KEY" in message
    assert str(path) in message
    assert "unset environment variables: MISTRAL_API_KEY" in message


def test_mistral_without_a_key_in_file_or_environment_names_the_variable(tmp_path: Path) -> None:
    path = write_config(tmp_path, "backend: mistral\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path, env={"AZURE_API_KEY": KEY})  # the other backend's key does not count
    assert "MISTRAL_API_KEY" in str(info.value)
    assert str(path) in str(info.value)


def test_missing_endpoint_names_the_key_the_file_and_the_unset_variable(tmp_path: Path) -> None:
    path = write_config(tmp_path, "backend: azure\nendpoint: ${AZURE_OCR_ENDPOINT}\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path, env={"AZURE_API_KEY": KEY})
    message = str(info.value)
    assert "endpoint" in message
    assert str(path) in message
    assert "AZURE_OCR_ENDPOINT" in message


def test_an_endpoint_that_is_not_http_is_refused(tmp_path: Path) -> None:
    path = write_config(tmp_path, "backend: mistral\nendpoint: api.mistral.ai\n")
    with pytest.raises(ConfigError, match="endpoint") as info:
        load_settings(path, env={"MISTRAL_API_KEY": KEY})
    assert str(path) in str(info.value)


def test_unknown_command_line_option_is_refused() -> None:
    with pytest.raises(ConfigError, match="colour"):
        load_settings(None, {"colour": "blue"}, env={})


# ---- secrets ----------------------------------------------------------------------------------


def test_redacted_and_repr_hide_the_key_and_passwords() -> None:
    s = load_settings(
        None, {"backend": "mistral", "pdf_passwords": ["hunter2-pw"]}, env={"MISTRAL_API_KEY": KEY}
    )
    assert s.service.api_key == KEY  # still usable in memory
    shown = s.redacted()
    dumped = json.dumps(shown, default=str)
    assert KEY not in dumped
    assert "hunter2-pw" not in dumped
    assert shown["service"]["api_key"] == "***"
    assert shown["limits"]["workers"] == s.limits.workers  # the rest is still shown
    assert KEY not in repr(s)
    assert "hunter2-pw" not in repr(s)


# ---- shipped configs ----------------------------------------------------------------------------

SHIPPED_ENV = {
    "MISTRAL_API_KEY": KEY,
    "AZURE_API_KEY": KEY + "-az",
    "AZURE_OCR_ENDPOINT": AZURE_ROUTE,
}


@pytest.mark.parametrize(
    ("name", "backend", "key"),
    [("default.yaml", "local", None), ("mistral.yaml", "mistral", KEY),
     ("azure.yaml", "azure", KEY + "-az")],
)
def test_shipped_configs_load(name: str, backend: str, key: str | None) -> None:
    s = load_settings(REPO / "config" / name, env=dict(SHIPPED_ENV))
    assert s.service.backend == backend
    assert s.service.api_key == key
    assert s.limits.max_pages_per_request >= 1
    if backend == "local":
        assert s.limits.rps == 0  # the engine's processes are the limit, not a rate
    else:  # hosted: rate and concurrency learned, nothing pinned by the shipped file
        assert (s.limits.rps, s.limits.workers, s.limits.max_in_flight) == (None, None, None)
    if backend == "azure":
        assert s.service.endpoint == AZURE_ROUTE


@pytest.mark.parametrize(("name", "var"), [("mistral.yaml", "MISTRAL_API_KEY"),
                                           ("azure.yaml", "AZURE_API_KEY")])
def test_shipped_remote_configs_without_their_key_say_which_variable(name: str, var: str) -> None:
    env = {k: v for k, v in SHIPPED_ENV.items() if k != var}
    with pytest.raises(ConfigError) as info:
        load_settings(REPO / "config" / name, env=env)
    assert var in str(info.value)
    assert name in str(info.value)


@pytest.mark.parametrize("source", ["file", "flag"])
def test_rps_workers_and_in_flight_take_auto_or_a_number(tmp_path: Path, source: str) -> None:
    values = {"backend": "mistral", "rps": "auto", "workers": "auto", "max_in_flight": "auto"}
    env = {"MISTRAL_API_KEY": KEY}
    if source == "file":
        cfg = tmp_path / "c.yaml"
        cfg.write_text("\n".join(f"{k}: {v}" for k, v in values.items()))
        s = load_settings(cfg, env=env)
    else:
        s = load_settings(None, values, env=env)
    assert (s.limits.rps, s.limits.workers, s.limits.max_in_flight) == (None, None, None)
    capped = load_settings(None, {**values, "rps": "12.5", "workers": "3"}, env=env)
    assert (capped.limits.rps, capped.limits.workers) == (12.5, 3)
    with pytest.raises(ConfigError, match="rps"):
        load_settings(None, {**values, "rps": "fast"}, env=env)


# ---- groups and where a value came from ---------------------------------------------------------


def test_a_bad_flag_value_is_named_as_the_flag_not_as_a_file_key(tmp_path: Path) -> None:
    path = write_config(tmp_path, "workers: 2\n")
    with pytest.raises(ConfigError, match=r"^command line: --workers: .*greater than or equal to 1"):
        load_settings(path, {"workers": "0"}, env={})


def test_a_bad_file_value_names_the_file_and_key(tmp_path: Path) -> None:
    path = write_config(tmp_path, "local:\n  dpi: 20\n")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}: key 'local.dpi': .*50"):
        load_settings(path, env={})


def test_a_bad_value_from_the_environment_names_the_variable(tmp_path: Path) -> None:
    path = write_config(tmp_path, "request_timeout: ${OCR_TIMEOUT}\n")
    wanted = r"key 'request_timeout' \(from the environment: \$\{OCR_TIMEOUT\}\)"
    with pytest.raises(ConfigError, match=wanted):
        load_settings(path, env={"OCR_TIMEOUT": "soon"})


def test_command_line_switches_are_not_file_keys(tmp_path: Path) -> None:
    path = write_config(tmp_path, "dry_run: true\n")
    with pytest.raises(ConfigError, match="unknown key 'dry_run'"):
        load_settings(path, env={})
    assert "dry_run" not in file_keys() and "retry_failed" not in file_keys()


def test_each_component_gets_its_group_and_groups_are_frozen() -> None:
    s = load_settings(None, {"backend": "mistral", "rps": "7"}, env={"MISTRAL_API_KEY": KEY})
    assert isinstance(s.service, ServiceSettings) and isinstance(s.limits, LimitSettings)
    assert "rps" not in ServiceSettings.model_fields and "endpoint" not in LimitSettings.model_fields
    with pytest.raises(ValidationError):
        s.limits.rps = 1.0  # type: ignore[misc]


def test_batch_mode_is_refused_for_azure_with_the_reason() -> None:
    with pytest.raises(ConfigError, match="batch mode needs the mistral backend"):
        load_settings(None, {"backend": "azure", "mode": "batch", "endpoint": "https://x.example"},
                      env={"AZURE_API_KEY": KEY})
