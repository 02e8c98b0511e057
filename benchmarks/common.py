"""Helpers shared by the benchmarks: cached input trees, a fake server in its own process, the
pipeline run as a child process with its own CPU time and peak RSS, and result printing.

Every benchmark is a script that prints figures (never a test): it prints the command that
reproduces them and, with `--json FILE`, writes its figures for `run_all.py`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PY = sys.executable
CACHE = Path(os.environ.get("OCR_BENCH_CACHE", "/tmp/ocr-pipeline-bench-cache"))
SCRATCH = Path(os.environ.get("OCR_BENCH_SCRATCH", "/tmp/ocr-pipeline-bench-scratch"))
API_KEY = "bench"
# The strict fake server's 429s say Retry-After in whole seconds only, at least 1, as the real
# service and most gateways do; the server's default also sends the exact retry-after-ms, which
# is lenient (a client that reads it never waits a whole second for a place freed in 3 ms).
WHOLE_SECOND_RETRY_AFTER = ("--retry-after-style", "seconds")
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ---- printing ---------------------------------------------------------------------------------
def reproduce_line(argv: list[str] | None = None) -> str:
    argv = sys.argv if argv is None else argv
    script = os.path.relpath(os.path.abspath(argv[0]), ROOT)
    return ".venv/bin/python " + " ".join(shlex.quote(a) for a in [script, *argv[1:]])


def banner(title: str) -> None:
    print(f"== {title}", flush=True)
    print(f"   reproduce (from the repository root): {reproduce_line()}", flush=True)
    print(f"   machine: {os.cpu_count()} cores, python {sys.version.split()[0]},"
          f" load average now {load():.2f} (other processes share these cores)", flush=True)


def load() -> float:
    """1-minute load average: on a 2-core machine shared with other work, read figures with it."""
    return os.getloadavg()[0]


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:,.3f}" if abs(v) < 10 else f"{v:,.1f}"
        if isinstance(v, int) and not isinstance(v, bool):
            return f"{v:,}"
        return "" if v is None else str(v)

    cells = [[fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.rjust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


@dataclass
class Figure:
    """One line of the final table: a measured value against its target."""

    bench: str
    name: str
    value: float
    unit: str
    target: str = ""
    met: bool | None = None
    note: str = ""


@dataclass
class Results:
    bench: str
    command: str = field(default_factory=reproduce_line)
    figures: list[Figure] = field(default_factory=list)
    details: list[dict[str, Any]] = field(default_factory=list)

    def add(self, name: str, value: float, unit: str, target: str = "", met: bool | None = None,
            note: str = "") -> None:
        self.figures.append(Figure(self.bench, name, value, unit, target, met, note))

    def print_figures(self) -> None:
        rows = [
            {"figure": f.name, "value": round(f.value, 3), "unit": f.unit, "target": f.target,
             "met": "" if f.met is None else ("met" if f.met else "MISSED"), "note": f.note}
            for f in self.figures
        ]
        if rows:
            print(table(rows, ["figure", "value", "unit", "target", "met", "note"]), flush=True)

    def dump(self, path: str | None) -> None:
        print(f"   load average at the end: {load():.2f}", flush=True)
        if path:
            Path(path).write_text(json.dumps(asdict(self), indent=1))


# ---- inputs -----------------------------------------------------------------------------------
def pdf_bytes(texts: list[str]) -> bytes:
    from tests.pdfgen import pdf_bytes as _pdf_bytes

    return _pdf_bytes(texts)


def page_text(doc: str, page: int) -> str:
    from tests.pdfgen import page_text as _page_text

    return _page_text(doc, page)


def _publish(tmp: Path, final: Path) -> Path:
    if final.exists():
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        tmp.rename(final)
    return final


def big_pdf(pages: int) -> Path:
    """A born-digital PDF of `pages` pages, page i reading `page_text("big", i)`; cached."""
    path = CACHE / f"big-{pages}p.pdf"
    if not path.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(pdf_bytes([page_text("big", i) for i in range(pages)]))
        tmp.rename(path)
    return path


DOC_MARK = b"QQQQQQQQ"  # in each typeset variant; replaced by the document's number


def _variant(v: int, pages: int) -> bytes:
    """A PDF with uncompressed content streams whose every page carries DOC_MARK: replacing it
    by 8 other characters keeps every offset, so the file stays valid."""
    import io

    from reportlab.lib.pagesizes import letter
    from reportlab.pdfgen import canvas

    buf = io.BytesIO()
    c = canvas.Canvas(buf, pagesize=letter, pageCompression=0)
    for p in range(pages):
        c.setFont("Helvetica", 14)
        c.drawString(72, letter[1] - 100, f"{page_text(f'v{v}', p)} id {DOC_MARK.decode()}")
        c.showPage()
    c.save()
    return buf.getvalue()


def tree(docs: int, pages: int, *, folders: int = 1, variants: int = 20) -> Path:
    """`docs` PDFs of `pages` pages spread over `folders` folders; cached under CACHE.

    Every file has its own bytes and text (the pipeline OCRs files of the same bytes once, so
    copies would measure nothing): `variants` layouts are typeset once and each file gets its
    number written into every page, cheap enough for 100,000 files.
    """
    final = CACHE / f"tree-unique-{docs}x{pages}p-{folders}f"
    if final.exists():
        return final
    tmp = CACHE / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    blobs = [_variant(v, pages) for v in range(variants)]
    per_folder = -(-docs // folders)
    t0 = time.perf_counter()
    for i in range(docs):
        folder = tmp / (f"f{i // per_folder:03d}" if folders > 1 else "")
        if i % per_folder == 0 or folders == 1 and i == 0:
            folder.mkdir(parents=True, exist_ok=True)
        data = blobs[i % variants].replace(DOC_MARK, f"{i:08d}".encode())
        (folder / f"doc{i:06d}.pdf").write_bytes(data)
    print(f"   (generated {docs:,} PDFs of {pages} page(s) in {time.perf_counter() - t0:.1f} s,"
          f" each its own bytes: {final})", flush=True)
    return _publish(tmp, final)


def fresh_dir(name: str) -> Path:
    path = SCRATCH / name
    shutil.rmtree(path, ignore_errors=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


# ---- processes --------------------------------------------------------------------------------
def stop_process(proc: subprocess.Popen[Any]) -> None:
    """SIGTERM, then SIGKILL after 10 s: every helper process a benchmark starts ends."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def proc_cpu_s(pid: int) -> float:
    """user + system CPU seconds of a live process (from /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def bench_env() -> dict[str, str]:
    env = dict(os.environ)
    env["MISTRAL_API_KEY"] = API_KEY
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


class FakeServerProcess:
    """`python -m pipeline fake-server` in its own process, so it does not share our CPU."""

    def __init__(self, *args: str) -> None:
        self.args = ["--port", "0", *args]
        self.argv = [PY, "-m", "pipeline", "fake-server", *self.args]
        self.proc = subprocess.Popen(
            self.argv, cwd=ROOT, env=bench_env(), stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if "listening on" not in line:
            self.proc.kill()
            raise RuntimeError(f"fake server did not start: {line!r}")
        self.url = line.strip().rsplit(" ", 1)[-1]

    def command(self) -> str:
        return ".venv/bin/python -m pipeline fake-server " + " ".join(self.args)

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.url + "/_stats", timeout=30) as r:
            data = json.loads(r.read())
        data.pop("ok_by_document", None)
        return data

    def reset(self) -> None:
        req = urllib.request.Request(self.url + "/_reset", method="POST")
        with urllib.request.urlopen(req, timeout=30) as r:
            r.read()

    def cpu_s(self) -> float:
        return proc_cpu_s(self.proc.pid)

    def stop(self) -> None:
        stop_process(self.proc)

    def __enter__(self) -> FakeServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class ChildRun:
    """What one child process cost: wall time, its own CPU time, its peak RSS."""

    argv: list[str]
    returncode: int
    wall_s: float
    cpu_s: float
    user_s: float
    sys_s: float
    maxrss_mb: float
    report: dict[str, Any] | None = None


# A child's ru_maxrss counts its PARENT's peak resident memory: Linux folds the high-water mark
# of the image a child replaces at exec into the child's, and after vfork that image is the
# parent's (a benchmark that once held 300 MB gives `python -c pass` 313 MiB). So children are
# started through this small launcher, which reports its own child's exit and rusage in a file
# and forwards SIGINT / SIGTERM to it (the child runs in its own process group).
LAUNCHER = """
import json, os, signal, subprocess, sys
got, proc = [], None
for sig in (signal.SIGINT, signal.SIGTERM):
    signal.signal(sig, lambda s, _f: proc.send_signal(s) if proc else got.append(s))
def orphan_guard():  # SIGTERM for the child if we die (even by SIGKILL): no run left behind
    import ctypes
    ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG (Linux)
# Its own process group: a Ctrl-C at the terminal reaches it once, through us, not twice.
proc = subprocess.Popen(sys.argv[2:], process_group=0,
                        preexec_fn=orphan_guard if sys.platform == "linux" else None)
for sig in got:  # a signal that came before the child existed
    proc.send_signal(sig)
_, status, usage = os.wait4(proc.pid, 0)
with open(sys.argv[1], "w") as fh:
    json.dump({"code": os.waitstatus_to_exitcode(status), "utime": usage.ru_utime,
               "stime": usage.ru_stime, "maxrss_kib": usage.ru_maxrss}, fh)
"""


@dataclass(frozen=True)
class ChildUsage:
    """A launched child's own exit code and rusage (not its launcher's, not ours)."""

    code: int
    utime: float
    stime: float
    maxrss_kib: int


def launched(argv: list[str], figures: Path) -> list[str]:
    """`argv` run by the launcher, which writes the child's ChildUsage to `figures`."""
    return [PY, "-S", "-c", LAUNCHER, str(figures), *argv]


def launched_usage(figures: Path) -> ChildUsage:
    data = json.loads(figures.read_text())
    return ChildUsage(int(data["code"]), float(data["utime"]), float(data["stime"]),
                      int(data["maxrss_kib"]))


def run_child(argv: list[str], *, env: dict[str, str] | None = None, timeout: float = 3600,
              quiet: bool = True) -> ChildRun:
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        figures = Path(folder) / "child.json"
        proc = subprocess.Popen(
            launched(argv, figures), cwd=ROOT, env=env or bench_env(),
            stdout=subprocess.DEVNULL if quiet else None,
            stderr=subprocess.PIPE if quiet else None,
        )
        stderr = b""
        if quiet:
            assert proc.stderr is not None
            stderr = proc.stderr.read()  # drained until the child closes it (exits)
        proc.wait(timeout)
        wall = time.perf_counter() - started
        usage = launched_usage(figures)
    if usage.code not in (0, 1, 3, 130):
        sys.stderr.write(stderr.decode(errors="replace")[-3000:])
    return ChildRun(argv, usage.code, wall, usage.utime + usage.stime, usage.utime,
                    usage.stime, usage.maxrss_kib / 1024.0)


def pipeline_argv(url: str, inp: Path, out: Path, *, rps: float = 0, workers: int = 8,
                  max_in_flight: int = 32, extra: list[str] | None = None) -> list[str]:
    return [
        PY, "-m", "pipeline", "run", "--backend", "mistral", "--endpoint", url,
        "--input", str(inp), "--output", str(out), "--rps", f"{rps:g}",
        "--workers", str(workers), "--max-in-flight", str(max_in_flight),
        "--progress", "off", "--quiet", *(extra or []),
    ]


def shown(argv: list[str]) -> str:
    """A child's command line as a person would type it (.venv python, relative paths kept)."""
    parts = [".venv/bin/python" if a == PY else a for a in argv]
    return "MISTRAL_API_KEY=bench " + " ".join(shlex.quote(p) for p in parts)


def last_report(out: Path) -> dict[str, Any] | None:
    runs = sorted((out / ".ocr-pipeline" / "runs").glob("*.json"), key=lambda p: p.stat().st_mtime)
    return json.loads(runs[-1].read_text()) if runs else None


def run_pipeline(url: str, inp: Path, out: Path, **kwargs: Any) -> ChildRun:
    run = run_child(pipeline_argv(url, inp, out, **kwargs))
    run.report = last_report(out)
    return run


def startup_cpu_s() -> float:
    """CPU of starting the pipeline's CLI and importing its modules, to subtract from per-page
    figures (median of three)."""
    code = "import pipeline.commands.cli, pipeline.run.runner, pipeline.backends.mistral"
    runs = sorted(run_child([PY, "-c", code]).cpu_s for _ in range(3))
    return runs[1]


@contextlib.contextmanager
def timer() -> Iterator[dict[str, float]]:
    box: dict[str, float] = {}
    t0 = time.perf_counter()
    try:
        yield box
    finally:
        box["s"] = time.perf_counter() - t0


def py_spy_top(argv: list[str], out_file: Path, top: int = 25) -> str:
    """Run `argv` under py-spy (all threads, native frames off) and summarise the hot spots:
    self time by function and inclusive time by pipeline function. Empty when py-spy is missing."""
    spy = shutil.which("py-spy") or str(Path(PY).parent / "py-spy")
    if not Path(spy).exists():
        return "(py-spy not installed: .venv/bin/pip install py-spy)"
    raw = out_file.with_suffix(".folded")
    subprocess.run(
        [spy, "record", "--rate", "250", "--format", "raw", "--output", str(raw), "--", *argv],
        cwd=ROOT, env=bench_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        check=False,
    )
    if not raw.exists():
        return "(py-spy produced no profile)"
    return summarise_folded(raw, top)


def summarise_folded(raw: Path, top: int = 25) -> str:
    selfs: dict[str, int] = {}
    incl: dict[str, int] = {}
    total = 0
    busy_total = 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        count = int(n)
        total += count
        frames = stack.split(";")
        leaf = frames[-1]
        if _is_idle(frames):
            continue
        busy_total += count
        selfs[leaf] = selfs.get(leaf, 0) + count
        seen: set[str] = set()
        for f in frames:
            key = f.split(" (")[0] + " (" + f.split(" (", 1)[1].split(":")[0] if " (" in f else f
            if key in seen:
                continue
            seen.add(key)
            incl[key] = incl.get(key, 0) + count
    disk = sum(n for leaf, n in selfs.items() if _disk_wait(leaf))
    lines = [f"   samples: {total:,} in all, {busy_total:,} busy (not waiting in select/queue)",
             f"   of the busy samples, {100 * disk / max(busy_total, 1):.1f}% wait for the disk"
             " (fsync, SQLite commit): wall time, not CPU"]
    lines.append("   self time, busy samples:")
    for name, n in sorted(selfs.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"   {100 * n / max(busy_total, 1):5.1f}%  {name}")
    lines.append("   inclusive time of pipeline / library functions, busy samples:")
    keep = [(k, v) for k, v in incl.items()
            if any(s in k for s in ("pipeline/", "pypdf/", "sqlite", "json/", "aiohttp/",
                                    "base64", "hashlib", "os.py", "tempfile"))]
    for name, n in sorted(keep, key=lambda kv: -kv[1])[:top]:
        lines.append(f"   {100 * n / max(busy_total, 1):5.1f}%  {name}")
    return "\n".join(lines)


def _leaf_source(leaf: str) -> str:
    """The source line a folded frame `func (path:line)` points at ('' when unknown)."""
    import linecache

    try:
        where = leaf.rsplit(" (", 1)[1].rstrip(")")
        path, line = where.rsplit(":", 1)
    except (IndexError, ValueError):
        return ""
    if not path.startswith("/"):
        path = str(ROOT / path)
    return linecache.getline(path, int(line)).strip() if line.isdigit() else ""


def _is_idle(frames: list[str]) -> bool:
    """Waiting, not working: the event loop in select, a thread waiting for a queue or lock.

    py-spy 0.4 names methods with their class (`EpollSelector.select`), and a wait in C code
    (`queue.SimpleQueue.get`) shows as the Python line that called it: read that line."""
    leaf = frames[-1]
    name = leaf.split(" (", 1)[0].rsplit(".", 1)[-1]
    if name in ("select", "poll") and "(selectors.py" in leaf:
        return True
    if leaf.startswith(("wait (threading.py", "Condition.wait (threading.py",
                        "Event.wait (threading.py", "get (queue.py", "Queue.get (queue.py",
                        "_worker (concurrent")):
        return True
    src = _leaf_source(leaf)
    return src.endswith((".get()", "_jobs.get()")) and "queue" not in leaf.lower() and "jobs" in src


def _disk_wait(leaf: str) -> bool:
    """Busy in py-spy's eyes but waiting for the disk: an fsync, or a SQLite commit (the WAL
    fsync of synchronous=FULL happens when the `with db:` block exits)."""
    src = _leaf_source(leaf)
    return "fsync(" in src or src.startswith("with ") and src.endswith("self._db:")


def populated(inp: Path, *, workers: int = 32, max_in_flight: int = 64,
              fresh: bool = False) -> tuple[Path, ChildRun | None, str]:
    """The output of a complete first run over `inp` (cheap server, no latency, no limit),
    cached beside the tree as `<tree>.out` for the resume benchmark. Returns the output folder,
    the populating run when this call made it (None when cached) and its command line."""
    out = inp.parent / (inp.name + ".out")
    marker = out / ".ocr-pipeline" / "bench-complete"
    if marker.exists() and not fresh:
        return out, None, "(cached)"
    shutil.rmtree(out, ignore_errors=True)
    with FakeServerProcess("--cheap") as server:
        kw = dict(workers=workers, max_in_flight=max_in_flight)
        run = run_pipeline(server.url, inp, out, **kw)
        command = shown(pipeline_argv(server.url, inp, out, **kw))
    rep = run.report or {}
    if run.returncode == 0 and rep.get("documents_failed", 1) == 0:
        marker.write_text("populated by benchmarks/common.py\n")
    return out, run, command
