"""`Settings`: the groups of one run, frozen once loaded."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.config.groups import (
    BatchSettings,
    CommandLine,
    LimitSettings,
    LocalSettings,
    OutputSettings,
    RunSettings,
    ServiceSettings,
)

SECRET_KEYS = frozenset({"api_key", "pdf_passwords"})


@dataclass(frozen=True)
class Settings:
    service: ServiceSettings = field(default_factory=ServiceSettings)
    limits: LimitSettings = field(default_factory=LimitSettings)
    run: RunSettings = field(default_factory=RunSettings)
    outputs: OutputSettings = field(default_factory=OutputSettings)
    local: LocalSettings = field(default_factory=LocalSettings)
    batch: BatchSettings = field(default_factory=BatchSettings)
    command: CommandLine = field(default_factory=CommandLine)

    @property
    def backend(self) -> str:
        return self.service.backend

    @property
    def model(self) -> str:
        return self.service.model

    def redacted(self) -> dict[str, dict[str, Any]]:
        """Every group's values as plain data, secrets masked: what may be shown to anyone."""
        shown: dict[str, dict[str, Any]] = {}
        for name in ("service", "limits", "run", "outputs", "local", "batch", "command"):
            values = getattr(self, name).model_dump()
            for key in SECRET_KEYS & values.keys():
                if isinstance(values[key], list):
                    values[key] = ["***"] * len(values[key])
                elif values[key]:
                    values[key] = "***"
            for endpoint in values.get("endpoints", []):
                if endpoint.get("api_key"):
                    endpoint["api_key"] = "***"
            shown[name] = {k: (str(v) if isinstance(v, Path) else v) for k, v in values.items()}
        return shown
