"""Progress reporting: the builder calls a Reporter; the Reporter decides how it looks.

The builder never prints. Steps are identified by a `Step` (a number and a
label such as "[build 2/4] RUN make"); every call is thread-safe because stages
build in parallel threads. `PlainReporter` writes numbered, greppable lines
like BuildKit's `--progress=plain`:

    #3 [build 2/4] RUN make
    #3 0.412 compiling...
    #3 DONE 1.2s
    #4 [build 3/4] COPY . /src
    #4 CACHED

Every reporter also fills a `BuildSummary` (`reporter.summary`): one row per
step, from the ordinary events plus the optional `step_cache_info` call that
carries what only the engine knows (time saved by a hit, bytes reused). After
the build, `render_cache_report(summary)` gives the text table and
`cache_report_json(summary)` the dict written by `--cache-report=json`.

`make_reporter(mode, stream)` picks the style: `plain` (this module),
`rawjson` (`pybuild.ui.rawjson`) or `tty` (`pybuild.ui.tty`, a live `rich`
display). Reporters are context managers; `close()` must be called when the
build ends (it stops the live display and prints a failing step's full log).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Protocol, TextIO


@dataclass
class Step:
    number: int
    label: str
    started: float = field(default_factory=time.monotonic)


class Reporter(Protocol):
    summary: BuildSummary

    def step_started(self, step: Step) -> None: ...
    def step_cached(self, step: Step) -> None: ...
    def step_miss(self, step: Step, reason: str) -> None: ...
    def step_log(self, step: Step, line: str) -> None: ...
    def step_done(self, step: Step) -> None: ...
    def step_failed(self, step: Step, message: str) -> None: ...
    def step_cache_info(self, step: Step, *, cached: bool, reason: str | None = None,
                        duration_s: float | None = None, saved_s: float | None = None,
                        bytes_reused: int = 0) -> None: ...
    def warning(self, message: str) -> None: ...
    def info(self, message: str) -> None: ...
    def close(self) -> None: ...


# ---------------------------------------------------------------- cache report

_CHAIN_REASONS = ("an earlier step was rebuilt", "parent step rebuilt")


@dataclass
class StepRow:
    """One step of the build as the cache report shows it."""

    number: int
    label: str
    cached: bool | None = None  # None: neither a hit nor a miss was reported (still running / failed early)
    reason: str | None = None  # why it missed
    duration_s: float | None = None  # time spent on this step in this build
    saved_s: float | None = None  # for a hit: the recorded duration of the original run
    bytes_reused: int = 0  # for a hit: size of the reused layer blob
    failed: bool = False
    error: str | None = None
    first_cause: str | None = None  # for "an earlier step was rebuilt": "#N <label>: <reason>"

    @property
    def result(self) -> str:
        if self.failed:
            return "ERROR"
        if self.cached:
            return "CACHED"
        if self.cached is False:
            return "rebuilt"
        return "-"


class BuildSummary:
    """Per-step rows collected during a build; thread-safe (stages run in parallel threads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rows: dict[int, StepRow] = {}
        self.started = time.monotonic()
        self.finished: float | None = None

    def _row(self, step: Step) -> StepRow:
        row = self._rows.get(step.number)
        if row is None:
            row = self._rows[step.number] = StepRow(step.number, step.label)
        return row

    def started_step(self, step: Step) -> None:
        with self._lock:
            self._row(step)

    def cached(self, step: Step) -> None:
        with self._lock:
            row = self._row(step)
            row.cached = True
            if row.duration_s is None:
                row.duration_s = round(time.monotonic() - step.started, 3)

    def missed(self, step: Step, reason: str) -> None:
        with self._lock:
            row = self._row(step)
            row.cached = False
            row.reason = reason

    def done(self, step: Step) -> None:
        with self._lock:
            row = self._row(step)
            if row.cached is None:
                row.cached = False  # executed without a reported miss (e.g. a FROM that was unpacked)
            if row.duration_s is None:
                row.duration_s = round(time.monotonic() - step.started, 3)

    def failed(self, step: Step, message: str) -> None:
        with self._lock:
            row = self._row(step)
            row.failed = True
            row.error = message
            if row.duration_s is None:
                row.duration_s = round(time.monotonic() - step.started, 3)

    def cache_info(self, step: Step, *, cached: bool, reason: str | None = None, duration_s: float | None = None,
                   saved_s: float | None = None, bytes_reused: int = 0) -> None:
        with self._lock:
            row = self._row(step)
            row.cached = cached
            if reason is not None:
                row.reason = reason
            if duration_s is not None:
                row.duration_s = round(duration_s, 3)
            if saved_s is not None:
                row.saved_s = round(saved_s, 3)
            row.bytes_reused = int(bytes_reused or 0)

    def finish(self) -> None:
        if self.finished is None:
            self.finished = time.monotonic()

    @property
    def rows(self) -> list[StepRow]:
        """Rows by step number, with `first_cause` filled in for chained misses."""
        with self._lock:
            rows = [StepRow(**vars(r)) for _, r in sorted(self._rows.items())]
        first: dict[str, StepRow] = {}  # stage prefix -> first miss with a real reason
        for row in rows:
            if row.cached is not False:
                continue
            stage = _stage_of(row.label)
            if row.reason in _CHAIN_REASONS:
                cause = first.get(stage)
                if cause is not None:
                    row.first_cause = f"#{cause.number} {cause.label}: {cause.reason}"
            elif row.reason and stage not in first:
                first[stage] = row
        return rows

    def totals(self) -> dict[str, Any]:
        rows = self.rows
        cached = [r for r in rows if r.cached and not r.failed]
        rebuilt = [r for r in rows if r.cached is False and not r.failed]
        failed = [r for r in rows if r.failed]
        end = self.finished if self.finished is not None else time.monotonic()
        return {
            "steps": len(rows),
            "cached": len(cached),
            "rebuilt": len(rebuilt),
            "failed": len(failed),
            "cache_hit_ratio": round(len(cached) / len(rows), 4) if rows else 0.0,
            "time_saved_s": round(sum(r.saved_s or 0.0 for r in cached), 3),
            "bytes_reused": sum(r.bytes_reused for r in cached),
            "duration_s": round(end - self.started, 3),
        }


def _stage_of(label: str) -> str:
    """"[build 2/4] RUN make" -> "[build"; "[2/4] RUN x" -> "["."""
    if label.startswith("["):
        head = label.split("]", 1)[0]
        return head.rsplit(" ", 1)[0] if " " in head else "["
    return ""


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}s"


def _bytes(n: int) -> str:
    if not n:
        return "-"
    size = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{n} B"  # pragma: no cover


def summary_line(summary: BuildSummary) -> str:
    """`14 steps: 12 cached (86%), 41.2 s saved, 2 rebuilt` (plus `, 1 failed` when one did)."""
    t = summary.totals()
    pct = round(100 * t["cached"] / t["steps"]) if t["steps"] else 0
    line = (f"{t['steps']} step{'s' if t['steps'] != 1 else ''}: {t['cached']} cached ({pct}%), "
            f"{t['time_saved_s']:.1f} s saved, {t['rebuilt']} rebuilt")
    if t["failed"]:
        line += f", {t['failed']} failed"
    return line


def render_cache_report(summary: BuildSummary) -> str:
    """The text cache report: one row per step, then the summary line. No ANSI codes.

        #   STEP                          RESULT   TIME   SAVED  REUSED   REASON
        #2  [2/3] COPY app.py /app/       rebuilt  0.1s   -      -        COPY app.py changed: app.py
        #3  [3/3] RUN make                rebuilt  2.3s   -      -        an earlier step was rebuilt (first cause: #2 ...)
        3 steps: 1 cached (33%), 0.0 s saved, 2 rebuilt
    """
    rows = summary.rows
    table = [("#", "STEP", "RESULT", "TIME", "SAVED", "REUSED", "REASON")]
    for r in rows:
        reason = r.error if r.failed else (r.reason or "")
        if r.first_cause:
            reason += f" (first cause: {r.first_cause})"
        table.append((f"#{r.number}", _clip(r.label, 60), r.result, _seconds(r.duration_s),
                      _seconds(r.saved_s) if r.cached else "-", _bytes(r.bytes_reused) if r.cached else "-",
                      reason))
    widths = [max(len(row[i]) for row in table) for i in range(6)]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:6])) + "  " + row[6] for row in table]
    lines = [line.rstrip() for line in lines]
    lines.append(summary_line(summary))
    return "\n".join(lines) + "\n"


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def cache_report_json(summary: BuildSummary) -> dict:
    """The `--cache-report=json` document (schema version 1)::

        {
          "version": 1,
          "summary": {
            "steps": 14, "cached": 12, "rebuilt": 2, "failed": 0,
            "cache_hit_ratio": 0.8571,          # cached / steps
            "time_saved_s": 41.2,               # sum of saved_s over cached steps
            "bytes_reused": 123456,             # sum of bytes_reused over cached steps
            "duration_s": 3.1,                  # wall time of the build
            "text": "14 steps: 12 cached (86%), 41.2 s saved, 2 rebuilt"
          },
          "steps": [
            {"number": 3, "name": "[build 2/4] RUN make",
             "result": "cached" | "rebuilt" | "error" | "unknown",
             "cached": true | false | null,
             "reason": str | null,              # why it missed (null for hits)
             "first_cause": str | null,         # for "an earlier step was rebuilt": "#N <name>: <reason>"
             "error": str | null,
             "duration_s": float | null,        # time spent in this build
             "saved_s": float | null,           # hits: recorded duration of the original run
             "bytes_reused": int}               # hits: size of the reused layer blob
          ]
        }
    """
    totals = summary.totals()
    totals["text"] = summary_line(summary)
    steps = []
    for r in summary.rows:
        result = "error" if r.failed else {True: "cached", False: "rebuilt", None: "unknown"}[r.cached]
        steps.append({"number": r.number, "name": r.label, "result": result, "cached": r.cached,
                      "reason": r.reason, "first_cause": r.first_cause, "error": r.error,
                      "duration_s": r.duration_s, "saved_s": r.saved_s, "bytes_reused": r.bytes_reused})
    return {"version": 1, "summary": totals, "steps": steps}


# ---------------------------------------------------------------- failure excerpt

def dockerfile_excerpt(text: str, name: str, location: str | None, context: int = 2) -> str | None:
    """BuildKit's failure excerpt: the lines around ``location`` ("NAME:LINE[:COL]") of the
    Dockerfile ``text``, the failing instruction (all its lines) marked ``>>>``.  When COL points
    into the instruction rather than at its keyword (a flag, an argument), a ``^`` line under
    LINE marks that column.  None when the location is elsewhere (e.g. a base image's ONBUILD
    trigger).  Lines end at ``\\n`` (a trailing ``\\r`` dropped), as the parser counts them; control
    characters in them are escaped as in parse errors (``\\x00``).  Pure."""
    from pybuild.grammar.errors import caret_padding, printable

    if not location or not location.startswith(name + ":"):
        return None
    nums = location[len(name) + 1:].split(":")
    if not 1 <= len(nums) <= 2 or not all(n.isdigit() for n in nums):
        return None
    line = int(nums[0])
    col = int(nums[1]) if len(nums) == 2 else None
    lines = [ln.rstrip("\r") for ln in text.removeprefix("\ufeff").split("\n")]  # a BOM is not shown
    if len(lines) > 1 and lines[-1] == "":
        lines.pop()  # the newline that ends the last line starts none
    if not 1 <= line <= len(lines):
        return None

    def continues(n: int) -> bool:
        return lines[n - 1].rstrip().endswith(("\\", "`")) and not lines[n - 1].lstrip().startswith("#")

    def skipped(n: int) -> bool:  # blank and comment lines inside a continuation
        return not lines[n - 1].strip() or lines[n - 1].lstrip().startswith("#")

    start = line  # LINE may be a continuation line: mark from the instruction's first line
    n = line - 1
    while n >= 1 and (continues(n) or skipped(n)):
        if continues(n):
            start = n
        n -= 1
    end = n = line  # ... to its last
    while continues(end) and n < len(lines):
        n += 1
        if not skipped(n):
            end = n
    first, last = max(1, start - context), min(len(lines), end + context)
    width = len(str(last))
    body: list[str] = []
    for n in range(first, last + 1):
        body.append(f" {n:>{width}} | {'>>> ' if start <= n <= end else '    '}{printable(lines[n - 1])}".rstrip())
        src = lines[n - 1]
        keyword_col = len(src) - len(src.lstrip()) + 1
        if n == line and col is not None and not (n == start and col == keyword_col):
            # tabs kept in the padding so that the caret lines up under tab-indented source
            body.append(f" {'':>{width}} |     {caret_padding(src, col)}^")
    rule = "-" * 20
    return "\n".join([f"{name}:{start}", rule, *body, rule])


# ---------------------------------------------------------------- reporters

class ReporterBase:
    """Summary bookkeeping shared by every reporter; subclasses call super() in each event."""

    def __init__(self) -> None:
        self.summary = BuildSummary()

    # The build's outcome, after close(): docker's closing lines on stderr.  rawjson overrides
    # both so that its stream stays one JSON event per line to the end.
    def build_written(self, image_id: str, manifest_digest: str, names: list[str]) -> None:
        print(f"writing image {image_id} done", file=sys.stderr)
        for name in names:
            print(f"naming to {name} done", file=sys.stderr)

    def build_lint(self, warnings: list[tuple[str, str, int]]) -> None:
        """The Dockerfile's lint warnings (rule, message, line), after the build, as BuildKit
        lists them; `pybuild check` shows each with file and column."""
        n = len(warnings)
        print(f"{n} warning{'s' if n != 1 else ''} found (use `pybuild check` for details):", file=sys.stderr)
        for rule, message, line in warnings:
            print(f" - {rule}: {message} (line {line})", file=sys.stderr)

    def build_error(self, message: str, log_path: str | None = None, excerpt: str | None = None,
                    location: str | None = None) -> None:
        """How a failed build ends; ``location`` ("FILE:LINE[:COL]", in ``message`` too) is for
        rawjson's fields."""
        if excerpt:
            print(excerpt, file=sys.stderr)
        print(f"ERROR: {message}", file=sys.stderr)
        if log_path:
            print(f"full output of the step: {log_path}", file=sys.stderr)

    def step_started(self, step: Step) -> None:
        self.summary.started_step(step)

    def step_cached(self, step: Step) -> None:
        self.summary.cached(step)

    def step_miss(self, step: Step, reason: str) -> None:
        self.summary.missed(step, reason)

    def step_log(self, step: Step, line: str) -> None:
        pass

    def step_done(self, step: Step) -> None:
        self.summary.done(step)

    def step_failed(self, step: Step, message: str) -> None:
        self.summary.failed(step, message)

    def step_cache_info(self, step: Step, *, cached: bool, reason: str | None = None,
                        duration_s: float | None = None, saved_s: float | None = None,
                        bytes_reused: int = 0) -> None:
        """What the engine knows about a step once it is settled; call after step_cached/step_done."""
        self.summary.cache_info(step, cached=cached, reason=reason, duration_s=duration_s, saved_s=saved_s,
                                bytes_reused=bytes_reused)

    def warning(self, message: str) -> None:
        pass

    def info(self, message: str) -> None:
        pass

    def close(self) -> None:
        self.summary.finish()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class PlainReporter(ReporterBase):
    """Numbered plain lines on a text stream (stderr by default). `quiet` keeps only warnings and errors."""

    def __init__(self, stream: TextIO | None = None, quiet: bool = False):
        super().__init__()
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self._lock = threading.Lock()
        self.cached: list[Step] = []
        self.executed: list[Step] = []

    def _write(self, text: str, force: bool = False) -> None:
        if self.quiet and not force:
            return
        with self._lock:
            self.stream.write(text + "\n")
            self.stream.flush()

    def step_started(self, step: Step) -> None:
        super().step_started(step)
        self._write(f"#{step.number} {step.label}")

    def step_cached(self, step: Step) -> None:
        super().step_cached(step)
        self.cached.append(step)
        self._write(f"#{step.number} CACHED")

    def step_miss(self, step: Step, reason: str) -> None:
        super().step_miss(step, reason)
        step.started = time.monotonic()  # it runs from now, not from when it began to wait (COPY --from)
        self._write(f"#{step.number} cache miss: {reason}")

    def step_log(self, step: Step, line: str) -> None:
        self._write(f"#{step.number} {time.monotonic() - step.started:.3f} {line}")

    def step_done(self, step: Step) -> None:
        super().step_done(step)
        self.executed.append(step)
        self._write(f"#{step.number} DONE {time.monotonic() - step.started:.1f}s")

    def step_failed(self, step: Step, message: str) -> None:
        super().step_failed(step, message)
        self._write(f"#{step.number} ERROR: {message}", force=True)

    def warning(self, message: str) -> None:
        self._write(f"WARNING: {message}", force=True)

    def info(self, message: str) -> None:
        self._write(message)


# ---------------------------------------------------------------- choosing one

PROGRESS_MODES = ("auto", "tty", "plain", "rawjson")


def make_reporter(mode: str = "auto", stream: TextIO | None = None, *, quiet: bool = False,
                  environ: dict[str, str] | None = None) -> ReporterBase:
    """The reporter for `--progress MODE` writing on `stream` (stderr by default).

    `auto` first honours `PYBUILD_PROGRESS` (one of tty/plain/rawjson), then picks
    `tty` when the stream is a terminal and `TERM` is not `dumb`, else `plain`.
    `quiet` (`-q`) always means plain-quiet (only warnings and errors), except
    for rawjson, which keeps its format and emits only error/warning events.
    `NO_COLOR` (non-empty) turns colour off in the tty display; plain and rawjson
    never emit ANSI codes.
    """
    env = os.environ if environ is None else environ
    stream = stream or sys.stderr
    if mode not in PROGRESS_MODES:
        raise ValueError(f"unknown progress mode {mode!r} (expected one of {', '.join(PROGRESS_MODES)})")
    if mode == "auto":
        wanted = env.get("PYBUILD_PROGRESS", "").strip().lower()
        if wanted in ("tty", "plain", "rawjson"):
            mode = wanted
        else:
            mode = "tty" if _is_tty(stream) and env.get("TERM", "") != "dumb" else "plain"
    if mode == "rawjson":
        from pybuild.ui.rawjson import RawJSONReporter
        return RawJSONReporter(stream, quiet=quiet)
    if mode == "tty" and not quiet:
        from pybuild.ui.tty import TTYReporter
        return TTYReporter.for_stream(stream, no_color=bool(env.get("NO_COLOR")))
    return PlainReporter(stream, quiet=quiet)


def _is_tty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False
