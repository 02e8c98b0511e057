"""`Settings`: the groups of one run, frozen once loaded."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.config import groups

SECRET_KEYS = frozenset({"api_key", "pdf_passwords"})


@dataclass(frozen=True)
class Settings:
    service: groups.ServiceSettings = field(default_factory=groups.ServiceSettings)
    limits: groups.LimitSettings = field(default_factory=groups.LimitSettings)
    run: groups.RunSettings = field(default_factory=groups.RunSettings)
    outputs: groups.OutputSettings = field(default_factory=groups.OutputSettings)
    local: groups.LocalSettings = field(default_factory=groups.LocalSettings)
    batch: groups.BatchSettings = field(default_factory=groups.BatchSettings)
    command: groups.CommandLine = field(default_factory=groups.CommandLine)

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
