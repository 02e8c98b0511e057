"""Configuration: `${VAR}` interpolation, flags over file over defaults, validation, redaction."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.config import BACKEND_DEFAULTS, Settings, interpolate, load_settings
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
    assert s.workers == 7
    assert s.rps == 2.5
    assert s.follow_symlinks is False
    assert s.model == "local-x"


# ---- precedence -------------------------------------------------------------------------------


def test_flags_override_the_file_which_overrides_the_defaults(tmp_path: Path) -> None:
    path = write_config(tmp_path, "workers: 3\nrps: 2\nmax_in_flight: 5\nlocal:\n  dpi: 200\n")
    s = load_settings(path, {"workers": 9, "rps": None}, env={})
    assert s.workers == 9  # flag beats file
    assert s.rps == 2.0  # a flag left unset (None) does not erase the file's value
    assert s.max_in_flight == 5  # file beats default
    assert s.local.dpi == 200
    assert s.connect_timeout == Settings().connect_timeout  # untouched default
    assert s.backend == "local"


def test_per_backend_defaults_apply_and_azure_is_smaller_than_mistral() -> None:
    mistral = load_settings(None, {"backend": "mistral"}, env={"MISTRAL_API_KEY": KEY})
    azure = load_settings(
        None, {"backend": "azure", "endpoint": AZURE_ROUTE}, env={"AZURE_API_KEY": KEY}
    )
    assert mistral.endpoint == BACKEND_DEFAULTS["mistral"]["endpoint"].rstrip("/")
    assert mistral.model == "mistral-ocr-latest"
    assert mistral.api_key == KEY  # from MISTRAL_API_KEY when the config names no key
    assert azure.api_key == KEY  # from AZURE_API_KEY
    assert azure.max_pages_per_request < mistral.max_pages_per_request
    assert azure.max_bytes_per_request < mistral.max_bytes_per_request
    local = load_settings(None, env={})
    assert local.backend == "local"
    assert local.api_key is None


def test_file_overrides_the_backend_default_and_flag_overrides_the_backend(tmp_path: Path) -> None:
    path = write_config(tmp_path, f"backend: azure\nendpoint: {AZURE_ROUTE}\nmax_pages_per_request: 12\n")
    s = load_settings(path, env={"AZURE_API_KEY": KEY})
    assert s.max_pages_per_request == 12
    assert s.max_bytes_per_request == BACKEND_DEFAULTS["azure"]["max_bytes_per_request"]

    local_file = write_config(tmp_path, "backend: local\nworkers: 2\n", name="local.yaml")
    switched = load_settings(local_file, {"backend": "mistral"}, env={"MISTRAL_API_KEY": KEY})
    assert switched.backend == "mistral"
    assert switched.max_pages_per_request == BACKEND_DEFAULTS["mistral"]["max_pages_per_request"]
    assert switched.workers == 2


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
    assert s.api_key == KEY  # still usable in memory
    shown = s.redacted()
    dumped = json.dumps(shown, default=str)
    assert KEY not in dumped
    assert "hunter2-pw" not in dumped
    assert shown["api_key"] == "***"
    assert shown["workers"] == s.workers  # the rest is still shown
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
    assert s.backend == backend
    assert s.api_key == key
    assert s.max_pages_per_request >= 1
    if backend == "local":
        assert s.rps == 0  # the engine's processes are the limit, not a rate
    else:  # hosted: rate and concurrency learned, nothing pinned by the shipped file
        assert (s.rps, s.workers, s.max_in_flight) == (None, None, None)
    if backend == "azure":
        assert s.endpoint == AZURE_ROUTE


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
    assert (s.rps, s.workers, s.max_in_flight) == (None, None, None)
    capped = load_settings(None, {**values, "rps": "12.5", "workers": "3"}, env=env)
    assert (capped.rps, capped.workers) == (12.5, 3)
    with pytest.raises(ConfigError, match="rps"):
        load_settings(None, {**values, "rps": "fast"}, env=env)
