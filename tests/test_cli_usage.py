"""What a new user meets on the command line: usage errors, messages, summaries, status,
check-config, dry-run estimates, and a README that agrees with the code (issue 11)."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

from PIL import Image, ImageDraw

from pipeline.config import file_keys
from pipeline.errors import Category, ExitCode
from tests.conftest import REPO, pipeline_env, run_pipeline_process
from tests.pdfgen import write_pdf

ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00$")


def local_run(inp: Path, out: Path, *extra: str) -> list[str]:
    return ["run", "--backend", "local", "--rps", "0", "--input", str(inp), "--output", str(out),
            *extra]


def two_frame_tiff(path: Path) -> None:
    frames = []
    for n in (1, 2):
        img = Image.new("L", (600, 200), 255)
        ImageDraw.Draw(img).text((20, 80), f"FRAME NUMBER {n}", fill=0)
        frames.append(img)
    buf = io.BytesIO()
    frames[0].save(buf, format="TIFF", save_all=True, append_images=frames[1:])
    path.write_bytes(buf.getvalue())


def readme_table_rows(title: str) -> list[str]:
    """The body rows of the first table after `title` in README.md."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    start = text.index("\n|", text.index(title)) + 1
    return text[start:text.index("\n\n", start)].splitlines()[2:]


# ---- the README agrees with the code --------------------------------------------------------


def test_readme_configuration_table_lists_exactly_the_config_file_keys() -> None:
    listed: set[str] = set()
    for row in readme_table_rows("### Configuration keys"):
        first_cell = row.split("|")[1]
        listed.update(re.findall(r"`([a-z0-9_.]+)`", first_cell))
    keys = set(file_keys())
    assert not keys - listed, f"keys missing from README's table: {sorted(keys - listed)}"
    assert not listed - keys, f"README lists keys that do not exist: {sorted(listed - keys)}"


def test_file_keys_have_defaults_and_descriptions() -> None:
    keys = file_keys()
    assert keys["local.dpi"][0] == 300 and keys["shutdown_grace"][0] == 30.0
    assert all(description for _, description in keys.values())
    assert not any(k in keys for k in ("dry_run", "retry_failed", "force", "local"))


def test_readme_exit_codes_cover_every_code_and_the_budget_stop() -> None:
    by_code = {int(row.split("|")[1]): row for row in readme_table_rows("## Exit codes")}
    assert set(by_code) == {int(code) for code in ExitCode}
    assert "budget" in by_code[int(ExitCode.FATAL)], "a budget stop exits 3 (see `run --help`)"


# ---- usage errors ---------------------------------------------------------------------------


async def test_unknown_flag_on_run_shows_runs_usage(tmp_path: Path) -> None:
    proc = await run_pipeline_process(["run", "--bogus-flag"], pipeline_env())
    assert proc.returncode == ExitCode.USAGE
    assert "usage: ocr-pipeline run" in proc.stderr, proc.stderr
    assert "--bogus-flag" in proc.stderr


async def test_unknown_failure_category_exits_2_naming_the_valid_ones(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    proc = await run_pipeline_process(
        local_run(tmp_path / "in", tmp_path / "out", "--only-failed-category", "bogus"),
        pipeline_env())
    assert proc.returncode == ExitCode.USAGE
    for category in Category:
        assert category.value in proc.stderr, proc.stderr
    assert not (tmp_path / "out").exists()


async def test_only_failed_category_implies_retry_failed(tmp_path: Path) -> None:
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    (inp / "bad.pdf").write_bytes(b"%PDF-1.4\n not really a pdf")
    first = await run_pipeline_process(local_run(inp, out, "--progress", "off"), pipeline_env())
    assert first.returncode == ExitCode.SOME_FAILED, first.stdout + first.stderr
    again = await run_pipeline_process(
        local_run(inp, out, "--progress", "off", "--only-failed-category", "input"), pipeline_env())
    # Retried (and failed again): without the implied --retry-failed it would be left alone.
    assert "plan: bad_input 1" in again.stdout or "retry 1" in again.stdout, again.stdout
    assert "failed in earlier runs and left alone" not in again.stdout, again.stdout


# ---- a local run: summary, messages, --progress off, status ---------------------------------


async def test_local_run_summary_status_and_quiet_progress(tmp_path: Path) -> None:
    inp, out = tmp_path / "in", tmp_path / "out"
    write_pdf(inp / "text.pdf", "t", 2)
    two_frame_tiff(inp / "scan.tif")
    (inp / "empty.pdf").write_bytes(b"")

    dry = await run_pipeline_process(local_run(inp, out, "--dry-run", "--progress", "off"),
                                     pipeline_env())
    estimate = next(line for line in dry.stdout.splitlines() if "estimate:" in line)
    assert "2 documents, 4 pages" in estimate, estimate  # the TIFF's two frames are two pages
    seconds = re.search(r"about (\d+) s at ([\d.]+) pages/min", estimate)
    assert seconds and int(seconds.group(1)) > 0 and float(seconds.group(2)) > 0, estimate
    assert "estimate" in estimate.split("pages/min", 1)[1]

    run = await run_pipeline_process(local_run(inp, out, "--progress", "off"), pipeline_env())
    assert run.returncode == ExitCode.SOME_FAILED, run.stdout + run.stderr
    assert "empty.pdf: empty file" in run.stdout
    assert "empty.pdf: empty.pdf" not in run.stdout, run.stdout
    assert re.search(r"pages read: 2 from text layers, 2 by OCR; \d+ pages/min", run.stdout), \
        run.stdout
    assert "429" not in run.stdout and "retries" not in run.stdout, run.stdout
    events = [json.loads(line) for line in run.stderr.splitlines() if line.startswith("{")]
    assert not [e for e in events if e.get("event") in ("document", "progress")
                and e.get("state") != "failed"], "--progress off: no line per document"
    assert any(e.get("event") == "document" and e.get("state") == "failed" for e in events)
    report_file = next((out / ".ocr-pipeline/runs").glob("*.json"))
    assert json.loads(report_file.read_text())["page_methods"] == {"text_layer": 2, "ocr": 2}

    config = tmp_path / "c.yaml"
    config.write_text(f"backend: local\noutput: {out}\n", encoding="utf-8")
    status = await run_pipeline_process(["status", "--config", str(config), "--json"],
                                        pipeline_env())
    assert status.returncode == 0, status.stderr
    data = json.loads(status.stdout)
    assert data["documents"]["done"] == 2 and data["documents"]["failed"] == 1
    run_row = data["recent_runs"][0]
    assert ISO_UTC.match(run_row["started_at"]) and ISO_UTC.match(run_row["finished_at"]), run_row
    text = await run_pipeline_process(["status", "--config", str(config)], pipeline_env())
    assert "[input] empty.pdf: empty file" in text.stdout, text.stdout
    assert "empty.pdf: empty.pdf" not in text.stdout
    assert re.search(r"started \d{4}-\d\d-\d\dT", text.stdout), text.stdout


async def test_a_single_file_as_input_is_mirrored_as_its_name(tmp_path: Path) -> None:
    inp = tmp_path / "docs"
    write_pdf(inp / "letter.pdf", "l", 1)
    write_pdf(inp / "other.pdf", "o", 1)
    out = tmp_path / "out"
    proc = await run_pipeline_process(local_run(inp / "letter.pdf", out, "--progress", "off"),
                                      pipeline_env())
    assert proc.returncode == ExitCode.OK, proc.stdout + proc.stderr
    assert (out / "letter.pdf.json").is_file() and (out / "letter.pdf.md").is_file()
    assert not (out / "other.pdf.json").exists(), "only the file named is processed"
    assert "page 1 marker l-1" in (out / "letter.pdf.md").read_text()
    missing = await run_pipeline_process(local_run(inp / "nope.pdf", out), pipeline_env())
    assert missing.returncode == ExitCode.USAGE and "input not found" in missing.stderr


# ---- check-config ---------------------------------------------------------------------------


async def test_check_config_is_readable_and_says_what_run_still_needs(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("backend: local\nworkers: 2\n", encoding="utf-8")
    proc = await run_pipeline_process(["check-config", "--config", str(config)], pipeline_env())
    assert proc.returncode == 0, proc.stdout
    first = proc.stdout.splitlines()[0]
    assert "still needs" in first and "--input" in first and "--output" in first, first
    for python_repr in ("None", "True", "False", "{'", "PosixPath"):
        assert python_repr not in proc.stdout, f"{python_repr!r} in:\n{proc.stdout}"
    assert not re.search(r"^\s*endpoint:", proc.stdout, re.M), "no endpoint for the local engine"
    assert re.search(r"^\s+workers: 2$", proc.stdout, re.M)
    assert re.search(r"^\s+force_ocr: false$", proc.stdout, re.M), proc.stdout

    (tmp_path / "in").mkdir()
    config.write_text(f"backend: local\ninput: {tmp_path / 'in'}\noutput: {tmp_path / 'o'}\n",
                      encoding="utf-8")
    ready = await run_pipeline_process(["check-config", "--config", str(config)], pipeline_env())
    assert "ready for `run`" in ready.stdout.splitlines()[0], ready.stdout
