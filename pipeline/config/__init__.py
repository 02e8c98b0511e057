"""Configuration: settings in groups (`groups`), loaded from YAML, the environment and flags
(`loader`)."""

from pipeline.config.groups import (
    BACKENDS,
    BatchSettings,
    CommandLine,
    LimitSettings,
    LocalSettings,
    OutputSettings,
    RunSettings,
    ServiceSettings,
)
from pipeline.config.loader import BACKEND_DEFAULTS, file_keys, interpolate, load_settings, load_yaml
from pipeline.config.settings import Settings

__all__ = [
    "BACKENDS", "BACKEND_DEFAULTS", "BatchSettings", "CommandLine", "LimitSettings", "LocalSettings",
    "OutputSettings", "RunSettings", "ServiceSettings", "Settings", "file_keys", "interpolate",
    "load_settings", "load_yaml",
]
