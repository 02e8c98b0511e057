"""The resumable manifest: SQL in `database`, the writer thread in `writer`."""

from pipeline.manifest.database import DocumentRow, Manifest, ManifestError, PlannedDocument

__all__ = ["DocumentRow", "Manifest", "ManifestError", "PlannedDocument"]
