"""Write a document's outputs into the mirrored output tree, atomically, never outside it.

`<out>/<rel>.json`, `<out>/<rel>.md` and, when the service returned them, `<out>/<rel>.images/<id>`
(image data), `<out>/<rel>.tables/<id>` (tables moved out of the markdown, `table_format`) and
`<out>/<rel>.annotation.json` (document annotations). Every file is written to a temporary name
in its own folder, fsynced and renamed into place; the JSON goes last, so its presence means the
document's outputs are complete. Every link of the markdown resolves: a link to an image or a
table the service did not deliver becomes plain text.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline import crashpoints, jsonio
from pipeline.config.groups import OutputSettings
from pipeline.errors import Category, DocumentError
from pipeline.stages.encode import decode_data_url
from pipeline.stages.markdown_links import rewrite_links

_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]")


def safe_component(name: str, fallback: str = "item") -> str:
    """Reduce a server-supplied name to one harmless path component."""
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = _SAFE_NAME.sub("_", name).lstrip(".")[:100]
    return name or fallback


NAME_MAX = 255
_LONGEST_SUFFIX = len(".annotation.json")


def _fit_name(name: str) -> str:
    """Shorten a file name so `<name>.annotation.json` still fits the 255-byte limit; a hash of the full
    name keeps shortened names distinct."""
    if len(name.encode("utf-8", "surrogateescape")) + _LONGEST_SUFFIX <= NAME_MAX:
        return name
    digest = hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()[:12]
    keep = NAME_MAX - _LONGEST_SUFFIX - len(digest) - 1
    head = name.encode("utf-8", "surrogateescape")[:keep].decode("utf-8", "ignore")
    return f"{head}~{digest}"


def output_base(out_root: Path, rel: str) -> Path:
    """`<out>/<rel>`: the stem every output of the document starts with. Refuses escapes."""
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        raise DocumentError(Category.INPUT, f"{rel}: path cannot be mirrored safely")
    parts = [_fit_name(p) for p in parts]
    base = out_root.joinpath(*parts)
    ensure_inside(out_root, base)
    return base


def ensure_inside(root: Path, path: Path) -> None:
    root_abs = os.path.abspath(root)
    if os.path.commonpath([root_abs, os.path.abspath(path)]) != root_abs:
        raise DocumentError(Category.INTERNAL, f"refused to write outside the output tree: {path}")


def fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _temp_name(path: Path) -> Path:
    """The one temporary name for `path`: a write killed half-way leaves debris under this name
    only, and the next write of the same file reuses and renames it (no folder scan needed)."""
    name = path.name
    if len(name.encode("utf-8", "surrogateescape")) > NAME_MAX - 6:
        name = hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()
    return path.with_name(f".{name}.tmp")


def atomic_write(path: Path, data: bytes, *, sync_dir: bool = True) -> None:
    """Write `data` to `path` so that a crash leaves either the old file or the new one.

    The file is fsynced before the rename; the folder's entry is fsynced after it unless the
    caller will do that once for several files (`sync_dir=False`).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(path)
    # One run per output (the lock) and one writer per document: a fixed name is safe.
    # Mode 0o666 lets the process umask decide, as for any file the user creates.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if sync_dir:
        fsync_dir(path.parent)


_BLANK_LINES = re.compile(r"\n{3,}")


@dataclass
class _Links:
    """Where the markdown's links to a document's images and tables go."""

    files: dict[str, str] = field(default_factory=dict)  # id -> relative path of the written file
    inline: dict[str, str] = field(default_factory=dict)  # table id -> content (inline_tables)
    ids: set[str] = field(default_factory=set)  # every image and table id of the document

    def rewrite(self, text: str) -> str:
        def sub(m: re.Match[str]) -> str:
            bang, alt, target = m.groups()
            if target in self.inline:
                return f"\n\n{self.inline[target].strip()}\n\n"
            if target in self.files:
                return f"{bang}[{alt}]({self.files[target]})"
            if target in self.ids:  # not delivered (no image data): text, not a dead link
                return f"[{alt}]"
            return m.group(0)

        return rewrite_links(text, sub)


def render_markdown(response: dict[str, Any], image_links: dict[str, str],
                    outputs: OutputSettings | None = None, links: _Links | None = None) -> str:
    """The pages' markdown in page order, each after a marker line naming its page number; a
    page's header and footer around it when `extract_header`/`extract_footer` and
    `markdown_headers_footers` are set."""
    links = links or _Links(files=dict(image_links))
    show_header = bool(outputs and outputs.extract_header and outputs.markdown_headers_footers)
    show_footer = bool(outputs and outputs.extract_footer and outputs.markdown_headers_footers)
    out: list[str] = []
    for page in response["pages"]:
        parts = []
        if show_header and isinstance(page.get("header"), str) and page["header"].strip():
            parts.append(links.rewrite(page["header"]).strip())
        parts.append(links.rewrite(page.get("markdown") or "").strip())
        if show_footer and isinstance(page.get("footer"), str) and page["footer"].strip():
            parts.append(links.rewrite(page["footer"]).strip())
        text = "\n\n".join(p for p in parts if p)
        if "\n\n\n" in text:
            text = _BLANK_LINES.sub("\n\n", text)
        out.append(f"<!-- page {page['index'] + 1} -->\n\n{text}\n")
    return "\n".join(out)


def _write_images(response: dict[str, Any], out_root: Path, images_dir: Path, links: _Links,
                  written: dict[str, Path]) -> None:
    for page in response["pages"]:
        for image in page.get("images") or []:
            links.ids.add(str(image.get("id")))
            payload = image.get("image_base64")
            if not isinstance(payload, str) or not payload:
                continue
            try:
                _mime, blob = decode_data_url(payload)
            except ValueError:
                image["image_base64"] = None
                image["image_error"] = "service sent image data that is not a base64 data URL"
                continue
            name = safe_component(str(image.get("id", "")), "image.bin")
            target = images_dir / name
            ensure_inside(out_root, target)
            atomic_write(target, blob, sync_dir=False)
            link = f"{images_dir.name}/{name}"
            image["image_base64"] = None
            image["image_path"] = link
            links.files[str(image.get("id"))] = link
            written[f"image:{name}"] = target


def _write_tables(response: dict[str, Any], out_root: Path, tables_dir: Path, links: _Links,
                  written: dict[str, Path], inline: bool) -> None:
    """Each table's content into `<rel>.tables/<id>`; the JSON keeps the content and says where."""
    for page in response["pages"]:
        for table in page.get("tables") or []:
            if not isinstance(table, dict):
                continue
            table_id = str(table.get("id"))
            links.ids.add(table_id)
            content = table.get("content")
            if not isinstance(content, str):
                continue
            name = safe_component(table_id, "table.md")
            target = tables_dir / name
            ensure_inside(out_root, target)
            atomic_write(target, content.encode("utf-8"), sync_dir=False)
            link = f"{tables_dir.name}/{name}"
            table["path"] = link
            written[f"table:{name}"] = target
            if inline:
                links.inline[table_id] = content
            else:
                links.files[table_id] = link


def write_document(
    out_root: Path, rel: str, response: dict[str, Any], source: dict[str, Any],
    outputs: OutputSettings | None = None,
) -> dict[str, Path]:
    """Write JSON, markdown, images, tables and annotations for one document; return the paths
    written.

    Raises DocumentError(storage) when the disk refuses (full, read-only, permissions).
    """
    base = output_base(out_root, rel)
    images_dir = base.with_name(base.name + ".images")
    tables_dir = base.with_name(base.name + ".tables")
    annotation_path = base.with_name(base.name + ".annotation.json")
    json_path = base.with_name(base.name + ".json")
    md_path = base.with_name(base.name + ".md")
    written: dict[str, Path] = {}
    links = _Links()
    try:
        _write_images(response, out_root, images_dir, links, written)
        _write_tables(response, out_root, tables_dir, links, written,
                      inline=bool(outputs and outputs.inline_tables))
        if response.get("document_annotations"):
            atomic_write(annotation_path, jsonio.pretty(response["document_annotations"]),
                         sync_dir=False)
            written["annotation"] = annotation_path
        document = dict(response)
        document["source"] = source
        md = render_markdown(response, {}, outputs, links)
        atomic_write(md_path, md.encode("utf-8"), sync_dir=False)
        written["markdown"] = md_path
        crashpoints.reached("mid_store")
        atomic_write(json_path, jsonio.pretty(document), sync_dir=False)
        written["json"] = json_path
        for folder, prefix in ((images_dir, "image:"), (tables_dir, "table:")):
            if any(k.startswith(prefix) for k in written):
                fsync_dir(folder)
        fsync_dir(json_path.parent)  # one folder sync for the markdown, annotation and JSON
    except OSError as exc:
        for path in written.values():  # a failed document leaves no outputs behind
            with contextlib.suppress(OSError):
                path.unlink()
        raise DocumentError(
            Category.STORAGE,
            f"{rel}: cannot write output: {exc.strerror or exc}",
            hint="free disk space or fix the output folder's permissions, then run again",
        ) from None
    return written


def remove_outputs(out_root: Path, rel: str) -> None:
    """Remove a document's previous outputs (before a changed document is redone)."""
    base = output_base(out_root, rel)
    for suffix in (".json", ".md", ".annotation.json"):
        with contextlib.suppress(FileNotFoundError):
            base.with_name(base.name + suffix).unlink()
    for folder in (".images", ".tables"):
        shutil.rmtree(base.with_name(base.name + folder), ignore_errors=True)
