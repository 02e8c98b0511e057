"""ocr-pipeline: batch OCR for directory trees of PDFs and images."""

__version__ = "0.1.0"
