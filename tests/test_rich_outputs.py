"""Everything current OCR models return, end to end against the fake server (issue 13): tables
beside the document, headers and footers, confidence for review, blocks, annotations; the options
checked against the model; every link of every markdown written here resolves."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import re
import shutil
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from reportlab.lib.pagesizes import letter
from reportlab.pdfgen import canvas

from pipeline.backends.mistral import MistralBackend
from pipeline.backends.model_support import check_options
from pipeline.commands.status import render_status, status
from pipeline.config.groups import OutputSettings
from pipeline.errors import ConfigError, ExitCode
from pipeline.fakeserver.answers import ocr_response
from pipeline.fakeserver.conformance import response_problems
from pipeline.fakeserver.documents import pdf_pages
from pipeline.fakeserver.rich import RichRequest
from pipeline.models import Chunk
from pipeline.stages.merge import merge_responses
from tests.conftest import (
    REPO,
    TEST_KEY,
    load_json,
    make_settings,
    pipeline_env,
    run_args,
    run_pipeline,
    run_pipeline_process,
)

# Three pages: a table on pages 1 and 3, smudged words (low confidence) on page 2.
PAGES = [
    ["ACME Annual Report", "Revenue by region", "Region | Q1 | Q2", "North | 10 | 12",
     "South | 7 | 9", "Page 1 of 3"],
    ["ACME Annual Report", "Sm~dged r~ceipt t~tal", "Page 2 of 3"],
    ["ACME Annual Report", "Costs by team", "Team | Cost", "Ops | 5", "Page 3 of 3"],
]
SCHEMA = {
    "type": "object",
    "properties": {
        "title": {"type": "string", "maxLength": 40},
        "year": {"type": "integer", "minimum": 1900},
        "regions": {"type": "array", "items": {"$ref": "#/$defs/region"}},
    },
    "required": ["title", "year"],
    "additionalProperties": False,
    "$defs": {"region": {"type": "object", "properties": {"name": {"type": "string"}},
                         "required": ["name"]}},
}
WRITTEN: list[Path] = []  # every output tree written by this file's runs: walked at the end
_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def pdf(pages: list[list[str]]) -> bytes:
    buf = io.BytesIO()
    c = canvas.Canvas(buf, pagesize=letter)
    for lines in pages:
        y = 740
        for line in lines:
            c.setFont("Helvetica", 12)
            c.drawString(72, y, line)
            y -= 24
        c.showPage()
    c.save()
    return buf.getvalue()


def dangling_links(out: Path) -> tuple[int, list[str]]:
    """(links checked, links that do not resolve to a file inside `out`) over every .md."""
    checked, bad = 0, []
    for md in out.rglob("*.md"):
        if ".tables" in md.parent.name:
            continue  # a stored markdown table, not a document's markdown
        for target in _LINK.findall(md.read_text(encoding="utf-8")):
            if re.match(r"^[a-z]+:", target) or target.startswith("#"):
                continue
            checked += 1
            path = (md.parent / target).resolve()
            if not path.is_file() or out.resolve() not in path.parents:
                bad.append(f"{md.relative_to(out)} -> {target}")
    return checked, bad


async def run(tmp_path: Path, fake_server: Any, name: str = "out", server: Any = None,
              pages: list[list[str]] = PAGES, serve: dict[str, Any] | None = None,
              **overrides: Any) -> tuple[Any, Path]:
    server = server or await fake_server(**(serve or {}))
    inp = tmp_path / "in"
    inp.mkdir(exist_ok=True)
    (inp / "doc.pdf").write_bytes(pdf(pages))
    out = tmp_path / name
    report = await run_pipeline(inp, out, server.url, **overrides)
    WRITTEN.append(out)
    assert dangling_links(out)[1] == []
    return report, out


def write_schema(tmp_path: Path, schema: dict[str, Any] = SCHEMA, name: str = "report.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(schema))
    return path


def test_the_link_walker_sees_a_dangling_link(tmp_path: Path) -> None:
    (tmp_path / "a.pdf.images").mkdir()
    (tmp_path / "a.pdf.images/img-0.jpeg").write_bytes(b"x")
    (tmp_path / "a.pdf.md").write_text("![i](a.pdf.images/img-0.jpeg) [t](a.pdf.tables/tbl-0.html)"
                                       " [w](https://example.com) [up](../outside.md)")
    (tmp_path.parent / "outside.md").write_text("not ours")
    checked, bad = dangling_links(tmp_path)
    assert checked == 3
    assert bad == ["a.pdf.md -> a.pdf.tables/tbl-0.html", "a.pdf.md -> ../outside.md"]


async def test_html_tables_are_stored_beside_the_document_with_ids_unique_across_chunks(
        tmp_path: Path, fake_server: Any) -> None:
    report, out = await run(tmp_path, fake_server, table_format="html", max_pages_per_request=1)
    assert report.exit_code == 0
    doc = load_json(out / "doc.pdf.json")
    tables = [t for p in doc["pages"] for t in p.get("tables", [])]
    # Each chunk's service answer numbers its tables from tbl-0: the merge renumbers them.
    assert [t["source_id"] for t in tables] == ["tbl-0.html", "tbl-0.html"]
    assert [t["id"] for t in tables] == ["tbl-0.html", "tbl-1.html"]
    for table in tables:
        stored = (out / table["path"]).read_text(encoding="utf-8")
        assert stored == table["content"] and stored.startswith("<table>")
    assert "<td>North</td>" in (out / "doc.pdf.tables/tbl-0.html").read_text()
    assert "<td>Ops</td>" in (out / "doc.pdf.tables/tbl-1.html").read_text()
    md = (out / "doc.pdf.md").read_text()
    assert "[tbl-0.html](doc.pdf.tables/tbl-0.html)" in md
    assert "[tbl-1.html](doc.pdf.tables/tbl-1.html)" in md
    assert "North" not in md  # the table is out of the markdown


async def test_inline_tables_put_the_markdown_tables_into_the_markdown(tmp_path: Path,
                                                                      fake_server: Any) -> None:
    report, out = await run(tmp_path, fake_server, table_format="markdown", inline_tables=True)
    assert report.exit_code == 0
    md = (out / "doc.pdf.md").read_text()
    assert "| Region | Q1 | Q2 |" in md and "| Ops | 5 |" in md
    assert "tbl-" not in md
    assert (out / "doc.pdf.tables/tbl-1.md").read_text().startswith("| Team | Cost |")


async def test_headers_and_footers_are_kept_per_page_and_in_the_markdown_only_when_asked(
        tmp_path: Path, fake_server: Any) -> None:
    server = await fake_server()
    _, out = await run(tmp_path, fake_server, "kept-out", server, extract_header=True,
                       extract_footer=True, markdown_headers_footers=False)
    pages = load_json(out / "doc.pdf.json")["pages"]
    assert [p["header"] for p in pages] == ["ACME Annual Report"] * 3
    assert [p["footer"] for p in pages] == ["Page 1 of 3", "Page 2 of 3", "Page 3 of 3"]
    md = (out / "doc.pdf.md").read_text()
    assert "ACME" not in md and "Page 2 of 3" not in md and "Costs by team" in md

    _, out = await run(tmp_path, fake_server, "kept-in", server, extract_header=True,
                       extract_footer=True, markdown_headers_footers=True)
    md = (out / "doc.pdf.md").read_text()
    page2 = md.split("<!-- page 2 -->")[1].split("<!-- page 3 -->")[0]
    assert page2.index("ACME Annual Report") < page2.index("r~ceipt") < page2.index("Page 2 of 3")


async def test_low_confidence_pages_are_listed_in_the_report_status_and_metrics(
        tmp_path: Path, fake_server: Any) -> None:
    report, out = await run(tmp_path, fake_server, confidence_scores_granularity="page",
                            confidence_threshold=0.8, max_pages_per_request=2)
    assert report.exit_code == 0
    pages = load_json(out / "doc.pdf.json")["pages"]
    scores = [p["confidence_scores"]["average_page_confidence_score"] for p in pages]
    assert scores[1] < 0.8 <= min(scores[0], scores[2])
    assert report.pages_low_confidence == 1
    assert report.low_confidence_pages == [{"path": "doc.pdf", "page": 2, "confidence": scores[1]}]
    assert any("doc.pdf page 2" in line for line in report.summary_lines())
    data = status(out)
    assert data["low_confidence_pages"] == report.low_confidence_pages
    assert any("doc.pdf page 2" in line for line in render_status(data))
    metrics = (out / ".ocr-pipeline/metrics.prom").read_text()
    assert re.search(r"^ocr_pipeline_pages_low_confidence 1\.0$", metrics, re.M)


async def test_word_confidence_points_into_the_page_markdown(tmp_path: Path,
                                                             fake_server: Any) -> None:
    _, out = await run(tmp_path, fake_server, confidence_scores_granularity="word")
    page = load_json(out / "doc.pdf.json")["pages"][1]
    words = page["confidence_scores"]["word_confidence_scores"]
    assert [w["text"] for w in words][:2] == ["ACME", "Annual"]
    for word in words:
        assert page["markdown"][word["start_index"]:][:len(word["text"])] == word["text"]
    assert min(w["confidence"] for w in words) == page["confidence_scores"][
        "minimum_page_confidence_score"]


async def test_blocks_are_stored_with_coordinates_and_follow_renamed_ids(tmp_path: Path,
                                                                         fake_server: Any) -> None:
    server = await fake_server(images_per_page=1)
    report, out = await run(tmp_path, fake_server, server=server, include_blocks=True,
                            table_format="html", confidence_scores_granularity="block",
                            max_pages_per_request=1)
    assert report.exit_code == 0
    for page in load_json(out / "doc.pdf.json")["pages"]:
        dims = page["dimensions"]
        kinds = [b["type"] for b in page["blocks"]]
        assert "image" in kinds and "text" in kinds
        for block in page["blocks"]:
            assert 0 <= block["top_left_x"] < block["bottom_right_x"] <= dims["width"]
            assert 0 <= block["top_left_y"] < block["bottom_right_y"] <= dims["height"]
            assert 0 <= block["confidence_scores"]["block_type_confidence_score"] <= 1
        image_ids = {im["id"] for im in page["images"]}
        assert {b["image_id"] for b in page["blocks"] if b["type"] == "image"} == image_ids
        table_ids = {t["id"] for t in page.get("tables", [])}
        assert {b["table_id"] for b in page["blocks"] if b["type"] == "table"} == table_ids
    ids = [im["id"] for p in load_json(out / "doc.pdf.json")["pages"] for im in p["images"]]
    assert ids == ["img-0.jpeg", "img-1.jpeg", "img-2.jpeg"]  # unique across the 3 chunks


async def test_document_annotation_is_parsed_checked_and_stored(tmp_path: Path,
                                                                fake_server: Any) -> None:
    report, out = await run(tmp_path, fake_server,
                            document_annotation_schema=write_schema(tmp_path),
                            document_annotation_prompt="The report's title and year")
    assert report.exit_code == 0 and report.warnings == []
    [entry] = json.loads((out / "doc.pdf.annotation.json").read_text())
    assert entry["pages"] == [1, 3] and "problems" not in entry
    jsonschema.validate(entry["annotation"], SCHEMA)
    doc = load_json(out / "doc.pdf.json")
    assert json.loads(doc["document_annotation"]) == entry["annotation"]


async def test_a_split_document_keeps_every_chunks_annotation(tmp_path: Path,
                                                              fake_server: Any) -> None:
    pages = [[f"Chapter {n}", f"Body of chapter {n}"] for n in range(1, 6)]
    report, out = await run(tmp_path, fake_server, pages=pages, max_pages_per_request=2,
                            document_annotation_schema=write_schema(tmp_path))
    assert report.exit_code == 0
    entries = json.loads((out / "doc.pdf.annotation.json").read_text())
    assert [e["pages"] for e in entries] == [[1, 2], [3, 4], [5, 5]]
    # Each chunk's annotation comes from its own pages' text.
    assert [e["annotation"]["title"].split()[:2] for e in entries] == [
        ["Chapter", "1"], ["Chapter", "3"], ["Chapter", "5"]]
    doc = load_json(out / "doc.pdf.json")
    assert doc["document_annotation"] is None and doc["document_annotations"] == entries


async def test_an_annotation_that_breaks_its_schema_is_a_warning_not_a_failure(
        tmp_path: Path, fake_server: Any) -> None:
    report, out = await run(tmp_path, fake_server, serve={"bad_annotations": True},
                            document_annotation_schema=write_schema(tmp_path))
    assert report.exit_code == 0 and report.documents_done == 1
    assert report.warnings_total == 1
    assert report.warnings[0].startswith("doc.pdf: document annotation of pages 1-3 does not match")
    assert any("warnings: 1" in line for line in report.summary_lines())
    [entry] = json.loads((out / "doc.pdf.annotation.json").read_text())
    assert entry["problems"] and "is not of type 'object'" in entry["problems"][0]


async def test_bbox_annotations_stay_with_their_images(tmp_path: Path, fake_server: Any) -> None:
    image_schema = {"type": "object", "properties": {"kind": {"enum": ["chart", "photo"]},
                                                     "caption": {"type": "string"}},
                    "required": ["kind"]}
    server = await fake_server(images_per_page=1)
    _, out = await run(tmp_path, fake_server, server=server,
                       bbox_annotation_schema=write_schema(tmp_path, image_schema, "image.json"))
    images = [im for p in load_json(out / "doc.pdf.json")["pages"] for im in p["images"]]
    assert len(images) == 3
    for image in images:
        jsonschema.validate(json.loads(image["image_annotation"]), image_schema)
        assert (out / image["image_path"]).is_file()
    assert not (out / "doc.pdf.annotation.json").exists()


async def test_a_changed_document_leaves_no_stale_tables_or_annotation(tmp_path: Path,
                                                                      fake_server: Any) -> None:
    server = await fake_server()
    schema = write_schema(tmp_path)
    _, out = await run(tmp_path, fake_server, server=server, table_format="html",
                       document_annotation_schema=schema)
    assert (out / "doc.pdf.tables/tbl-1.html").exists()
    report, out = await run(tmp_path, fake_server, server=server, pages=[["No table here"]],
                            table_format="html")
    assert report.plan.get("changed") == 1
    assert not (out / "doc.pdf.tables").exists()
    assert not (out / "doc.pdf.annotation.json").exists()


def test_request_carries_only_the_options_set_named_as_the_api_names_them(tmp_path: Path) -> None:
    chunk = Chunk("d.pdf", 0, 0, 1, "application/pdf", pdf([["x"]]), "0" * 64)
    plain = MistralBackend.from_settings(make_settings(tmp_path, tmp_path / "o", "http://127.0.0.1:9"))
    assert set(plain.request_body(chunk)) == {"model", "document", "include_image_base64"}
    schema = write_schema(tmp_path)
    rich = MistralBackend.from_settings(make_settings(
        tmp_path, tmp_path / "o", "http://127.0.0.1:9", table_format="html", extract_header=True,
        extract_footer=True, include_blocks=True, confidence_scores_granularity="word",
        document_annotation_schema=schema, document_annotation_prompt="title",
        bbox_annotation_schema=schema))
    body = rich.request_body(chunk)
    assert {k: body[k] for k in ("table_format", "extract_header", "extract_footer",
                                 "include_blocks", "confidence_scores_granularity",
                                 "document_annotation_prompt")} == {
        "table_format": "html", "extract_header": True, "extract_footer": True,
        "include_blocks": True, "confidence_scores_granularity": "word",
        "document_annotation_prompt": "title"}
    expected = {"type": "json_schema", "json_schema": {"name": "report", "schema": SCHEMA}}
    assert body["document_annotation_format"] == body["bbox_annotation_format"] == expected


@pytest.mark.parametrize(("overrides", "words"), [
    ({"model": "mistral-ocr-2505", "table_format": "html"}, ["table_format", "OCR 3", "2505"]),
    ({"model": "mistral-ocr-2512", "include_blocks": True}, ["include_blocks", "OCR 4", "2512"]),
    ({"confidence_scores_granularity": "block"}, ["include_blocks: true"]),
    ({"document_annotation_prompt": "title"}, ["document_annotation_schema"]),
    ({"backend": "local", "table_format": "html"}, ["local engine", "table_format"]),
])
def test_an_unsupported_combination_is_a_config_error(tmp_path: Path, overrides: dict[str, Any],
                                                      words: list[str]) -> None:
    with pytest.raises(ConfigError) as caught:
        make_settings(tmp_path, tmp_path / "o", "http://127.0.0.1:9", **overrides)
    assert all(w in str(caught.value) for w in words), str(caught.value)


@pytest.mark.parametrize(("content", "words"), [
    ("{not json", ["not valid JSON"]),
    ('{"type": 5}', ["not a valid JSON Schema"]),
    ("[1, 2]", ["must hold a JSON object"]),
])
def test_a_bad_schema_file_is_a_config_error_naming_it(tmp_path: Path, content: str,
                                                       words: list[str]) -> None:
    path = tmp_path / "broken-schema.json"
    path.write_text(content)
    with pytest.raises(ConfigError) as caught:
        make_settings(tmp_path, tmp_path / "o", "http://127.0.0.1:9",
                      document_annotation_schema=path)
    assert str(path) in str(caught.value) and all(w in str(caught.value) for w in words)


def test_the_service_decides_for_unknown_and_azure_model_names() -> None:
    options = OutputSettings(table_format="html", include_blocks=True)
    for backend, model in (("mistral", "mistral-ocr-9999"), ("azure", "mistral-document-ai-2512")):
        errors, warnings = check_options(options, backend, [model])
        assert errors == [] and len(warnings) == 1 and model in warnings[0].message
    errors, warnings = check_options(options, "mistral", ["mistral-ocr-latest"])
    assert errors == [] and warnings == []


async def test_an_unsupported_combination_exits_2_from_the_command_line(tmp_path: Path) -> None:
    config = tmp_path / "rich.yaml"
    config.write_text(yaml.safe_dump({"model": "mistral-ocr-2512", "include_blocks": True}))
    (tmp_path / "in").mkdir()
    proc = await run_pipeline_process(
        [*run_args(tmp_path / "in", tmp_path / "out", "http://127.0.0.1:9"), "--config", str(config)],
        pipeline_env())
    assert proc.returncode == ExitCode.USAGE
    assert "include_blocks" in proc.stderr and "OCR 4" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_the_fake_servers_rich_answers_follow_the_published_schema() -> None:
    schema = {"type": "object", "properties": {"title": {"type": "string"}}}
    for options in (RichRequest(table_format="html", extract_header=True, extract_footer=True,
                                include_blocks=True, confidence="block", document_schema=schema,
                                bbox_schema=schema),
                    RichRequest(table_format="markdown", confidence="word"),
                    RichRequest(confidence="page", bad_annotations=True, document_schema=schema)):
        answer = ocr_response(pdf_pages(pdf(PAGES), None), model="mistral-ocr-latest", doc_size=1,
                              images_per_page=1, rich=options)
        assert response_problems(answer) == []


async def test_the_official_sdk_parses_the_rich_answers(tmp_path: Path, fake_server: Any) -> None:
    import mistralai.client as mistralai  # the dev extra installs it: a missing one fails

    server = await fake_server(images_per_page=1)
    data = "data:application/pdf;base64," + base64.b64encode(pdf(PAGES)).decode()

    def call() -> Any:
        client = mistralai.Mistral(api_key=TEST_KEY, server_url=server.url)
        return client.ocr.process(
            model="mistral-ocr-latest", document={"type": "document_url", "document_url": data},
            table_format="html", extract_header=True, extract_footer=True, include_blocks=True,
            confidence_scores_granularity="word",
            document_annotation_format={"type": "json_schema",
                                        "json_schema": {"name": "report", "schema": SCHEMA}},
            bbox_annotation_format={"type": "json_schema",
                                    "json_schema": {"name": "report", "schema": SCHEMA}})

    answer = await asyncio.to_thread(call)
    page = answer.pages[0]
    assert page.header == "ACME Annual Report" and page.footer == "Page 1 of 3"
    assert page.tables[0].format_ == "html" and page.tables[0].content.startswith("<table>")
    assert type(page.blocks[0]).__name__ == "OCRHeaderBlock"
    assert {type(b).__name__ for b in page.blocks} >= {"OCRTextBlock", "OCRTableBlock",
                                                       "OCRImageBlock", "OCRFooterBlock"}
    assert page.confidence_scores.word_confidence_scores[0].text == "Revenue"
    jsonschema.validate(json.loads(answer.document_annotation), SCHEMA)
    jsonschema.validate(json.loads(page.images[0].image_annotation), SCHEMA)


def test_the_local_engines_confidence_takes_the_apis_shape() -> None:
    chunk = Chunk("scan.png", 0, 0, 2, "image/png", b"", "0" * 64)
    local = {"pages": [
        {"index": 0, "markdown": "text", "images": [], "dimensions": None, "confidence": 87.5,
         "method": "ocr"},
        {"index": 1, "markdown": "text", "images": [], "dimensions": None, "confidence": None,
         "method": "text_layer"}], "model": "local-tesseract"}
    pages = merge_responses([(chunk, local)])["pages"]
    assert pages[0]["confidence_scores"] == {"average_page_confidence_score": 0.875,
                                             "minimum_page_confidence_score": 0.875}
    assert pages[1]["confidence_scores"] is None  # a text layer is not a guess
    assert response_problems({"pages": pages, "model": "m", "usage_info": {"pages_processed": 2}}) == []


async def test_a_local_run_gives_page_confidence_in_the_same_shape_and_lists_it(
        tmp_path: Path) -> None:
    inp = tmp_path / "in"
    inp.mkdir()
    shutil.copy(REPO / "samples/receipt.jpg", inp / "receipt.jpg")  # a photo: read by Tesseract
    shutil.copy(REPO / "samples/text.pdf", inp / "text.pdf")  # born digital: its text layer
    out = tmp_path / "out"
    report = await run_pipeline(inp, out, "", backend="local", local={"processes": 1},
                                confidence_threshold=0.999)
    WRITTEN.append(out)
    assert report.exit_code == 0
    [photo] = load_json(out / "receipt.jpg.json")["pages"]
    scores = photo["confidence_scores"]
    assert set(scores) == {"average_page_confidence_score", "minimum_page_confidence_score"}
    assert 0.5 < scores["average_page_confidence_score"] < 0.999
    assert scores["average_page_confidence_score"] == round(photo["confidence"] / 100, 4)
    assert all(p["confidence_scores"] is None for p in load_json(out / "text.pdf.json")["pages"])
    assert report.low_confidence_pages == [
        {"path": "receipt.jpg", "page": 1, "confidence": scores["average_page_confidence_score"]}]


async def test_every_link_of_every_markdown_written_here_resolves(tmp_path: Path,
                                                                  fake_server: Any) -> None:
    """Walks the outputs of every run of this file (and makes one of its own with everything on,
    so the walk means something when this test runs alone)."""
    server = await fake_server(images_per_page=2)
    await run(tmp_path, fake_server, "everything", server, table_format="html",
              extract_header=True, extract_footer=True, include_blocks=True,
              confidence_scores_granularity="word", include_images=True, max_pages_per_request=2,
              document_annotation_schema=write_schema(tmp_path))
    await run(tmp_path, fake_server, "no-images", server, include_images=False)
    checked = 0
    for out in WRITTEN:
        if out.exists():
            count, bad = dangling_links(out)
            assert bad == [], out
            checked += count
    # Its own two runs write 8 links (tables and images of a split document); the outputs of the
    # other tests of this file, when they ran first, add more.
    assert checked >= 8
    md = (tmp_path / "no-images/doc.pdf.md").read_text()
    assert "[img-0.jpeg]" in md and "](img-0.jpeg)" not in md  # not delivered: text, no link
    shutil.rmtree(tmp_path / "in")
