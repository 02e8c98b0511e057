"""The settings, in groups: each group is validated on its own and each component is given only
the group it needs (the HTTP backend the service group, the document job the limits, the local
engine its own). Field descriptions are the documentation: README's table is generated from them.

A config file is flat (`workers: 4`, `local: {dpi: 300}`), as the keys have always been; each key
belongs to exactly one group (`KEY_GROUPS`). Flags that exist only on the command line
(`CommandLine`) are not file keys.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

BACKENDS = ("local", "mistral", "azure")
AUTO = "auto"


class Group(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bools_for_numbers(cls, value: Any, info: Any) -> Any:
        """YAML's `yes` is True; True is not a number of workers."""
        annotation = str(cls.model_fields[info.field_name].annotation)
        if isinstance(value, bool) and ("int" in annotation or "float" in annotation):
            raise ValueError("expected a number, not true/false")
        return value


def _auto_to_none(value: Any) -> Any:
    if isinstance(value, str) and value.strip().lower() == AUTO:
        return None
    return value


def _as_str_list(value: Any) -> Any:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [str(v) for v in value]
    return value


def _as_path(value: Any) -> Any:
    if isinstance(value, str | Path):
        return Path(str(value)).expanduser()
    return value


class EndpointSettings(Group):
    """One deployment in `endpoints:`: its own URL, key, model and rate limit."""

    url: str = Field(description="the deployment's base URL (or full `/ocr` route)")
    api_key: str | None = Field(None, repr=False, description="its key, as `${VAR}` (default: the"
                                " backend's key variable)")
    model: str | None = Field(None, description="its model name (default: `model`)")
    auth_header: Literal["bearer", "api-key"] | None = Field(None, description="default: `auth_header`")
    rps: float | None = Field(None, ge=0, description="a hard cap for this endpoint (default: auto)")
    name: str | None = Field(None, description="a name for reports (default: the URL's host)")

    _auto = field_validator("rps", mode="before")(_auto_to_none)

    @field_validator("url")
    @classmethod
    def _http(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("needs an http(s) URL")
        return value


class ServiceSettings(Group):
    """The OCR service and how to talk to it."""

    backend: Literal["local", "mistral", "azure"] = Field(
        "local", description="`local`, `mistral` or `azure`")
    endpoint: str = Field("", description="service base URL (`/v1/ocr` is appended unless the URL ends"
                          " in `/ocr`); per backend")
    model: str = Field("", description="model name; per backend")
    api_key: str | None = Field(None, repr=False, description="the key, as `${MISTRAL_API_KEY}` or"
                                " `${AZURE_API_KEY}` (never written anywhere)")
    auth_header: Literal["bearer", "api-key"] = Field(
        "bearer", description="`bearer`, or `api-key` for Azure deployments that want that header")
    azure_api_version: str | None = Field(None, description="`api-version` query for the Azure Foundry route")
    connect_timeout: float = Field(10.0, gt=0, description="seconds to open a connection")
    request_timeout: float = Field(300.0, gt=0, description="seconds one request may take")
    retry_attempts: int = Field(6, ge=1, description="tries per chunk for transient failures")
    retry_initial: float = Field(1.0, gt=0, description="first backoff in seconds (exponential, full jitter)")
    retry_max: float = Field(60.0, gt=0, description="longest backoff in seconds")
    endpoint_deadline: float = Field(600.0, gt=0, description="seconds a service may fail continuously"
                                     " before the run stops (exit 3)")
    throttle_deadline: float = Field(3600.0, gt=0, description="seconds of nothing but 429s (an exhausted"
                                     " quota) before the run stops (exit 3)")
    verify_tls: bool = Field(True, description="check the service's TLS certificate")
    extra_request: dict[str, Any] = Field(default_factory=dict, description="more request fields, sent as"
                                          " given (e.g. `image_min_size: 64`); fields with a"
                                          " setting of their own are refused")
    price_per_1000_pages: float | None = Field(None, ge=0, description="US$ per 1,000 pages for cost"
                                               " figures (default: the model's price)")
    endpoints: list[EndpointSettings] = Field(
        default_factory=list, description="several deployments of the model, each `{url, api_key,"
        " model, auth_header, rps, name}`: one rate limiter each; work goes to whichever has room")
    mode: Literal["sync", "batch"] = Field("sync", description="`sync` (one request per chunk, now) or"
                                           " `batch` (Mistral's Batch API: half the price, later)")


class LimitSettings(Group):
    """Throughput and size: how much is under way at once, how large a request or document may be."""

    workers: int | None = Field(None, ge=1, description="documents in progress at once: `auto` (sized"
                                " from latency x rate) or a cap")
    rps: float | None = Field(None, ge=0, description="requests per second for all workers together:"
                              " `auto` (learned from rate headers and 429s; the default for hosted"
                              " backends), a hard cap in any 1-second window, or 0 for no limit")
    max_in_flight: int | None = Field(None, ge=1, description="requests under way at once: `auto`"
                                      " (latency x rate, Little's law) or a cap")
    max_pages_per_request: int = Field(10, ge=1, description="PDFs with more pages are split into"
                                       " chunks; per backend")
    max_bytes_per_request: int = Field(200_000_000, ge=10_000, description="PDFs with more bytes are"
                                       " split into chunks; per backend")
    max_document_bytes: int = Field(2_000_000_000, ge=1, description="larger files fail as `too_large`")
    max_pages_per_document: int = Field(5000, ge=1, description="documents with more pages fail as"
                                        " `too_large`")
    allow_large_documents: bool = Field(False, description="no cap on pages per document")
    document_timeout: float = Field(3600.0, gt=0, description="seconds one document may take")
    max_pages: int | None = Field(None, gt=0, description="pages this run may send (budget: exit 3,"
                                  " resumable)")
    max_cost: float | None = Field(None, gt=0, description="US$ this run may spend (budget: exit 3,"
                                   " resumable)")
    max_runtime: float | None = Field(None, gt=0, description="seconds before the run stops dispatching"
                                      " (budget: exit 3, resumable)")

    _auto = field_validator("workers", "rps", "max_in_flight", mode="before")(_auto_to_none)


class RunSettings(Group):
    """Which files, and how the run shows itself."""

    input: Path | None = Field(None, description="folder to digitize, or a single file")
    output: Path | None = Field(None, description="folder for the mirrored output tree (manifest in"
                                " `<output>/.ocr-pipeline/`)")
    include: list[str] = Field(default_factory=lambda: ["**/*"], description="globs on the path"
                               " relative to the input (case-insensitive)")
    exclude: list[str] = Field(default_factory=list, description="globs of files to leave out")
    follow_symlinks: bool = Field(False, description="follow links that lead out of the input")
    pdf_passwords: list[str] = Field(default_factory=list, repr=False, description="passwords to try on"
                                     " encrypted PDFs")
    progress: Literal["auto", "bar", "json", "off"] = Field(
        "auto", description="`auto` (bar on a terminal, JSON events otherwise), `bar`, `json` or `off`")
    progress_interval: float = Field(10.0, gt=0, description="seconds between JSON progress events and"
                                     " metrics writes")
    shutdown_grace: float = Field(30.0, ge=0, description="seconds requests in flight get to land after"
                                  " SIGINT/SIGTERM")
    metrics_file: Path | None = Field(None, description="Prometheus textfile (default"
                                      " `<output>/.ocr-pipeline/metrics.prom`)")
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="`debug`, `info`, `warning` or `error`")

    _lists = field_validator("include", "exclude", "pdf_passwords", mode="before")(_as_str_list)
    _paths = field_validator("input", "output", "metrics_file", mode="before")(_as_path)


class OutputSettings(Group):
    """What each document's outputs carry."""

    include_images: bool = Field(True, description="ask for page images and store them under"
                                 " `<rel>.images/`")
    table_format: Literal["markdown", "html"] | None = Field(
        None, description="OCR 3+: tables out of the markdown into `<rel>.tables/` (`markdown` or"
        " `html`); unset: tables stay inline")
    inline_tables: bool = Field(False, description="with `table_format`: put the tables back into the"
                                " markdown instead of linking `<rel>.tables/` files")
    extract_header: bool = Field(False, description="OCR 3+: page headers into each page's `header`")
    extract_footer: bool = Field(False, description="OCR 3+: page footers into each page's `footer`")
    markdown_headers_footers: bool = Field(True, description="with `extract_header`/`extract_footer`:"
                                           " keep them in the markdown too")
    confidence_scores_granularity: Literal["page", "word", "block"] | None = Field(
        None, description="confidence scores per `page`, `word` or `block`")
    confidence_threshold: float = Field(0.8, ge=0, le=1, description="pages below this confidence are"
                                        " listed for review in the run report and `status`")
    include_blocks: bool = Field(False, description="OCR 4+: typed blocks with coordinates")
    document_annotation_schema: Path | None = Field(
        None, description="a JSON Schema file: structured extraction into `<rel>.annotation.json`")
    document_annotation_prompt: str | None = Field(None, description="instructions for the document"
                                                   " annotation")
    bbox_annotation_schema: Path | None = Field(None, description="a JSON Schema file for each"
                                                " image's annotation")

    _paths = field_validator("document_annotation_schema", "bbox_annotation_schema",
                             mode="before")(_as_path)


class LocalSettings(Group):
    """The embedded offline engine (`local:` in a config file)."""

    language: str = Field("eng", description="Tesseract languages, e.g. `eng` or `eng+deu`")
    dpi: int = Field(300, ge=50, le=1200, description="resolution scanned PDF pages are rendered at")
    force_ocr: bool = Field(False, description="OCR every page even when it has a text layer")
    processes: int = Field(0, ge=0, description="OCR processes (0: one per core the run may use, "
                           "a container CPU quota included)")
    max_pixels: int = Field(200_000_000, ge=1, description="a page above this many pixels fails as"
                            " `too_large`")
    tessdata_path: str | None = Field(None, description="folder of `*.traineddata` (default:"
                                      " TESSDATA_PREFIX, then the tessdata package)")
    cluster: str | None = Field(None, description="a Dask scheduler (`tcp://HOST:8786`) to run the"
                                " pages on, instead of processes on this machine")


FILE_BYTES_CEILING = 512 * 1024 * 1024  # the Files API takes files up to 512 MB


class BatchSettings(Group):
    """Batch mode (`mode: batch`): Mistral's Batch API, at half the price (`batch:` in a file)."""

    poll_interval_min: float = Field(5.0, gt=0, description="batch: seconds between polls of the jobs"
                                     " while they progress")
    poll_interval_max: float = Field(120.0, gt=0, description="batch: longest wait between polls"
                                     " (backoff while nothing moves)")
    max_requests_per_job: int = Field(10_000, ge=1, description="batch: request lines per file (one"
                                      " file per job)")
    max_file_bytes: int = Field(200 * 1024 * 1024, ge=10_000, le=FILE_BYTES_CEILING,
                                description="batch: bytes per request file (the Files API takes 512 MB)")
    timeout_hours: int = Field(24, ge=1, le=168, description="batch: the jobs' timeout (1 to 168 hours)")
    wait: bool = Field(True, description="batch: wait for the jobs (`false`: like `--no-wait`)")
    max_rounds: int = Field(3, ge=1, description="batch: times a waiting run sends again the chunks of"
                            " ended jobs")

    @model_validator(mode="after")
    def _poll_order(self) -> BatchSettings:
        if self.poll_interval_max < self.poll_interval_min:
            raise ValueError("poll_interval_max must be at least poll_interval_min")
        return self


class CommandLine(Group):
    """Switches of one invocation: never in a config file."""

    dry_run: bool = False
    retry_failed: bool = False
    retry_categories: list[str] = Field(default_factory=list)
    force: bool = False

    _lists = field_validator("retry_categories", mode="before")(_as_str_list)


# Flat file key -> its group's attribute on Settings. `local` is a section of its own.
FILE_GROUPS: dict[str, type[Group]] = {
    "service": ServiceSettings,
    "limits": LimitSettings,
    "run": RunSettings,
    "outputs": OutputSettings,
}
KEY_GROUPS: dict[str, str] = {
    key: group for group, model in FILE_GROUPS.items() for key in model.model_fields
}
CLI_ONLY = frozenset(CommandLine.model_fields)
# Sections: a mapping of their own in a config file (`local: {dpi: 300}`), keys dotted elsewhere.
SECTIONS: dict[str, type[Group]] = {"local": LocalSettings, "batch": BatchSettings}
