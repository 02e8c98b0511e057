"""OCR backends: one interface, a chunk in, a Mistral-shaped OCRResponse dict out."""
