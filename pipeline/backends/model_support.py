"""Which OCR models support which of the output options (`settings.outputs`), from the facts in
docs/outputs.md: table_format, extract_header and extract_footer since OCR 3 (mistral-ocr-2512),
include_blocks since OCR 4 (mistral-ocr-4-0, -4-1, mistral-ocr-latest).

A known model that cannot honour an option is a config error (the run would pay for answers
without what was asked for, or be refused with 422 on every request). Where the service decides
(a model name we do not know, an Azure deployment whose name does not say its version), the run
goes on with a warning.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from pipeline.config.groups import OutputSettings

# Mistral's platform names and their generation. 2503/2505 are retired but still meet old configs.
GENERATION: dict[str, int] = {
    "mistral-ocr-2503": 2,
    "mistral-ocr-2505": 2,
    "mistral-ocr-2512": 3,
    "mistral-ocr-4-0": 4,
    "mistral-ocr-4-1": 4,
    "mistral-ocr-latest": 4,
}
GENERATION_NAMES = {2: "OCR 2 (retired)", 3: "OCR 3", 4: "OCR 4"}
MODELS_FOR = {3: "mistral-ocr-2512, mistral-ocr-4-0, mistral-ocr-4-1, mistral-ocr-latest",
              4: "mistral-ocr-4-0, mistral-ocr-4-1, mistral-ocr-latest"}


@dataclass(frozen=True)
class Finding:
    key: str  # the settings key at fault, for the message's "where"
    message: str


def requested(o: OutputSettings) -> dict[str, int]:
    """The service options set, each with the model generation it needs (0: any)."""
    needs: dict[str, int] = {}
    if o.table_format:
        needs["table_format"] = 3
    if o.extract_header:
        needs["extract_header"] = 3
    if o.extract_footer:
        needs["extract_footer"] = 3
    if o.include_blocks:
        needs["include_blocks"] = 4
    if o.confidence_scores_granularity == "block":
        needs["confidence_scores_granularity"] = 4  # block scores live on the blocks
    elif o.confidence_scores_granularity:
        needs["confidence_scores_granularity"] = 0  # the reference names no minimum model
    for key in ("document_annotation_schema", "document_annotation_prompt", "bbox_annotation_schema"):
        if getattr(o, key):
            needs[key] = 0
    return needs


def check_options(o: OutputSettings, backend: str, models: Iterable[str]) -> tuple[list[Finding],
                                                                                    list[Finding]]:
    """(errors, warnings) for these output options with this backend and its models."""
    errors: list[Finding] = []
    warnings: list[Finding] = []
    if o.document_annotation_prompt and not o.document_annotation_schema:
        errors.append(Finding("document_annotation_prompt", "document_annotation_prompt needs"
                              " document_annotation_schema (the API answers a prompt only with a"
                              " format to fill)"))
    if o.confidence_scores_granularity == "block" and not o.include_blocks:
        errors.append(Finding("confidence_scores_granularity", "confidence_scores_granularity:"
                              " block puts the scores on the blocks: set include_blocks: true too"))
    needs = requested(o)
    if backend == "local":
        return errors + _local_errors(o), warnings + _local_warnings(o)
    if not needs:
        return errors, warnings
    for model in dict.fromkeys(models):
        generation = GENERATION.get(model)
        if backend == "azure" or generation is None:
            who = "an Azure deployment" if backend == "azure" else "a model name not known here"
            warnings.append(Finding("model", f"model {model!r} is {who}: whether it honours "
                                    + ", ".join(needs) + " is the service's decision (older"
                                    " deployments answer 422 to options they do not know)"))
            continue
        for key, minimum in needs.items():
            if generation < minimum:
                errors.append(Finding(key, f"{key} needs {GENERATION_NAMES[minimum]} or later"
                                      f" ({MODELS_FOR[minimum]}); model {model!r} is"
                                      f" {GENERATION_NAMES[generation]}: change the model or"
                                      f" remove {key}"))
        if generation < 3 and "confidence_scores_granularity" in needs and needs[
                "confidence_scores_granularity"] == 0:
            warnings.append(Finding("confidence_scores_granularity", f"model {model!r} predates"
                                    " confidence scores as documented: the service decides"))
    return errors, warnings


def _local_errors(o: OutputSettings) -> list[Finding]:
    """What the embedded engine cannot do at all: it has no table extraction, no annotations."""
    return [Finding(key, f"{key} is an option of the hosted OCR models: the local engine does not"
                    " extract tables or fill annotation schemas (use backend: mistral)")
            for key in ("table_format", "document_annotation_schema", "bbox_annotation_schema")
            if getattr(o, key)]


def _local_warnings(o: OutputSettings) -> list[Finding]:
    found: list[Finding] = []
    if o.confidence_scores_granularity in ("word", "block"):
        found.append(Finding("confidence_scores_granularity", "the local engine scores whole pages"
                             " only: its pages carry page-level confidence"))
    return found
