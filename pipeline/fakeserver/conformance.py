"""Does an answer conform to the published `OCRResponse` schema? A list of problems, empty when
it does. The schema's facts are copied here (required keys, types, minimums), not read from a
file, so the fake can check its own answers in tests without the reference at hand."""

from __future__ import annotations

from typing import Any

Problems = list[str]


def _is_int(value: Any, minimum: int | None = 0) -> bool:
    ok = isinstance(value, int) and not isinstance(value, bool)
    return ok and (minimum is None or value >= minimum)


def _check_keys(obj: Any, where: str, required: tuple[str, ...]) -> Problems:
    if not isinstance(obj, dict):
        return [f"{where}: not an object"]
    return [f"{where}.{key}: required" for key in required if key not in obj]


def response_problems(answer: Any) -> Problems:
    """Problems of an OCRResponse: pages, model, usage_info required; document_annotation a
    string or null; each page an OCRPageObject."""
    problems = _check_keys(answer, "response", ("pages", "model", "usage_info"))
    if problems and not isinstance(answer, dict):
        return problems
    if not isinstance(answer.get("model", ""), str):
        problems.append("response.model: not a string")
    annotation = answer.get("document_annotation")
    if annotation is not None and not isinstance(annotation, str):
        problems.append("response.document_annotation: not a string or null")
    problems += _usage_problems(answer.get("usage_info", {}))
    pages = answer.get("pages", [])
    if not isinstance(pages, list):
        return [*problems, "response.pages: not an array"]
    for i, page in enumerate(pages):
        problems += _page_problems(page, f"pages[{i}]")
    return problems


def _usage_problems(usage: Any) -> Problems:
    problems = _check_keys(usage, "usage_info", ("pages_processed",))
    if not isinstance(usage, dict):
        return problems
    if "pages_processed" in usage and not _is_int(usage["pages_processed"]):
        problems.append("usage_info.pages_processed: not an integer >= 0")
    size = usage.get("doc_size_bytes")
    if size is not None and not _is_int(size, None):
        problems.append("usage_info.doc_size_bytes: not an integer or null")
    return problems


def _page_problems(page: Any, where: str) -> Problems:
    problems = _check_keys(page, where, ("index", "markdown", "images", "dimensions"))
    if not isinstance(page, dict):
        return problems
    if "index" in page and not _is_int(page["index"]):
        problems.append(f"{where}.index: not an integer >= 0")
    if not isinstance(page.get("markdown", ""), str):
        problems.append(f"{where}.markdown: not a string")
    for key in ("header", "footer"):
        if page.get(key) is not None and not isinstance(page[key], str):
            problems.append(f"{where}.{key}: not a string or null")
    for key in ("tables", "hyperlinks"):
        if key in page and not isinstance(page[key], list):
            problems.append(f"{where}.{key}: not an array")
    dims = page.get("dimensions")
    if dims is not None:
        problems += _check_keys(dims, f"{where}.dimensions", ("dpi", "height", "width"))
        if isinstance(dims, dict):
            problems += [f"{where}.dimensions.{k}: not an integer >= 0"
                         for k in ("dpi", "height", "width") if k in dims and not _is_int(dims[k])]
    for j, table in enumerate(page.get("tables") or []):
        problems += _table_problems(table, f"{where}.tables[{j}]")
    if page.get("confidence_scores") is not None:
        problems += _page_score_problems(page["confidence_scores"], f"{where}.confidence_scores")
    blocks = page.get("blocks")
    if blocks is not None and not isinstance(blocks, list):
        problems.append(f"{where}.blocks: not an array or null")
    for j, block in enumerate(blocks or []):
        problems += _block_problems(block, f"{where}.blocks[{j}]")
    images = page.get("images", [])
    if not isinstance(images, list):
        return [*problems, f"{where}.images: not an array"]
    for j, image in enumerate(images):
        problems += _image_problems(image, f"{where}.images[{j}]")
    return problems


BLOCK_TYPES = frozenset({"text", "list", "image", "table", "title", "equation", "caption", "code",
                         "references", "aside_text", "header", "footer", "signature"})
_CORNERS = ("top_left_x", "top_left_y", "bottom_right_x", "bottom_right_y")


def _score(value: Any, nullable: bool = False) -> bool:
    if value is None:
        return nullable
    return isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= 1


def _word_problems(words: Any, where: str) -> Problems:
    """OCRConfidenceScore items: text, confidence 0..1, start_index >= 0."""
    if not isinstance(words, list):
        return [f"{where}: not an array"]
    problems: Problems = []
    for k, word in enumerate(words):
        problems += _check_keys(word, f"{where}[{k}]", ("text", "confidence", "start_index"))
        if isinstance(word, dict) and not (_score(word.get("confidence"))
                                           and _is_int(word.get("start_index"))):
            problems.append(f"{where}[{k}]: confidence not in 0..1 or start_index not >= 0")
    return problems


def _table_problems(table: Any, where: str) -> Problems:
    """OCRTableObject: id, content, format (markdown | html) required."""
    problems = _check_keys(table, where, ("id", "content", "format"))
    if not isinstance(table, dict):
        return problems
    if table.get("format", "html") not in ("markdown", "html"):
        problems.append(f"{where}.format: not 'markdown' or 'html'")
    if not isinstance(table.get("content", ""), str) or not isinstance(table.get("id", ""), str):
        problems.append(f"{where}: id and content must be strings")
    if table.get("word_confidence_scores") is not None:
        problems += _word_problems(table["word_confidence_scores"], f"{where}.word_confidence_scores")
    return problems


def _page_score_problems(scores: Any, where: str) -> Problems:
    """OCRPageConfidenceScores: average and minimum (0..1) required, words optional."""
    keys = ("average_page_confidence_score", "minimum_page_confidence_score")
    problems = _check_keys(scores, where, keys)
    if not isinstance(scores, dict):
        return problems
    problems += [f"{where}.{k}: not a number in 0..1" for k in keys if k in scores
                 and not _score(scores[k])]
    if "word_confidence_scores" in scores:
        problems += _word_problems(scores["word_confidence_scores"], f"{where}.word_confidence_scores")
    return problems


def _block_problems(block: Any, where: str) -> Problems:
    """One of the 13 block schemas: corners (integers >= 0) and content required, `type` from
    the discriminator's mapping, `image_id` required on image blocks."""
    problems = _check_keys(block, where, (*_CORNERS, "content"))
    if not isinstance(block, dict):
        return problems
    kind = block.get("type", "text")
    if kind not in BLOCK_TYPES:
        problems.append(f"{where}.type: {kind!r} is not a block type")
    problems += [f"{where}.{k}: not an integer >= 0" for k in _CORNERS if k in block
                 and not _is_int(block[k])]
    if not isinstance(block.get("content", ""), str):
        problems.append(f"{where}.content: not a string")
    if kind == "image" and not isinstance(block.get("image_id"), str):
        problems.append(f"{where}.image_id: required (a string) on an image block")
    if kind == "table" and block.get("table_id") is not None and not isinstance(block["table_id"], str):
        problems.append(f"{where}.table_id: not a string or null")
    scores = block.get("confidence_scores")
    if scores is not None:
        keys = ("average_content_confidence_score", "minimum_content_confidence_score",
                "block_type_confidence_score")
        if not isinstance(scores, dict):
            problems.append(f"{where}.confidence_scores: not an object or null")
        else:
            problems += [f"{where}.confidence_scores.{k}: not a number in 0..1 or null"
                         for k in keys if not _score(scores.get(k), nullable=True)]
    return problems


def _image_problems(image: Any, where: str) -> Problems:
    corners = ("top_left_x", "top_left_y", "bottom_right_x", "bottom_right_y")
    problems = _check_keys(image, where, ("id", *corners))
    if not isinstance(image, dict):
        return problems
    if not isinstance(image.get("id", ""), str):
        problems.append(f"{where}.id: not a string")
    problems += [f"{where}.{k}: not an integer >= 0 or null"
                 for k in corners if image.get(k) is not None and not _is_int(image[k])]
    for key in ("image_base64", "image_annotation"):
        if image.get(key) is not None and not isinstance(image[key], str):
            problems.append(f"{where}.{key}: not a string or null")
    return problems
