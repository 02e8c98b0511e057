"""What the rich outputs (issue 13, docs/outputs.md) cost the client: the same tree of N
three-page documents (a table, a header and footer per page, one image per page) through the
real pipeline against the in-process fake server, once with no output option and once with
everything on (tables, header/footer, word confidence, blocks, document and bbox annotations).
Prints wall time, pages/s, the bytes written per document and the files per document.

    .venv/bin/python benchmarks/bench_rich_outputs.py --docs 200
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.config import load_settings  # noqa: E402
from pipeline.fakeserver import FakeServerOptions, start_fake_server  # noqa: E402
from pipeline.logsetup import configure_logging  # noqa: E402
from pipeline.run.runner import Run  # noqa: E402
from tests.test_rich_outputs import PAGES, SCHEMA, pdf  # noqa: E402

SCRATCH = Path("/tmp/bench-rich-outputs")
EVERYTHING = {"table_format": "html", "extract_header": True, "extract_footer": True,
              "include_blocks": True, "confidence_scores_granularity": "word"}


async def one(label: str, inp: Path, url: str, docs: int, extra: dict[str, object]) -> list[str]:
    out = SCRATCH / label
    shutil.rmtree(out, ignore_errors=True)
    settings = load_settings(None, {"backend": "mistral", "endpoint": url, "input": inp,
                                    "output": out, "rps": 0, "workers": 8, "progress": "off",
                                    "log_level": "warning", **extra},
                             env={"MISTRAL_API_KEY": "bench"})
    started = time.perf_counter()
    report = await Run(settings).execute()
    seconds = time.perf_counter() - started
    assert report.exit_code == 0 and report.documents_done == docs, report.failures
    files = [p for p in out.rglob("*") if p.is_file() and ".ocr-pipeline" not in p.parts]
    size = sum(p.stat().st_size for p in files)
    return [label, f"{seconds:.2f}", f"{report.pages_done / seconds:.0f}", f"{size / docs / 1024:.1f}",
            f"{len(files) / docs:.1f}"]


async def main(docs: int) -> None:
    configure_logging("warning")
    inp = SCRATCH / "in"
    shutil.rmtree(inp, ignore_errors=True)
    inp.mkdir(parents=True)
    data = pdf(PAGES)
    for n in range(docs):
        (inp / f"doc-{n:05}.pdf").write_bytes(data)
    schema = SCRATCH / "schema.json"
    schema.write_text(json.dumps(SCHEMA))
    server = await start_fake_server(FakeServerOptions(images_per_page=1))
    try:
        rows = [await one("plain", inp, server.url, docs, {}),
                await one("everything", inp, server.url, docs,
                          {**EVERYTHING, "document_annotation_schema": schema,
                           "bbox_annotation_schema": schema})]
    finally:
        await server.stop()
    print(f"{docs} documents x 3 pages, fake server in-process, 2 cores")
    print(f"{'outputs':<12}{'seconds':>9}{'pages/s':>9}{'KiB/doc':>9}{'files/doc':>11}")
    for row in rows:
        print(f"{row[0]:<12}{row[1]:>9}{row[2]:>9}{row[3]:>9}{row[4]:>11}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=200)
    asyncio.run(main(parser.parse_args().docs))
