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
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Protocol, TextIO


@dataclass
class Step:
    number: int
    label: str
    started: float = field(default_factory=time.monotonic)


class Reporter(Protocol):
    def step_started(self, step: Step) -> None: ...
    def step_cached(self, step: Step) -> None: ...
    def step_miss(self, step: Step, reason: str) -> None: ...
    def step_log(self, step: Step, line: str) -> None: ...
    def step_done(self, step: Step) -> None: ...
    def step_failed(self, step: Step, message: str) -> None: ...
    def warning(self, message: str) -> None: ...
    def info(self, message: str) -> None: ...


class PlainReporter:
    """Numbered plain lines on a text stream (stderr by default). `quiet` keeps only warnings and errors."""

    def __init__(self, stream: TextIO | None = None, quiet: bool = False):
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
        self._write(f"#{step.number} {step.label}")

    def step_cached(self, step: Step) -> None:
        self.cached.append(step)
        self._write(f"#{step.number} CACHED")

    def step_miss(self, step: Step, reason: str) -> None:
        self._write(f"#{step.number} cache miss: {reason}")

    def step_log(self, step: Step, line: str) -> None:
        self._write(f"#{step.number} {time.monotonic() - step.started:.3f} {line}")

    def step_done(self, step: Step) -> None:
        self.executed.append(step)
        self._write(f"#{step.number} DONE {time.monotonic() - step.started:.1f}s")

    def step_failed(self, step: Step, message: str) -> None:
        self._write(f"#{step.number} ERROR: {message}", force=True)

    def warning(self, message: str) -> None:
        self._write(f"WARNING: {message}", force=True)

    def info(self, message: str) -> None:
        self._write(message)
