"""The resumable manifest: SQL in `database`, the writer thread in `writer`."""

from pathlib import Path

from pipeline.manifest.database import DocumentRow, Manifest, ManifestError, PlannedDocument
from pipeline.manifest.rows import NewStat, SkippedFile

STATE_DIR = ".ocr-pipeline"  # in the output folder; hidden, so a walk of the output skips it
MANIFEST_NAME = "manifest.sqlite3"

__all__ = ["DocumentRow", "MANIFEST_NAME", "Manifest", "ManifestError", "NewStat",
           "PlannedDocument", "SkippedFile", "manifest_path", "state_dir"]


def state_dir(output: Path) -> Path:
    """The output's state folder: manifest, lock, run reports, metrics."""
    return output / STATE_DIR


def manifest_path(output: Path) -> Path:
    return state_dir(output) / MANIFEST_NAME
