"""Walk the input tree: recursive, include/exclude globs, type from content, symlinks opt-in.

Files that cannot be opened or are of no supported type are still reported (as `Skipped` with a
reason), so the run report accounts for every file it saw.
"""

from __future__ import annotations

import dataclasses
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path

from pipeline.models import SourceFile
from pipeline.stages.sniff import SNIFF_BYTES, sniff

DOCUMENT_SUFFIXES = {
    ".pdf", ".png", ".jpg", ".jpeg", ".jpe", ".tif", ".tiff", ".webp", ".gif", ".bmp",
}


@dataclass(frozen=True)
class Skipped:
    """A file discovery saw but will not process, and why."""

    rel: str
    reason: str
    category: str = "input"
    failure: bool = True  # False: ignored (e.g. notes.txt), listed in the report but not failed
    size: int = 0
    mtime_ns: int = 0


def printable(name: str) -> str:
    """A file name that is not valid UTF-8 (kept by Python as surrogate escapes) with its odd
    bytes written as `\\xNN`, so it can be stored, logged and mirrored as text."""
    try:
        name.encode("utf-8")
        return name
    except UnicodeEncodeError:
        return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _matches(rel: str, patterns: list[str]) -> bool:
    """Glob match on the relative path or the bare name, ignoring case (`*.pdf` takes X.PDF)."""
    rel = rel.lower()
    name = rel.rsplit("/", 1)[-1]
    for pattern in (p.lower() for p in patterns):
        if fnmatchcase(rel, pattern) or fnmatchcase(name, pattern):
            return True
        # "**/x" should also match "x" at the top level.
        if pattern.startswith("**/") and fnmatchcase(rel, pattern[3:]):
            return True
    return False


def discover(
    root: Path,
    *,
    include: list[str] | None = None,
    exclude: list[str] | None = None,
    follow_symlinks: bool = False,
    skip_dirs: list[Path] | None = None,
    known: Callable[[str, int, int], str | None] | None = None,
) -> Iterator[SourceFile | Skipped]:
    """Yield every candidate file under `root` in a stable (sorted) order (`root` itself when
    it is a file).

    Hidden entries (dot-files and dot-folders) and `skip_dirs` (e.g. the output tree when it lies
    inside the input) are not entered. Symlinks are not followed unless asked. When asked, links
    that lead outside `root` are followed (that is what the option is for); links to anything
    inside `root`, to a folder already walked or to a file already reached are skipped: each
    document is processed, and paid for, once.
    `known(rel, size, mtime_ns)` may return the media type of a file already done with that
    size and mtime: such a file is not opened (a resume scan of a large tree only stats).
    """
    if root.is_file():
        # A single file given as the input: its relative path is its name, so its outputs are
        # <out>/NAME.json and <out>/NAME.md. Include/exclude globs do not apply to it.
        yield from _single_file(root)
        return
    walker = _Walker(root.resolve(), include or ["**/*"], exclude or [], follow_symlinks,
                     {p.resolve() for p in (skip_dirs or [])}, known)
    yield from walker.walk(walker.root, "")


@dataclass
class _Walker:
    """One walk of the input tree; remembers the folders and linked files already reached."""

    root: Path
    include: list[str]
    exclude: list[str]
    follow_symlinks: bool
    skip: set[Path]
    known: Callable[[str, int, int], str | None] | None
    seen_dirs: set[tuple[int, int]] = field(default_factory=set)
    linked_files: dict[tuple[int, int], str] = field(default_factory=dict)  # reached via links

    def walk(self, folder: Path, rel_prefix: str) -> Iterator[SourceFile | Skipped]:
        try:
            st = folder.stat()
        except OSError:
            return
        key = (st.st_dev, st.st_ino)
        if key in self.seen_dirs:
            return
        self.seen_dirs.add(key)
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            yield Skipped(rel_prefix.rstrip("/") or ".", f"cannot list folder: {exc.strerror}")
            return
        for entry in entries:
            if not entry.name.startswith("."):
                yield from self._entry(entry, rel_prefix + printable(entry.name))

    def _entry(self, entry: os.DirEntry[str], rel: str) -> Iterator[SourceFile | Skipped]:
        path = Path(entry.path)
        try:
            if entry.is_symlink():
                if not self.follow_symlinks:
                    return
                refused = self._refused_link(path, rel)
                if refused is not None:
                    yield refused
                    return
            if entry.is_dir(follow_symlinks=self.follow_symlinks):
                if path.resolve() not in self.skip:
                    yield from self.walk(path, rel + "/")
                return
            st = entry.stat(follow_symlinks=self.follow_symlinks)
        except OSError as exc:
            yield Skipped(rel, f"cannot read file information: {exc.strerror}")
            return
        if not _matches(rel, self.include) or _matches(rel, self.exclude):
            return
        if not stat.S_ISREG(st.st_mode):
            yield Skipped(rel, "not a regular file (FIFO, socket or device); skipped", failure=False)
            return
        media_type = self.known(rel, st.st_size, st.st_mtime_ns) if self.known else None
        if media_type is not None:
            yield SourceFile(path, rel, st.st_size, st.st_mtime_ns, media_type)
            return
        yield _sniff_file(path, rel, st)

    def _refused_link(self, path: Path, rel: str) -> Skipped | None:
        """Why a link is not followed (broken, inside the input, a file reached already)."""
        target = Path(os.path.realpath(path))
        if not target.exists():
            return Skipped(rel, "broken symlink or symlink loop; not followed", failure=False)
        if target.is_relative_to(self.root):
            # Whatever lies inside the input is processed at its real path, where its outputs
            # are: following the link would pay for it twice.
            what = "folder" if target.is_dir() else "file"
            return Skipped(rel, f"symlink to a {what} inside the input; processed at its real"
                           " path", failure=False)
        if target.is_file():
            tst = target.stat()
            first = self.linked_files.setdefault((tst.st_dev, tst.st_ino), rel)
            if first != rel:
                return Skipped(rel, f"symlink to the same file as {first}; processed once",
                               failure=False)
        return None


def _single_file(path: Path) -> Iterator[SourceFile | Skipped]:
    rel = printable(path.name)
    try:
        st = path.stat()
    except OSError as exc:
        yield Skipped(rel, f"cannot read file information: {exc.strerror}")
        return
    found = _sniff_file(path.resolve(), rel, st)
    if isinstance(found, Skipped) and not found.failure:
        # Named on the command line: not a document is a failure, not a file to ignore.
        found = dataclasses.replace(found, failure=True)
    yield found


def _sniff_file(path: Path, rel: str, st: os.stat_result) -> SourceFile | Skipped:
    # A file named like a document that is not one is a failure the operator must see;
    # any other file (notes.txt, Thumbs.db) is only listed as ignored.
    claims_document = path.suffix.lower() in DOCUMENT_SUFFIXES
    if st.st_size == 0:
        return Skipped(rel, "empty file (0 bytes); copy it again from its source, or exclude it",
                       failure=claims_document, size=0, mtime_ns=st.st_mtime_ns)
    try:
        with open(path, "rb") as fh:
            head = fh.read(SNIFF_BYTES)
    except OSError as exc:
        return Skipped(rel, f"cannot open file: {exc.strerror}; check its permissions",
                       size=st.st_size, mtime_ns=st.st_mtime_ns)
    media_type = sniff(head)
    if media_type is None:
        return Skipped(
            rel,
            "content is not a PDF or a supported image (PNG, JPEG, TIFF, WebP, GIF, BMP)"
            + (f" although it is named {path.suffix}; replace it with the real document,"
               " or exclude it" if claims_document else ""),
            failure=claims_document,
            size=st.st_size,
            mtime_ns=st.st_mtime_ns,
        )
    return SourceFile(
        path=path, rel=rel, size=st.st_size, mtime_ns=st.st_mtime_ns, media_type=media_type
    )
