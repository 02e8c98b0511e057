"""LocalBackend: the offline engine behind the Backend interface.

The event loop only dispatches: every CPU-bound step (PDF text layer, rendering, OCR) runs on a
`PageExecutor`: a ProcessPoolExecutor with one process per core (Tesseract's pip build has no
OpenMP; threads would serialise), or a Dask cluster when `local.cluster` is set. A chunk's pages
are separate tasks, so one chunk uses every core, and each worker holds one rendered page at a time.
"""

from __future__ import annotations

import asyncio
from typing import Any

from pipeline.backends.base import OCRResponse
from pipeline.backends.local import worker
from pipeline.backends.local.executors import PageExecutor, ProcessExecutor
from pipeline.backends.local.langdata import check_languages, has_osd, resolve_tessdata
from pipeline.config import LocalSettings, OutputSettings
from pipeline.cpus import usable_cores
from pipeline.errors import Category, DocumentError, InputError, PipelineError
from pipeline.models import Chunk
from pipeline.reasons import exception_text

IMAGE_TYPES = frozenset({"image/png", "image/jpeg", "image/tiff", "image/webp", "image/gif", "image/bmp"})


class LocalBackend:
    """Text layers and Tesseract OCR in a process pool, or on a Dask cluster (`local.cluster`);
    answers in Mistral's OCRResponse shape."""

    name = "local"
    bytes_sent = 0  # nothing leaves the machine (a cluster's traffic is not a service's bytes)

    def __init__(self, settings: LocalSettings, model: str = "local-tesseract",
                 executor: PageExecutor | None = None, outputs: OutputSettings | None = None) -> None:
        self.model = model
        self.settings = settings
        self.cluster: str | None = settings.cluster or None
        if executor is None and self.cluster:
            # Each worker resolves and checks its own language data (cluster.connect).
            from pipeline.backends.local.cluster import connect

            executor = connect(self.cluster, settings.language, settings.tessdata_path)
            tessdata = settings.tessdata_path or ""
            self.orientation_detection = True  # decided on each worker by its own data
        else:
            folder, source = resolve_tessdata(settings.tessdata_path)
            check_languages(folder, source, settings.language)
            tessdata = str(folder)
            self.orientation_detection = has_osd(folder)
        self.tessdata = tessdata
        self.executor: PageExecutor = executor or ProcessExecutor(
            settings.processes or usable_cores()
        )
        self._cfg = worker.WorkerConfig(
            tessdata=tessdata,
            language=settings.language,
            dpi=settings.dpi,
            force_ocr=settings.force_ocr,
            max_pixels=settings.max_pixels,
            **_output_options(outputs or OutputSettings()),
        )

    @property
    def processes(self) -> int:
        """Pages that can be read at once now: this machine's processes, or the cluster's
        threads (growing and shrinking with its workers). The run opens twice as many documents."""
        return self.executor.capacity

    @property
    def workers(self) -> int:
        """OCR processes here, or Dask workers connected now (progress, report, metrics)."""
        return self.executor.workers

    @property
    def peak_workers(self) -> int:
        """The most workers at once during the run (the report's `workers`)."""
        return self.executor.peak_workers

    async def _call(self, fn: Any, *args: Any) -> Any:
        try:
            outcome = await self.executor.run(fn, *args)
        except (PipelineError, asyncio.CancelledError):
            raise
        except Exception as exc:  # a bug in the worker: this document fails, the run goes on
            raise DocumentError(
                Category.INTERNAL,
                f"the local OCR engine failed unexpectedly: {type(exc).__name__}: {exception_text(exc)}",
                hint="please report this with the input file",
            ) from exc
        failure = outcome.failure
        if failure is not None:
            cls = worker.ERRORS.get(failure.kind)
            if cls is None:
                raise DocumentError(Category.INTERNAL, failure.message, hint=failure.hint)
            raise cls(failure.message, hint=failure.hint) if failure.hint else cls(failure.message)
        return outcome.value

    async def warm_up(self) -> None:
        """Start every worker and load Tesseract in it (optional: the first page does it too)."""
        await asyncio.gather(*(self._call(worker.warm_up, self._cfg) for _ in range(self.processes)))

    # -- Backend interface -----------------------------------------------------------------------

    async def ocr(self, chunk: Chunk) -> OCRResponse:
        data = chunk.data
        if chunk.media_type == "application/pdf":
            pages = await self._ocr_pdf(data)
        elif chunk.media_type in IMAGE_TYPES:
            pages = await self._ocr_image(data, chunk.media_type)
        else:
            raise InputError(
                f"unsupported media type {chunk.media_type!r} for the local engine",
                hint="the local engine reads PDF, PNG, JPEG, TIFF, WebP, GIF and BMP",
            )
        return {
            "pages": pages,
            "model": self.model,
            "usage_info": {"pages_processed": len(pages), "doc_size_bytes": len(data)},
        }

    async def _ocr_pdf(self, data: bytes) -> list[dict[str, Any]]:
        shared = self.executor.share(data)  # the chunk's bytes, sent once for all its pages
        try:
            count, done, todo = await self._call(worker.scan_pdf, shared, self._cfg)
            ocred = await self._gather(
                [self._call(worker.ocr_pdf_page, shared, i, self._cfg) for i in todo]
            )
        finally:
            self.executor.unshare(shared)
        return _one_per_index([*done, *ocred], count)

    async def _ocr_image(self, data: bytes, media_type: str) -> list[dict[str, Any]]:
        shared = self.executor.share(data)
        try:
            frames = await self._call(worker.scan_image, shared, media_type, self._cfg)
            pages = await self._gather(
                [self._call(worker.ocr_image_page, shared, media_type, i, self._cfg)
                 for i in range(frames)]
            )
        finally:
            self.executor.unshare(shared)
        return _one_per_index(pages, frames)

    @staticmethod
    async def _gather(calls: list[Any]) -> list[Any]:
        """All pages, or the first failure with the rest cancelled (not left running)."""
        tasks = [asyncio.ensure_future(c) for c in calls]
        try:
            return list(await asyncio.gather(*tasks))
        except BaseException:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise

    async def close(self) -> None:
        await self.executor.close()


def _output_options(outputs: OutputSettings) -> dict[str, bool]:
    """The run's output options the engine honours itself, as the hosted API does: header and
    footer out of the markdown only when asked, typed blocks, the pictures' pixels."""
    return {
        "extract_header": outputs.extract_header,
        "extract_footer": outputs.extract_footer,
        "include_blocks": outputs.include_blocks,
        "include_images": outputs.include_images,
    }


def _one_per_index(pages: list[dict[str, Any]], count: int) -> list[dict[str, Any]]:
    """The chunk's pages in order, exactly one per index 0..count-1 (an answer that lost or
    repeated a page is a bug, never written as a document)."""
    pages = sorted(pages, key=lambda p: p["index"])
    if [p["index"] for p in pages] != list(range(count)):
        raise DocumentError(
            Category.INTERNAL,
            f"the local engine returned pages {[p['index'] for p in pages]} for {count} pages",
            hint="please report this with the input file",
        )
    return pages
