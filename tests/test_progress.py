"""Progress reporters: plain (unchanged format), rawjson, the live tty display, the cache report."""

from __future__ import annotations

import io
import json
import re
import time

import pytest

from pybuild.progress import (
    BuildSummary,
    PlainReporter,
    Step,
    cache_report_json,
    make_reporter,
    render_cache_report,
    summary_line,
)

# ---------------------------------------------------------------- helpers

class FakeClock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


_CSI = re.compile(r"\x1b\[([0-9;?]*)([@-~])|\x1b[@-Z\\-_]|\r|\n|[^\x1b\r\n]")


def screen(data: str, width: int = 100) -> list[str]:
    """What a terminal shows after `data` (the subset of VT100 rich emits: CR, LF, cursor moves, erase)."""
    rows: list[list[str]] = [[]]
    r = c = 0
    for m in _CSI.finditer(data):
        tok = m.group(0)
        while len(rows) <= r:
            rows.append([])
        if m.group(2):
            args = [int(a) for a in m.group(1).strip("?").split(";") if a.isdigit()]
            n = args[0] if args else None
            cmd = m.group(2)
            if cmd == "A":
                r = max(0, r - (n or 1))
            elif cmd == "B":
                r += n or 1
            elif cmd == "C":
                c += n or 1
            elif cmd == "D":
                c = max(0, c - (n or 1))
            elif cmd == "G":
                c = (n or 1) - 1
            elif cmd == "K":
                row = rows[r]
                if n in (None, 0):
                    del row[c:]
                elif n == 1:
                    row[: c + 1] = [" "] * min(len(row), c + 1)
                else:
                    row.clear()
            elif cmd == "J" and n in (None, 0):
                del rows[r][c:]
                del rows[r + 1:]
            continue  # m, h, l, ...: no effect on text
        if tok == "\r":
            c = 0
        elif tok == "\n":
            r, c = r + 1, 0
        elif tok.startswith("\x1b"):
            continue
        else:
            row = rows[r]
            if c >= width:
                r, c = r + 1, 0
                while len(rows) <= r:
                    rows.append([])
                row = rows[r]
            row.extend(" " * (c - len(row)))
            if c < len(row):
                row[c] = tok
            else:
                row.append(tok)
            c += 1
    lines = ["".join(row).rstrip() for row in rows]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def tty_reporter(clock: FakeClock, width: int = 100):
    from rich.console import Console

    from pybuild.ui.tty import TTYReporter

    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=width, height=40, color_system="standard",
                      highlight=False)
    return TTYReporter(console, clock=clock), out


# ---------------------------------------------------------------- plain: format unchanged

def test_plain_output_format_unchanged():
    out = io.StringIO()
    rep = PlainReporter(out)
    s1, s2 = Step(1, "[1/2] FROM busybox"), Step(2, "[2/2] RUN make")
    rep.step_started(s1)
    rep.step_cached(s1)
    rep.step_started(s2)
    rep.step_miss(s2, "not in cache")
    rep.step_log(s2, "compiling")
    rep.step_done(s2)
    rep.step_failed(s2, "boom")
    rep.warning("careful")
    rep.info("hello")
    rep.close()
    text = re.sub(r"\d+\.\d+", "T", out.getvalue())
    assert text == ("#1 [1/2] FROM busybox\n#1 CACHED\n#2 [2/2] RUN make\n#2 cache miss: not in cache\n"
                    "#2 T compiling\n#2 DONE Ts\n#2 ERROR: boom\nWARNING: careful\nhello\n")
    assert rep.cached == [s1] and rep.executed == [s2]
    assert "\x1b" not in out.getvalue()


def test_plain_quiet_keeps_only_warnings_and_errors():
    out = io.StringIO()
    rep = PlainReporter(out, quiet=True)
    s = Step(1, "[1/1] RUN x")
    rep.step_started(s)
    rep.step_log(s, "noise")
    rep.step_failed(s, "bad")
    rep.warning("w")
    assert out.getvalue() == "#1 ERROR: bad\nWARNING: w\n"


# ---------------------------------------------------------------- cache report

def _fourteen_step_summary() -> BuildSummary:
    rep = PlainReporter(io.StringIO())
    for n in range(1, 13):
        s = Step(n, f"[app {n}/14] RUN step{n}")
        rep.step_started(s)
        rep.step_cached(s)
        rep.step_cache_info(s, cached=True, duration_s=0.01, saved_s=[3.4, 3.5][n % 2], bytes_reused=1000 * n)
    s13 = Step(13, "[app 13/14] COPY . /src")
    rep.step_started(s13)
    rep.step_miss(s13, "COPY . changed: src/app.py and 3 more")
    rep.step_done(s13)
    rep.step_cache_info(s13, cached=False, reason="COPY . changed: src/app.py and 3 more", duration_s=0.5)
    s14 = Step(14, "[app 14/14] RUN make")
    rep.step_started(s14)
    rep.step_miss(s14, "an earlier step was rebuilt")
    rep.step_done(s14)
    rep.step_cache_info(s14, cached=False, reason="an earlier step was rebuilt", duration_s=2.25)
    rep.close()
    return rep.summary


def test_cache_report_summary_line_and_table():
    summary = _fourteen_step_summary()
    assert summary_line(summary) == "14 steps: 12 cached (86%), 41.4 s saved, 2 rebuilt"
    text = render_cache_report(summary)
    lines = text.splitlines()
    assert lines[0].split() == ["#", "STEP", "RESULT", "TIME", "SAVED", "REUSED", "REASON"]
    assert lines[-1] == summary_line(summary)
    row1 = next(line for line in lines if line.startswith("#1 "))
    assert "CACHED" in row1 and "3.5s" in row1 and "1.0 kB" in row1
    row13 = next(line for line in lines if line.startswith("#13 "))
    assert "rebuilt" in row13 and "0.5s" in row13 and row13.endswith("COPY . changed: src/app.py and 3 more")
    row14 = next(line for line in lines if line.startswith("#14 "))
    assert row14.endswith("an earlier step was rebuilt (first cause: #13 [app 13/14] COPY . /src: "
                          "COPY . changed: src/app.py and 3 more)")
    assert "2.2s" in row14 or "2.3s" in row14
    assert "\x1b" not in text


def test_cache_report_exact_example_numbers():
    rep = PlainReporter(io.StringIO())
    for n in range(1, 15):
        s = Step(n, f"[{n}/14] RUN s{n}")
        rep.step_started(s)
        if n <= 12:
            rep.step_cached(s)
            rep.step_cache_info(s, cached=True, saved_s=41.2 if n == 1 else 0.0)
        else:
            rep.step_miss(s, "--no-cache")
            rep.step_done(s)
    assert summary_line(rep.summary) == "14 steps: 12 cached (86%), 41.2 s saved, 2 rebuilt"


def test_summary_without_cache_info_still_reports_hits_and_misses():
    rep = PlainReporter(io.StringIO())
    a, b, c = Step(1, "[1/3] FROM x"), Step(2, "[2/3] RUN a"), Step(3, "[3/3] RUN b")
    for s in (a, b, c):
        rep.step_started(s)
    rep.step_cached(a)
    rep.step_miss(b, "not in cache")
    rep.step_done(b)
    rep.step_miss(c, "an earlier step was rebuilt")
    rep.step_failed(c, "RUN b exited 2")
    text = render_cache_report(rep.summary)
    assert text.splitlines()[-1] == "3 steps: 1 cached (33%), 0.0 s saved, 1 rebuilt, 1 failed"
    assert "ERROR" in text and "RUN b exited 2" in text


def test_cache_report_json_schema():
    doc = cache_report_json(_fourteen_step_summary())
    json.dumps(doc)  # serialisable
    assert doc["version"] == 1
    s = doc["summary"]
    assert (s["steps"], s["cached"], s["rebuilt"], s["failed"]) == (14, 12, 2, 0)
    assert s["time_saved_s"] == pytest.approx(41.4)
    assert s["bytes_reused"] == sum(1000 * n for n in range(1, 13))
    assert s["cache_hit_ratio"] == pytest.approx(12 / 14, abs=1e-4)
    assert s["text"].startswith("14 steps: 12 cached (86%)")
    assert [st["number"] for st in doc["steps"]] == list(range(1, 15))
    last = doc["steps"][-1]
    assert last["result"] == "rebuilt" and last["cached"] is False
    assert last["reason"] == "an earlier step was rebuilt"
    assert last["first_cause"].startswith("#13 ")
    first = doc["steps"][0]
    assert first["result"] == "cached" and first["reason"] is None and first["saved_s"] == 3.5
    assert set(first) == {"number", "name", "result", "cached", "reason", "first_cause", "error", "duration_s",
                          "saved_s", "bytes_reused"}


# ---------------------------------------------------------------- rawjson

def test_rawjson_events():
    from pybuild.ui.rawjson import RawJSONReporter

    out = io.StringIO()
    rep = RawJSONReporter(out, clock=lambda: 1700000000.5)
    s = Step(3, "[build 2/4] RUN make")
    rep.step_started(s)
    rep.step_miss(s, "not in cache")
    rep.step_log(s, "compiling \"x\"\twith ünïcode")
    rep.step_done(s)
    rep.step_cache_info(s, cached=False, reason="not in cache", duration_s=1.23456)
    c = Step(4, "[build 3/4] COPY . /src")
    rep.step_started(c)
    rep.step_cached(c)
    rep.step_failed(s, "RUN make exited 2")
    rep.warning("w")
    rep.info("i")
    rep.close()
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [e["type"] for e in events] == ["vertex.started", "vertex.miss", "vertex.log", "vertex.completed",
                                          "vertex.cache", "vertex.started", "vertex.cached", "vertex.error",
                                          "warning", "info"]
    assert all(e["time"] == 1700000000.5 for e in events)
    assert events[0] == {"type": "vertex.started", "vertex": 3, "name": "[build 2/4] RUN make",
                         "time": 1700000000.5}
    assert events[1]["reason"] == "not in cache"
    assert events[2]["line"] == "compiling \"x\"\twith ünïcode" and isinstance(events[2]["elapsed"], float)
    assert isinstance(events[3]["duration"], float)
    assert events[4]["duration"] == 1.235 and events[4]["cached"] is False
    assert events[7]["error"] == "RUN make exited 2"
    assert events[8] == {"type": "warning", "time": 1700000000.5, "message": "w"}
    assert rep.summary.totals()["steps"] == 2


def test_rawjson_quiet():
    from pybuild.ui.rawjson import RawJSONReporter

    out = io.StringIO()
    rep = RawJSONReporter(out, quiet=True)
    s = Step(1, "x")
    rep.step_started(s)
    rep.step_log(s, "noise")
    rep.step_failed(s, "bad")
    rep.warning("w")
    assert [json.loads(line)["type"] for line in out.getvalue().splitlines()] == ["vertex.error", "warning"]


def test_rawjson_build_error_says_where():
    """`build.error` has the same fields for every failure: file/line/column from the error's
    location when it is a Dockerfile line, else null; written with -q too."""
    from pybuild.ui.rawjson import RawJSONReporter, split_location

    out = io.StringIO()
    rep = RawJSONReporter(out, quiet=True, clock=lambda: 1.0)
    rep.build_error("Dockerfile:2:1: unknown instruction RUNN", None, "EXCERPT", "Dockerfile:2:1")
    rep.build_error("--target x: no such stage", None, None, "--target")
    rep.build_error("cannot read Dockerfile nope: No such file or directory")
    rep.build_error("sub:dir/Dockerfile:7: RUN exited 1", "/log", None, "sub:dir/Dockerfile:7")
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    assert events[0] == {"type": "build.error", "time": 1.0, "error": "Dockerfile:2:1: unknown instruction RUNN",
                         "log": None, "excerpt": "EXCERPT", "file": "Dockerfile", "line": 2, "column": 1}
    assert [(e["file"], e["line"], e["column"]) for e in events[1:]] == [
        (None, None, None), (None, None, None), ("sub:dir/Dockerfile", 7, None)]
    assert all(set(e) == set(events[0]) for e in events)
    assert split_location("a:1:2:3") == ("a:1", 2, 3)
    # the plain reporter takes the location too (it is in the message already)
    from pybuild.progress import ReporterBase

    ReporterBase().build_error("m", None, None, "Dockerfile:1:1")


# ---------------------------------------------------------------- tty

def test_tty_screen_mid_build_and_final():
    clock = FakeClock()
    rep, out = tty_reporter(clock)
    rep.start()
    base = Step(1, "[build 1/3] FROM busybox", started=clock.now)
    rep.step_started(base)
    rep.step_cached(base)
    copy = Step(2, "[build 2/3] COPY . /src", started=clock.now)
    rep.step_started(copy)
    rep.step_cached(copy)
    make = Step(3, "[build 3/3] RUN make", started=clock.now)
    rep.step_started(make)
    rep.step_miss(make, "not in cache")
    other = Step(4, "[tools 1/2] FROM alpine", started=clock.now)
    rep.step_started(other)
    for i in range(1, 8):
        rep.step_log(make, f"compiling unit {i}")
    clock.now += 2.34
    rep._live.refresh()
    mid = screen(out.getvalue())
    assert mid[0].startswith("#1 [build 1/3] FROM busybox") and mid[0].endswith("CACHED")
    assert mid[1].startswith("#2 [build 2/3] COPY . /src") and mid[1].endswith("CACHED")
    assert mid[2] == "[+] Building 2.3s (2/4)"
    assert mid[3].startswith("#3 [build 3/3] RUN make") and mid[3].endswith("running 2.3s")
    assert mid[4:9] == [f"  │ compiling unit {i}" for i in range(3, 8)]  # last five lines only
    assert mid[9].startswith("#4 [tools 1/2] FROM alpine") and mid[9].endswith("waiting")
    assert len(mid) == 10
    assert all(len(line) <= 100 for line in mid)

    rep.step_done(make)
    rep.step_cached(other)
    rep.step_cache_info(make, cached=False, reason="not in cache", duration_s=2.34)
    rep.step_cache_info(base, cached=True, saved_s=0.5)
    rep.step_cache_info(copy, cached=True, saved_s=1.0)
    rep.step_cache_info(other, cached=True, saved_s=0.0)
    clock.now += 0.5
    rep.close()
    final = screen(out.getvalue())
    print("\n".join(final))
    assert len(final) == 6
    assert final[2].startswith("#3 [build 3/3] RUN make") and final[2].endswith("DONE 2.3s")
    assert final[3].startswith("#4 [tools 1/2] FROM alpine") and final[3].endswith("CACHED")
    assert final[4] == "[+] Building 2.8s (4/4) FINISHED"
    assert final[5] == "4 steps: 3 cached (75%), 1.5 s saved, 1 rebuilt"
    assert not any("compiling" in line for line in final)  # collapsed: no log tails left
    assert "\x1b[?25h" in out.getvalue()  # cursor shown again


def test_tty_failure_prints_full_output_after_live_display():
    clock = FakeClock()
    rep, out = tty_reporter(clock)
    s = Step(1, "[1/1] RUN make", started=clock.now)
    rep.step_started(s)
    rep.step_miss(s, "not in cache")
    for i in range(200):
        rep.step_log(s, f"line {i}")
    clock.now += 1.0
    rep.step_failed(s, "RUN make exited 2")
    rep.close()
    final = screen(out.getvalue())
    assert final[0].startswith("#1 [1/1] RUN make") and final[0].endswith("ERROR 1.0s")
    assert final[1] == "[+] Building 1.0s (1/1) FAILED"
    assert final[2] == "1 step: 0 cached (0%), 0.0 s saved, 0 rebuilt, 1 failed"
    assert final[3] == "------ #1 [1/1] RUN make: full output (200 lines) ------"
    assert final[4:204] == [f"line {i}" for i in range(200)]  # all of it, not just the tail
    assert final[204] == "------ ERROR: RUN make exited 2"


def test_tty_log_lines_are_sanitised():
    clock = FakeClock()
    rep, out = tty_reporter(clock, width=60)
    s = Step(1, "[1/1] RUN x", started=clock.now)
    rep.step_started(s)
    rep.step_miss(s, "r")
    rep.step_log(s, "\x1b[31mred\x1b[0m\ttab")
    rep.step_log(s, "10%\r50%\r")
    rep.step_log(s, "y" * 5000)
    rep._live.refresh()
    shown = screen(out.getvalue(), width=60)
    assert shown[2] == "  │ red tab"  # tab expanded to column 4
    assert shown[3] == "  │ 50%"
    assert len(shown[4]) <= 60 and shown[4].endswith("…")
    rep.close()


def test_tty_step_log_does_not_redraw_per_line():
    rep, out = tty_reporter(FakeClock())
    s = Step(1, "[1/1] RUN yes | head -100000")
    rep.step_started(s)
    rep.step_miss(s, "not in cache")
    for i in range(100_000):
        rep.step_log(s, f"y {i}")
    rep.step_done(s)
    rep.close()
    # redraws are rate-limited (by the clock, which stands still here), not one per line; the
    # wall-time cost of 100,000 lines is measured by bench/bench_progress.py, not asserted here
    assert len(out.getvalue()) < 200_000


# ---------------------------------------------------------------- make_reporter

class _Stream(io.StringIO):
    def __init__(self, tty: bool):
        super().__init__()
        self._tty = tty

    def isatty(self) -> bool:
        return self._tty


@pytest.mark.parametrize("mode, tty, env, expected", [
    ("auto", False, {}, "PlainReporter"),
    ("auto", True, {"TERM": "xterm"}, "TTYReporter"),
    ("auto", True, {"TERM": "dumb"}, "PlainReporter"),
    ("auto", True, {"TERM": "xterm", "PYBUILD_PROGRESS": "plain"}, "PlainReporter"),
    ("auto", False, {"PYBUILD_PROGRESS": "rawjson"}, "RawJSONReporter"),
    ("auto", False, {"PYBUILD_PROGRESS": "bogus"}, "PlainReporter"),
    ("plain", True, {"PYBUILD_PROGRESS": "tty", "TERM": "xterm"}, "PlainReporter"),
    ("tty", False, {}, "TTYReporter"),
    ("rawjson", True, {"TERM": "xterm"}, "RawJSONReporter"),
])
def test_make_reporter_choice(mode, tty, env, expected):
    rep = make_reporter(mode, _Stream(tty), environ=env)
    assert type(rep).__name__ == expected
    rep.close()


def test_make_reporter_quiet_and_no_color_and_bad_mode():
    rep = make_reporter("auto", _Stream(True), quiet=True, environ={"TERM": "xterm"})
    assert isinstance(rep, PlainReporter) and rep.quiet
    rep = make_reporter("tty", _Stream(True), environ={"NO_COLOR": "1"})
    assert rep.console.no_color
    rep.close()
    rep = make_reporter("tty", _Stream(True), environ={})
    assert not rep.console.no_color
    rep.close()
    with pytest.raises(ValueError):
        make_reporter("fancy", _Stream(False), environ={})


def test_tty_from_parallel_threads():
    import threading

    rep, out = tty_reporter(FakeClock())
    rep.refresh_per_second = 50

    def stage(base: int) -> None:
        for k in range(5):
            s = Step(base + k, f"[s{base} {k + 1}/5] RUN work")
            rep.step_started(s)
            rep.step_miss(s, "not in cache")
            for i in range(2000):
                rep.step_log(s, f"{base} {k} {i}")
            rep.step_done(s)

    threads = [threading.Thread(target=stage, args=(b,)) for b in (100, 200, 300)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in threads)
    rep.close()
    final = screen(out.getvalue())
    assert final[-1] == "15 steps: 0 cached (0%), 0.0 s saved, 15 rebuilt"
    assert sum(1 for line in final if "DONE" in line) == 15


# ---------------------------------------------------------------- tty in a real pseudo-terminal (tmux)

_DRIVER = r'''
import os, sys, time
from pybuild.progress import Step, make_reporter
gate = sys.argv[1]
rep = make_reporter("auto", sys.stderr)
print("REPORTER", type(rep).__name__, file=sys.stderr)
a = Step(1, "[build 1/3] FROM busybox"); rep.step_started(a); rep.step_cached(a)
rep.step_cache_info(a, cached=True, saved_s=0.0)
b = Step(2, "[build 2/3] COPY . /src"); rep.step_started(b); rep.step_cached(b)
rep.step_cache_info(b, cached=True, saved_s=4.0, bytes_reused=2048)
c = Step(3, "[build 3/3] RUN make"); rep.step_started(c); rep.step_miss(c, "not in cache")
for i in range(100000):
    rep.step_log(c, f"cc -c unit{i}.c")
while not os.path.exists(gate):
    time.sleep(0.05)
rep.step_done(c)
rep.step_cache_info(c, cached=False, reason="not in cache", duration_s=1.0)
rep.close()
print("END-OF-BUILD", file=sys.stderr)
time.sleep(60)
'''


@pytest.mark.skipif(__import__("shutil").which("tmux") is None, reason="needs tmux")
def test_tty_in_real_terminal(tmp_path):
    import os
    import subprocess
    import sys

    script = tmp_path / "driver.py"
    script.write_text(_DRIVER)
    gate = tmp_path / "gate"
    sock = f"pybuild-progress-{os.getpid()}"
    tmux = ["tmux", "-L", sock, "-f", "/dev/null"]
    env = {k: v for k, v in os.environ.items() if k not in ("PYBUILD_PROGRESS", "NO_COLOR", "TMUX")}
    env["TERM"] = "xterm-256color"
    subprocess.run(tmux + ["new-session", "-d", "-x", "100", "-y", "30", "-s", "t",
                           f"{sys.executable} {script} {gate}"], check=True, env=env)

    def capture() -> list[str]:
        text = subprocess.run(tmux + ["capture-pane", "-p", "-t", "t"], capture_output=True, text=True,
                              check=False).stdout
        lines = [line.rstrip() for line in text.splitlines()]
        while lines and not lines[-1]:
            lines.pop()
        return lines

    def wait_for(word: str) -> list[str]:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            shown = capture()
            if any(word in line for line in shown):
                return shown
            time.sleep(0.1)
        raise AssertionError(f"{word!r} never appeared:\n" + "\n".join(capture()))

    try:
        mid = wait_for("cc -c unit99999.c")
        time.sleep(0.3)
        mid = capture()
        print("\n".join(mid))
        assert mid[0] == "REPORTER TTYReporter"
        assert mid[1].startswith("#1 [build 1/3] FROM busybox") and mid[1].endswith("CACHED")
        assert re.fullmatch(r"\[\+\] Building \d+\.\ds \(2/3\)", mid[3])
        assert mid[4].startswith("#3 [build 3/3] RUN make") and re.search(r"running \d+\.\ds$", mid[4])
        assert mid[5:10] == [f"  │ cc -c unit{i}.c" for i in range(99995, 100000)]
        gate.write_text("go")
        final = wait_for("END-OF-BUILD")
        print("\n".join(final))
        assert final[3].startswith("#3 [build 3/3] RUN make") and re.search(r"DONE \d+\.\ds$", final[3])
        assert re.fullmatch(r"\[\+\] Building \d+\.\ds \(3/3\) FINISHED", final[4])
        assert final[5] == "3 steps: 2 cached (67%), 4.0 s saved, 1 rebuilt"
        assert final[6] == "END-OF-BUILD"
        assert not any("cc -c" in line for line in final)
    finally:
        subprocess.run(tmux + ["kill-server"], capture_output=True, check=False)


def test_dockerfile_excerpt_marks_the_failing_instruction():
    from pybuild.progress import dockerfile_excerpt

    text = "FROM busybox\nENV A=1\nRUN echo one; \\\n  exit 3\nCMD x\nLABEL a=b\nLABEL c=d\n"
    assert dockerfile_excerpt(text, "Dockerfile", "Dockerfile:3") == (
        "Dockerfile:3\n--------------------\n"
        " 1 |     FROM busybox\n 2 |     ENV A=1\n 3 | >>> RUN echo one; \\\n 4 | >>>   exit 3\n"
        " 5 |     CMD x\n 6 |     LABEL a=b\n--------------------")
    assert dockerfile_excerpt(text, "Dockerfile", "Dockerfile:1:5").splitlines()[2] == " 1 | >>> FROM busybox"
    assert dockerfile_excerpt(text, "Dockerfile", "ONBUILD triggers of x:1") is None
    assert dockerfile_excerpt(text, "Dockerfile", "Dockerfile:99") is None
    assert dockerfile_excerpt(text, "Dockerfile", "Dockerfile:99:1") is None
    assert dockerfile_excerpt(text, "other/Dockerfile", "Dockerfile:3:1") is None
    assert dockerfile_excerpt(text, "Dockerfile", None) is None
    # at the keyword: BuildKit's excerpt as it is, no caret
    assert dockerfile_excerpt(text, "Dockerfile", "Dockerfile:3:1") == dockerfile_excerpt(text, "Dockerfile",
                                                                                         "Dockerfile:3")


def test_dockerfile_excerpt_caret_points_at_the_column():
    """A location inside the instruction (a flag on a continuation line, after a comment and a
    blank line, tab-indented) marks the whole instruction and puts a caret under LINE:COL."""
    from pybuild.progress import dockerfile_excerpt

    text = ("FROM busybox\nRUN --network=none \\\n  # note\n\n\t--mount=type=cache,bogus=1 \\\n"
            "  true\nCMD x\n")
    assert dockerfile_excerpt(text, "build/Dockerfile", "build/Dockerfile:5:10", context=1) == (
        "build/Dockerfile:2\n--------------------\n"
        " 1 |     FROM busybox\n"
        " 2 | >>> RUN --network=none \\\n"
        " 3 | >>>   # note\n"
        " 4 | >>>\n"
        " 5 | >>> \t--mount=type=cache,bogus=1 \\\n"
        "   |     \t        ^\n"
        " 6 | >>>   true\n"
        " 7 |     CMD x\n"
        "--------------------")
    lines = dockerfile_excerpt("FROM busybox AS b\n", "Dockerfile", "Dockerfile:1:6").splitlines()
    assert lines[2:4] == [" 1 | >>> FROM busybox AS b", "   |          ^"]


def test_dockerfile_excerpt_does_not_show_a_byte_order_mark():
    """A Dockerfile saved with a UTF-8 BOM: the excerpt's line 1 is the text, not "\\ufeffFROM"."""
    from pybuild.progress import dockerfile_excerpt

    text = "\ufeffFROM busybox\nRUN --bad x\n"
    out = dockerfile_excerpt(text, "Dockerfile", "Dockerfile:1:6")
    assert "\ufeff" not in out
    assert out.splitlines()[2:4] == [" 1 | >>> FROM busybox", "   |          ^"]


def test_dockerfile_excerpt_escapes_control_characters_and_counts_lines_as_the_parser():
    """Control characters are shown escaped (\\x1b, not an ANSI sequence), the caret under its
    column; lines end at \\n only (a form feed or a CR inside a line starts none), CRLF is one end."""
    from pybuild.progress import dockerfile_excerpt

    text = "FROM busybox\r\nRUN echo \x1b[31m\x0c red\r\nCOPY --chown=\x01 --bad=1 a b\r\n"
    out = dockerfile_excerpt(text, "Dockerfile", "Dockerfile:3:16")  # --bad
    assert out.splitlines() == [
        "Dockerfile:3", "--------------------",
        " 1 |     FROM busybox",
        " 2 |     RUN echo \\x1b[31m\\x0c red",
        " 3 | >>> COPY --chown=\\x01 --bad=1 a b",
        "   |     " + " " * len("COPY --chown=\\x01 ") + "^",
        "--------------------"]
    assert all(c.isprintable() for c in out.replace("\n", ""))
