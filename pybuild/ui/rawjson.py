"""`--progress=rawjson`: one JSON object per line, for other tools to consume.

Every line is a self-contained JSON object (UTF-8, no embedded newlines) with
at least `type` and `time` (Unix epoch seconds, float). Step ("vertex") events
also carry `vertex` (the step number, the `#N` of plain output) and `name`
(the step label, e.g. "[build 2/4] RUN make"). Types and their extra fields:

    {"type": "vertex.started",   "vertex": 3, "name": "...", "time": ...}
    {"type": "vertex.cached",    "vertex": 3, "name": "...", "time": ...}
    {"type": "vertex.miss",      "vertex": 3, "name": "...", "time": ..., "reason": "COPY . changed: a.py"}
    {"type": "vertex.log",       "vertex": 3, "name": "...", "time": ..., "elapsed": 0.412, "line": "compiling"}
    {"type": "vertex.completed", "vertex": 3, "name": "...", "time": ..., "duration": 1.234}
    {"type": "vertex.error",     "vertex": 3, "name": "...", "time": ..., "duration": 1.234, "error": "RUN make exited 2"}
    {"type": "vertex.cache",     "vertex": 3, "name": "...", "time": ..., "cached": true, "reason": null,
                                 "duration": 0.01, "saved": 12.5, "bytes_reused": 1048576}
    {"type": "warning",          "time": ..., "message": "..."}
    {"type": "lint.warning",     "time": ..., "rule": "JSONArgsRecommended", "message": "...", "line": 5}
    {"type": "info",             "time": ..., "message": "..."}
    {"type": "image.written",    "time": ..., "id": "sha256:...", "digest": "sha256:...", "names": ["app:1"]}
    {"type": "build.error",      "time": ..., "error": "Dockerfile:2:1: unknown instruction RUNN ...",
                                 "log": null, "excerpt": "Dockerfile:2\\n---...", "file": "Dockerfile",
                                 "line": 2, "column": 1}

`build.error` closes every failed build, whether a step failed or the build stopped before its
steps (the Dockerfile does not parse or cannot be read, a bad flag): `error` is the one-line
message (as after plain output's `ERROR:`), `log` the failed RUN's whole output (a file) or null,
`excerpt` BuildKit's Dockerfile excerpt (the instruction marked `>>>`) or null; `file`, `line`
(1-based) and `column` (1-based, null when only the line is known) say where in the Dockerfile
the error is, all null when it is about no Dockerfile line (a flag, the build context).

`elapsed`/`duration`/`saved` are seconds (floats, millisecond precision);
`line` is one line of the step's output without its newline (undecodable bytes
replaced). Consumers must ignore unknown types and fields (new ones may be
added). With `-q` only `vertex.error`, `warning` and `lint.warning` (and the closing
`image.written` or `build.error`) are written.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import Any, TextIO

from pybuild.progress import ReporterBase, Step


class RawJSONReporter(ReporterBase):
    def __init__(self, stream: TextIO | None = None, quiet: bool = False, clock=time.time):
        super().__init__()
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self._clock = clock
        self._lock = threading.Lock()

    def _emit(self, type_: str, step: Step | None = None, force: bool = False, **fields: Any) -> None:
        if self.quiet and not force:
            return
        event: dict[str, Any] = {"type": type_}
        if step is not None:
            event["vertex"] = step.number
            event["name"] = step.label
        event["time"] = round(self._clock(), 6)
        event.update(fields)
        text = json.dumps(event, ensure_ascii=False, separators=(",", ":"))
        with self._lock:
            self.stream.write(text + "\n")
            self.stream.flush()

    @staticmethod
    def _elapsed(step: Step) -> float:
        return round(time.monotonic() - step.started, 3)

    def step_started(self, step: Step) -> None:
        super().step_started(step)
        self._emit("vertex.started", step)

    def step_cached(self, step: Step) -> None:
        super().step_cached(step)
        self._emit("vertex.cached", step)

    def step_miss(self, step: Step, reason: str) -> None:
        super().step_miss(step, reason)
        self._emit("vertex.miss", step, reason=reason)

    def step_log(self, step: Step, line: str) -> None:
        self._emit("vertex.log", step, elapsed=self._elapsed(step), line=line)

    def step_done(self, step: Step) -> None:
        super().step_done(step)
        self._emit("vertex.completed", step, duration=self._elapsed(step))

    def step_failed(self, step: Step, message: str) -> None:
        super().step_failed(step, message)
        self._emit("vertex.error", step, force=True, duration=self._elapsed(step), error=message)

    def step_cache_info(self, step: Step, *, cached: bool, reason: str | None = None,
                        duration_s: float | None = None, saved_s: float | None = None,
                        bytes_reused: int = 0) -> None:
        super().step_cache_info(step, cached=cached, reason=reason, duration_s=duration_s, saved_s=saved_s,
                                bytes_reused=bytes_reused)
        self._emit("vertex.cache", step, cached=cached, reason=reason,
                   duration=None if duration_s is None else round(duration_s, 3),
                   saved=None if saved_s is None else round(saved_s, 3), bytes_reused=int(bytes_reused or 0))

    def warning(self, message: str) -> None:
        self._emit("warning", force=True, message=message)

    def info(self, message: str) -> None:
        self._emit("info", message=message)

    def build_written(self, image_id: str, manifest_digest: str, names: list[str]) -> None:
        self._emit("image.written", force=True, id=image_id, digest=manifest_digest, names=list(names))

    def build_lint(self, warnings: list[tuple[str, str, int]]) -> None:
        for rule, message, line in warnings:
            self._emit("lint.warning", force=True, rule=rule, message=message, line=line)

    def build_error(self, message: str, log_path: str | None = None, excerpt: str | None = None,
                    location: str | None = None) -> None:
        file, line, column = split_location(location)
        self._emit("build.error", force=True, error=message, log=log_path, excerpt=excerpt,
                   file=file, line=line, column=column)


def split_location(location: str | None) -> tuple[str | None, int | None, int | None]:
    """(file, line, column) of an error's ``location`` "FILE:LINE[:COL]"; (None, None, None) for
    any other (a flag such as "--target", none)."""
    import re

    m = re.fullmatch(r"(.+?):(\d+)(?::(\d+))?", location or "", flags=re.S)
    if m is None:
        return None, None, None
    return m[1], int(m[2]), int(m[3]) if m[3] else None
