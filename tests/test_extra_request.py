"""`extra_request` carries request fields that have no setting of their own; a field the pipeline
sets itself (table_format, the annotation formats, pages, ...) is a configuration error that names
the setting to use (issue 13)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.backends.mistral import MistralBackend
from pipeline.config import load_settings
from pipeline.config.loader import file_keys
from pipeline.errors import ConfigError, ExitCode
from pipeline.models import Chunk
from tests.conftest import REPO, TEST_KEY, pipeline_env

BASE = {"backend": "mistral", "endpoint": "http://127.0.0.1:9", "input": "in", "output": "out"}
ENV = {"MISTRAL_API_KEY": TEST_KEY}
# Every OCRRequest field of the published schema that a setting covers, and that setting.
FIRST_CLASS = {
    "table_format": "table_format", "extract_header": "extract_header",
    "extract_footer": "extract_footer", "include_blocks": "include_blocks",
    "confidence_scores_granularity": "confidence_scores_granularity",
    "document_annotation_prompt": "document_annotation_prompt",
    "document_annotation_format": "document_annotation_schema",
    "bbox_annotation_format": "bbox_annotation_schema",
    "include_image_base64": "include_images", "model": "model",
}


# OCRRequest's fields in the published schema (mistral-openapi-ocr.yaml, components.schemas).
OCR_REQUEST_FIELDS = (
    "model", "document", "pages", "include_image_base64", "image_limit", "image_min_size",
    "bbox_annotation_format", "document_annotation_format", "document_annotation_prompt",
    "table_format", "extract_header", "extract_footer", "include_blocks",
    "confidence_scores_granularity",
)


def settings(extra: dict) -> object:
    return load_settings(None, {**BASE, "extra_request": extra}, env=ENV)


@pytest.mark.parametrize(("key", "setting"), sorted(FIRST_CLASS.items()))
def test_a_field_with_a_setting_of_its_own_is_refused_naming_the_setting(key: str,
                                                                        setting: str) -> None:
    with pytest.raises(ConfigError) as info:
        settings({key: "x", "image_limit": 3})
    message = str(info.value)
    assert message.startswith("command line: --extra-request: "), message
    assert f"'{key}' is a setting of its own: use '{setting}: " in message


@pytest.mark.parametrize("key", ["document", "pages"])
def test_a_field_set_per_chunk_is_refused(key: str) -> None:
    with pytest.raises(ConfigError, match=f"'{key}' cannot be sent through extra_request"):
        settings({key: [0]})


def test_other_fields_are_sent_as_given_beside_the_settings() -> None:
    s = load_settings(None, {**BASE, "table_format": "html",
                             "extra_request": {"image_min_size": 64, "image_limit": 2}}, env=ENV)
    chunk = Chunk("a.png", 0, 0, 1, "image/png", b"x", "0" * 64)
    body = MistralBackend(s.service, s.outputs).request_body(chunk)
    assert body["image_min_size"] == 64 and body["image_limit"] == 2
    assert body["table_format"] == "html"


def test_the_config_file_origin_is_named_and_run_exits_2(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({**BASE, "input": str(tmp_path), "output": str(tmp_path / "o"),
                                      "extra_request": {"table_format": "markdown"}}))
    proc = subprocess.run([sys.executable, "-m", "pipeline", "run", "--config", str(config)],
                          capture_output=True, text=True, cwd=REPO, env=pipeline_env(), timeout=60)
    assert proc.returncode == ExitCode.USAGE, proc.stdout + proc.stderr
    assert f"{config}: key 'extra_request': 'table_format' is a setting of its own" in proc.stderr
    assert not (tmp_path / "o").exists()


def test_every_request_field_named_like_a_config_key_is_refused() -> None:
    """A new first-class setting named as the API names it cannot be bypassed unseen: it must be
    added to the loader's list (this test fails otherwise)."""
    same_name = sorted(set(OCR_REQUEST_FIELDS) & set(file_keys()))
    assert "table_format" in same_name and "include_blocks" in same_name
    for key in same_name:
        with pytest.raises(ConfigError, match=f"'{key}' is a setting of its own"):
            settings({key: "x"})


def test_the_documented_example_is_not_a_first_class_field() -> None:
    described = file_keys()["extra_request"][1]
    readme = (REPO / "README.md").read_text()
    row = next(line for line in readme.splitlines() if line.startswith("| `extra_request` |"))
    for text in (described, row):
        (example,) = re.findall(r"e\.g\. `(\w+):", text)
        assert example not in FIRST_CLASS and example not in ("document", "pages")
        settings({example: 64})  # accepted
