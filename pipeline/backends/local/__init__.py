"""The embedded offline OCR backend: PDF text layers via pypdfium2, Tesseract (tesserocr) for scans.

Pages are rendered and recognised one at a time inside worker processes; the event loop only
dispatches and collects. See docs/local-engine.md for measured figures.
"""

from pipeline.backends.local.backend import LocalBackend

__all__ = ["LocalBackend"]
