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
    images = page.get("images", [])
    if not isinstance(images, list):
        return [*problems, f"{where}.images: not an array"]
    for j, image in enumerate(images):
        problems += _image_problems(image, f"{where}.images[{j}]")
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
