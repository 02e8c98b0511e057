"""Content dedup across runs: a document whose bytes equal those of a document finished in an
earlier run of the same output is made from that document's stored outputs, not OCR'd again.

The stored JSON is the merged answer plus its `source` block, with the images as files beside
it. It is taken only when it still says the same content (`source.sha256`) and was made with the
same settings that shape an answer (`source.options_sha256`: backend, models, the request's
options, the local engine's settings and version, the chunk limits when annotations are
asked). Anything missing, unreadable or made otherwise: the document is OCR'd as usual, and
nothing is lost but the saving.
"""

from __future__ import annotations

import base64
import hashlib
import json
import mimetypes
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline import __version__
from pipeline.backends.request_options import request_options, service_models
from pipeline.config import Settings
from pipeline.stages.store import output_base, safe_component

TWINS_TRIED = 3  # done documents of the same content looked at, at most, before paying again


def options_sha256(settings: Settings) -> str:
    """A digest of every setting that shapes an answer (not how it is rendered or stored)."""
    svc, outputs = settings.service, settings.outputs
    shape: dict[str, Any] = {
        "backend": svc.backend,
        "models": sorted(set(service_models(svc))),
        "include_images": outputs.include_images,
        "request": request_options(svc, outputs),  # annotation schemas by content, not name
        "extra_request": svc.extra_request,
    }
    if svc.backend == "local":  # the engine is ours: its version shapes the answer too
        local = settings.local
        shape["local"] = {"language": local.language, "dpi": local.dpi,
                          "force_ocr": local.force_ocr, "tessdata_path": local.tessdata_path,
                          "version": __version__}
    if outputs.document_annotation_schema or outputs.document_annotation_prompt:
        limits = settings.limits  # a document annotation is made per request: per chunk
        shape["chunks"] = [limits.max_pages_per_request, limits.max_bytes_per_request]
    text = json.dumps(shape, sort_keys=True, default=str, ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


@dataclass(frozen=True)
class StoredTwin:
    """A finished document's answer, rebuilt from its outputs, ready to be stored again."""

    rel: str
    response: dict[str, Any]  # the merged answer, image data back in `image_base64`
    source: dict[str, Any]  # its source block (chunk layout, repair notes)


def load_twin(out_root: Path, rel: str, sha256: str, options: str) -> StoredTwin | None:
    """`rel`'s stored answer if its outputs are complete, of content `sha256`, made with
    `options`; else None (whatever is wrong with them: the document is then OCR'd)."""
    try:
        return _load(out_root, rel, sha256, options)
    except Exception:  # noqa: BLE001 - outputs edited, damaged or half-gone: not a twin
        return None


def _load(out_root: Path, rel: str, sha256: str, options: str) -> StoredTwin | None:
    base = output_base(out_root, rel)
    json_path = _with_suffix(base, ".json")
    document = json.loads(json_path.read_text(encoding="utf-8"))
    if not isinstance(document, dict):
        return None
    source = document.pop("source", None)
    if not isinstance(source, dict) or source.get("sha256") != sha256 \
            or source.get("options_sha256") != options or not _well_formed(document):
        return None
    _restore_images(document, base, out_root)
    return StoredTwin(rel, document, source)


def _well_formed(document: dict[str, Any]) -> bool:
    pages = document.get("pages")
    return isinstance(pages, list) and all(
        isinstance(p, dict) and isinstance(p.get("index"), int)
        and isinstance(p.get("markdown", ""), str)
        and isinstance(p.get("images") or [], list)
        and all(isinstance(im, dict) for im in p.get("images") or [])
        for p in pages)


def _with_suffix(base: Path, suffix: str) -> Path:
    return base.with_name(base.name + suffix)


def _restore_images(document: dict[str, Any], base: Path, out_root: Path) -> None:
    """Put each stored image file back into its `image_base64` as a data URL (the store writes
    it out again under the new document's name). Only the document's own image files are read:
    `<name>.images/<safe name>`, no symbolic link on the way out of the tree."""
    folder = _with_suffix(base, ".images")
    root = out_root.resolve()
    for page in document["pages"]:
        for image in page.get("images") or []:
            link = image.get("image_path")
            if not isinstance(link, str) or not link:
                continue
            name = link.rsplit("/", 1)[-1]
            if link != f"{folder.name}/{name}" or safe_component(name) != name:
                raise ValueError(f"image link {link!r} is not one of the document's files")
            path = folder / name
            if not path.resolve().is_relative_to(root):
                raise ValueError(f"image link {link!r} leads out of the output tree")
            blob = path.read_bytes()
            mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            image["image_base64"] = f"data:{mime};base64,{base64.b64encode(blob).decode('ascii')}"
            del image["image_path"]


def same_content_source(twin: StoredTwin) -> dict[str, Any]:
    """What the new document's source block takes over from its twin's: the chunk layout and
    repair notes (same bytes, same cut)."""
    keep = ("chunks", "repaired", "repair_notes")
    return {k: twin.source[k] for k in keep if k in twin.source}
