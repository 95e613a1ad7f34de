"""`--progress=tty`: a live `rich` display like buildx's.

While building, the live area at the bottom of the terminal shows a header
(`[+] Building 12.3s (5/9)`) and one line per unfinished step, `#N label` with
its state on the right (`waiting`, `running 1.2s`), and under a running step
the last `tail_lines` (5) lines of its output. When a step settles (`CACHED`,
`DONE 2.3s`, `ERROR`) its line is printed once above the live area, so the
scrollback keeps the full list of steps in the order they finished and the
live area stays small. `close()` collapses the live area into the summary
line; if a step failed its full output follows, after the live display has
stopped.

Cost model: the event methods only update per-step state under one lock
(`step_log` appends to a bounded deque and to the full log list); all
formatting happens in the reporter's refresh thread, at most
`refresh_per_second` (8) times a second, so a step printing 100,000 lines
costs 100,000 appends, not 100,000 redraws.

Drawing is serialised by `_draw_lock`: a line printed above the live area
(from a build thread) and a redraw (from the refresh thread) each move the
cursor up by the height of the last live render and draw a new one, and rich
renders a `console.print` outside `Live`'s own lock, so two of them
interleaved would move the cursor by a stale height and overwrite finished
rows. That is why the reporter runs its own refresh thread instead of
`Live(auto_refresh=True)`.
"""

from __future__ import annotations

import re
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TextIO

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from pybuild.progress import ReporterBase, Step, summary_line

MAX_LINE_CHARS = 1000  # a tail line longer than this is cut before rendering (the full log keeps it whole)
_ANSI = re.compile(r"\x1b(\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(\x07|\x1b\\)?|[@-Z\\-_])")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def _clean(line: str) -> str:
    """A log line made safe for the live area: no escape sequences or control characters, tabs expanded."""
    line = line[:MAX_LINE_CHARS]
    if "\r" in line:
        parts = [part for part in line.split("\r") if part]  # a progress bar redrawing itself:
        line = parts[-1] if parts else ""                       # keep its last state
    return _CONTROL.sub("", _ANSI.sub("", line)).expandtabs(4)


@dataclass
class _StepView:
    step: Step
    state: str = "waiting"  # waiting | running | cached | done | error
    ended: float | None = None
    tail: deque = field(default_factory=lambda: deque(maxlen=5))
    log: list[str] = field(default_factory=list)
    error: str | None = None
    printed: bool = False


class TTYReporter(ReporterBase):
    def __init__(self, console: Console, *, tail_lines: int = 5, refresh_per_second: float = 8,
                 clock=time.monotonic):
        super().__init__()
        self.console = console
        self.tail_lines = tail_lines
        self.refresh_per_second = refresh_per_second
        self._clock = clock
        self._lock = threading.Lock()
        self._start_lock = threading.Lock()
        self._steps: dict[int, _StepView] = {}
        self._started = clock()
        self._live: Live | None = None
        self._draw_lock = threading.RLock()  # one writer to the terminal at a time (module docstring)
        self._stop_refresh = threading.Event()
        self._refresher: threading.Thread | None = None
        self._closed = False
        self._collapsed: RenderableType | None = None

    @classmethod
    def for_stream(cls, stream: TextIO, *, no_color: bool = False, **kwargs) -> TTYReporter:
        console = Console(file=stream, force_terminal=True, no_color=no_color, highlight=False,
                          soft_wrap=False)
        return cls(console, **kwargs)

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        # Live.start() renders at once, and rendering takes self._lock: start it outside that lock.
        with self._start_lock:
            if self._live is not None or self._closed:
                return
            live = Live(console=self.console, get_renderable=self._render, auto_refresh=False,
                        transient=False, redirect_stdout=False, redirect_stderr=False)
            with self._draw_lock:
                live.start()
            self._live = live
            self._refresher = threading.Thread(target=self._refresh_loop, args=(live,),
                                               name="pybuild-tty-refresh", daemon=True)
            self._refresher.start()

    def _refresh_loop(self, live: Live) -> None:
        while not self._stop_refresh.wait(1 / self.refresh_per_second):
            with self._draw_lock:
                if self._closed:
                    return
                live.refresh()

    def __enter__(self):
        self.start()
        return self

    def close(self) -> None:
        super().close()
        with self._start_lock, self._lock:
            if self._closed:
                return
            self._closed = True
            live = self._live
            unprinted = [v for _, v in sorted(self._steps.items()) if not v.printed]
            for view in unprinted:
                view.printed = True
            failed = [v for _, v in sorted(self._steps.items()) if v.state == "error"]
        self._stop_refresh.set()
        if self._refresher is not None:
            self._refresher.join()
        if live is not None:
            with self._draw_lock:
                for view in unprinted:  # steps that never settled (build cancelled): show them as they were
                    live.console.print(self._row(view))
                self._collapsed = self._final()  # what _render returns from now on
                live.refresh()
                live.stop()
        else:
            self.console.print(self._final())
        for view in failed:
            self._print_full_log(view)

    # ------------------------------------------------------------ events (cheap: state only)

    def _view(self, step: Step) -> _StepView:
        view = self._steps.get(step.number)
        if view is None:
            view = self._steps[step.number] = _StepView(step, tail=deque(maxlen=self.tail_lines))
        return view

    def step_started(self, step: Step) -> None:
        super().step_started(step)
        if self._live is None:
            self.start()
        with self._lock:
            self._view(step)

    def step_miss(self, step: Step, reason: str) -> None:
        super().step_miss(step, reason)
        with self._lock:
            # it runs from now: time spent waiting for another stage (COPY --from) is not its own
            step.started = self._clock()
            self._view(step).state = "running"

    def step_log(self, step: Step, line: str) -> None:
        with self._lock:
            view = self._steps.get(step.number) or self._view(step)
            view.log.append(line)
            view.tail.append(line)
            if view.state == "waiting":
                view.state = "running"

    def step_cached(self, step: Step) -> None:
        super().step_cached(step)
        self._settle(step, "cached")

    def step_done(self, step: Step) -> None:
        super().step_done(step)
        self._settle(step, "done")

    def step_failed(self, step: Step, message: str) -> None:
        super().step_failed(step, message)
        self._settle(step, "error", message)

    def _settle(self, step: Step, state: str, error: str | None = None) -> None:
        if self._live is None:
            self.start()
        with self._lock:
            view = self._view(step)
            view.state = state
            view.ended = self._clock()
            view.error = error
            if view.printed or self._closed:
                return
            view.printed = True
            row = self._row(view)
            live = self._live
        self._print_above(live, row)

    def warning(self, message: str) -> None:
        self._print_above(self._live, Text(f"WARNING: {message}", style="yellow"))

    def info(self, message: str) -> None:
        self._print_above(self._live, Text(message))

    def _print_above(self, live: Live | None, renderable: RenderableType) -> None:
        with self._draw_lock:
            if live is not None and not self._closed:
                live.console.print(renderable)
            else:
                self.console.print(renderable)

    # ------------------------------------------------------------ rendering (the refresh thread, under _draw_lock)

    def _state_text(self, view: _StepView) -> Text:
        now = self._clock()
        if view.state == "cached":
            return Text("CACHED", style="cyan")
        if view.state == "done":
            return Text(f"DONE {(view.ended or now) - view.step.started:.1f}s", style="green")
        if view.state == "error":
            return Text(f"ERROR {(view.ended or now) - view.step.started:.1f}s", style="bold red")
        if view.state == "running":
            return Text(f"running {now - view.step.started:.1f}s", style="yellow")
        return Text("waiting", style="dim")

    def _row(self, view: _StepView) -> Table:
        grid = Table.grid(expand=True, padding=(0, 1))
        grid.add_column(ratio=1, no_wrap=True, overflow="ellipsis")
        grid.add_column(justify="right", no_wrap=True)
        label = Text(f"#{view.step.number} ", style="bold")
        label.append(view.step.label)
        grid.add_row(label, self._state_text(view))
        return grid

    def _render(self) -> RenderableType:
        if self._collapsed is not None:
            return self._collapsed
        with self._lock:
            views = [v for _, v in sorted(self._steps.items())]
            active = [(v, list(v.tail)) for v in views if not v.printed]
        finished = sum(1 for v in views if v.state in ("cached", "done", "error"))
        parts: list[RenderableType] = [
            Text(f"[+] Building {self._clock() - self._started:.1f}s ({finished}/{len(views)})", style="bold")]
        for view, tail in active:
            parts.append(self._row(view))
            if view.state == "running":
                for line in tail:
                    parts.append(Text("  │ " + _clean(line), style="dim", no_wrap=True,
                                      overflow="ellipsis"))
        return Group(*parts)

    def _final(self) -> RenderableType:
        with self._lock:
            views = list(self._steps.values())
        failed = any(v.state == "error" for v in views)
        finished = sum(1 for v in views if v.state in ("cached", "done", "error"))
        head = Text(f"[+] Building {self._clock() - self._started:.1f}s ({finished}/{len(views)}) "
                    + ("FAILED" if failed else "FINISHED"), style="bold red" if failed else "bold")
        return Group(head, Text(summary_line(self.summary)))

    def _print_full_log(self, view: _StepView) -> None:
        lines = view.log
        self.console.print(Text(f"------ #{view.step.number} {view.step.label}: full output "
                                f"({len(lines)} line{'s' if len(lines) != 1 else ''}) ------", style="bold red"))
        if lines:  # raw, in one write: the full log can be 100,000 lines
            self.console.file.write("\n".join(lines) + "\n")
            self.console.file.flush()
        self.console.print(Text(f"------ ERROR: {view.error}", style="bold red"))
