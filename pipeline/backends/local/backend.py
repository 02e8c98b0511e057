"""LocalBackend: the offline engine behind the Backend interface.

The event loop only dispatches: every CPU-bound step (PDF text layer, rendering, OCR) runs in a
ProcessPoolExecutor with one process per core (Tesseract's pip build has no OpenMP; threads would
serialise). A chunk's pages are separate tasks, so one chunk uses every core, and each worker
holds one rendered page at a time.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from pipeline.backends.base import OCRResponse
from pipeline.backends.local import worker
from pipeline.backends.local.langdata import check_languages, has_osd, resolve_tessdata
from pipeline.config import LocalSettings
from pipeline.errors import Category, DocumentError, InputError, RetryableError
from pipeline.models import Chunk
from pipeline.reasons import exception_text

IMAGE_TYPES = frozenset({"image/png", "image/jpeg", "image/tiff", "image/webp", "image/gif", "image/bmp"})


class LocalBackend:
    """Text layers and Tesseract OCR in a process pool; answers in Mistral's OCRResponse shape."""

    name = "local"
    bytes_sent = 0  # nothing leaves the machine

    def __init__(self, settings: LocalSettings, model: str = "local-tesseract") -> None:
        self.model = model
        self.settings = settings
        folder, source = resolve_tessdata(settings.tessdata_path)
        check_languages(folder, source, settings.language)
        self.tessdata = folder
        self.orientation_detection = has_osd(folder)
        self.processes = settings.processes or os.cpu_count() or 1
        self._cfg = worker.WorkerConfig(
            tessdata=str(folder),
            language=settings.language,
            dpi=settings.dpi,
            force_ocr=settings.force_ocr,
            max_pixels=settings.max_pixels,
        )
        self._pool: ProcessPoolExecutor | None = None
        self._closed = False

    # -- pool ------------------------------------------------------------------------------------

    def _executor(self) -> ProcessPoolExecutor:
        if self._closed:
            raise RuntimeError("LocalBackend is closed")
        if self._pool is None:
            # spawn, not fork: the parent runs an event loop and threads; forking those is unsafe.
            self._pool = ProcessPoolExecutor(
                max_workers=self.processes,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=worker.init_process,
            )
        return self._pool

    async def _call(self, fn: Any, *args: Any) -> Any:
        pool = self._executor()
        loop = asyncio.get_running_loop()
        try:
            with worker.terminal_signals_blocked():  # a worker started now is born deaf to Ctrl-C
                future = loop.run_in_executor(pool, fn, *args)
            outcome = await future
        except KeyboardInterrupt as exc:
            # Only a worker can raise it here (the run's own SIGINT goes to its signal handler);
            # it must not escape into the event loop and end the run without its report.
            raise RetryableError(
                "a local OCR worker process was interrupted", category=Category.BACKEND
            ) from exc
        except BrokenProcessPool as exc:
            # A worker died (a crash inside a native library, or the OOM killer). Start a fresh
            # pool for what follows; this chunk may be retried.
            if self._pool is pool:
                self._pool = None
                pool.shutdown(wait=False, cancel_futures=True)
            raise RetryableError(
                "a local OCR worker process died (native crash or out of memory)",
                category=Category.BACKEND,
            ) from exc
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
        count, done, todo = await self._call(worker.scan_pdf, data, self._cfg)
        ocred = await self._gather([self._call(worker.ocr_pdf_page, data, i, self._cfg) for i in todo])
        pages = sorted([*done, *ocred], key=lambda p: p["index"])
        assert len(pages) == count
        return pages

    async def _ocr_image(self, data: bytes, media_type: str) -> list[dict[str, Any]]:
        frames = await self._call(worker.scan_image, data, media_type, self._cfg)
        return await self._gather(
            [self._call(worker.ocr_image_page, data, media_type, i, self._cfg) for i in range(frames)]
        )

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
        self._closed = True
        pool, self._pool = self._pool, None
        if pool is not None:
            await asyncio.get_running_loop().run_in_executor(
                None, lambda: pool.shutdown(wait=True, cancel_futures=True)
            )
