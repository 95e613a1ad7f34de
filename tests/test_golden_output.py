"""Golden tests: the whole plain and rawjson output of a sample build, times and digests normalised.

The plain format is what CI logs grep and diff, and rawjson is what other tools parse; a change
to either must be deliberate.  To accept an intended change, run with PYBUILD_UPDATE_GOLDEN=1
and review the diff of tests/data/golden/.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

GOLDEN = Path(__file__).parent / "data" / "golden"

DOCKERFILE = """\
FROM busybox AS base
RUN echo building; echo to-stderr >&2
WORKDIR /app

FROM base
ARG V=1
COPY a.txt ./
ENV X=y
RUN cat a.txt
CMD ["cat", "/app/a.txt"]
"""


def normalise_plain(text: str, root: Path, ctx: Path) -> str:
    text = text.replace(str(root), "$ROOT").replace(str(ctx), "$CTX")
    text = re.sub(r"sha256:[0-9a-f]{64}", "sha256:<digest>", text)
    text = re.sub(r"^(#\d+) \d+\.\d{3} ", r"\1 <t> ", text, flags=re.M)            # log line timestamps
    text = re.sub(r"\b\d+\.\d+s\b", "<s>", text)                                    # durations
    text = re.sub(r"\b\d+(\.\d+)? s saved", "<s> saved", text)                        # the summary line
    text = re.sub(r"\b\d+(\.\d+)? (B|kB|MB)\b", "<size>", text)
    return re.sub(r" +\n", "\n", text)


def normalise_events(text: str) -> list[dict]:
    events = []
    for line in text.splitlines():
        event = json.loads(line)  # every line must be JSON
        for k in ("time", "elapsed", "duration", "saved"):
            if event.get(k) is not None:
                event[k] = "<t>"
        for k in ("id", "digest"):
            if k in event:
                event[k] = "sha256:<digest>"
        if event.get("bytes_reused"):
            event["bytes_reused"] = "<n>"
        events.append(event)
    return events


def check(name: str, actual: str) -> None:
    path = GOLDEN / name
    if os.environ.get("PYBUILD_UPDATE_GOLDEN"):
        path.write_text(actual)
    assert actual == path.read_text(), f"output differs from {path} (PYBUILD_UPDATE_GOLDEN=1 to accept)"


@pytest.fixture
def ctx(tmp_path) -> Path:
    d = tmp_path / "ctx"
    d.mkdir()
    (d / "Dockerfile").write_text(DOCKERFILE)
    (d / "a.txt").write_text("hello\n")
    return d


def test_plain_cold_warm_and_changed(cli, ctx):
    cold = cli("build", "--progress", "plain", "-t", "golden:1", str(ctx), check=True)
    warm = cli("build", "--progress", "plain", "--cache-report", "text", "-t", "golden:1", str(ctx), check=True)
    (ctx / "a.txt").write_text("changed\n")
    changed = cli("build", "--progress", "plain", "-t", "golden:1", str(ctx), check=True)
    text = "\n".join(f"$ {what}\n{normalise_plain(r.stderr, cli.root, ctx)}" for what, r in
                     (("cold", cold), ("warm --cache-report text", warm), ("a.txt changed", changed)))
    check("plain_build.txt", text)
    assert cold.stdout == warm.stdout == changed.stdout == ""


def test_plain_failure(cli, ctx):
    (ctx / "Dockerfile").write_text("FROM busybox\nRUN echo one; echo two >&2; exit 3\n")
    res = cli("build", "--progress", "plain", str(ctx))
    assert res.code == 1
    check("plain_failure.txt", normalise_plain(res.stderr, cli.root, ctx))


def test_rawjson_cold_and_failure(cli, ctx):
    cold = cli("build", "--progress", "rawjson", "-t", "golden:1", str(ctx), check=True)
    (ctx / "Dockerfile").write_text("FROM busybox\nCOPY missing.txt /\n")
    failed = cli("build", "--progress", "rawjson", str(ctx))
    assert failed.code == 1
    events = normalise_events(cold.stderr) + [{"---": "failure"}] + normalise_events(failed.stderr)
    text = "\n".join(json.dumps(e, sort_keys=True) for e in events) + "\n"
    check("rawjson_build.jsonl", text.replace(str(ctx), "$CTX"))


def test_rawjson_failures_before_the_steps_end_with_build_error(cli, ctx):
    """A build that stops before its steps (the Dockerfile does not parse or cannot be read, a bad
    flag, `# check=error=true`) ends rawjson's stream with the `build.error` event a failed step
    ends it with, not with text: every line is JSON, the exit status is as with plain."""
    def events(*args, **kw):
        res = cli("build", "--progress", "rawjson", *args, **kw)
        return res.code, normalise_events(res.stderr.replace(str(ctx), "$CTX"))

    (ctx / "typo.Dockerfile").write_text("FROM busybox\nRUNN x\n")
    code, ev = events("-f", str(ctx / "typo.Dockerfile"), str(ctx))
    assert code == 1 and ev == [{
        "type": "build.error", "time": "<t>", "error": "$CTX/typo.Dockerfile:2:1: unknown instruction RUNN "
        "(did you mean RUN?)", "log": None, "excerpt": "$CTX/typo.Dockerfile:2\n--------------------\n"
        " 1 |     FROM busybox\n 2 | >>> RUNN x\n--------------------",
        "file": "$CTX/typo.Dockerfile", "line": 2, "column": 1}]
    code, ev = events("-f", str(ctx / "nope.Dockerfile"), str(ctx))
    assert code == 1 and ev == [{
        "type": "build.error", "time": "<t>", "error": "cannot read Dockerfile $CTX/nope.Dockerfile: "
        "No such file or directory", "log": None, "excerpt": None, "file": None, "line": None, "column": None}]
    code, ev = events("--build-arg", "=x", str(ctx))
    assert code == 2 and [(e["type"], e["error"]) for e in ev] == [
        ("build.error", "--build-arg '=x': expected KEY=VALUE")]
    code, ev = events("-", input="\x00\x01binary")  # a binary Dockerfile on stdin: escaped
    assert code == 1 and ev[-1]["error"] == "Dockerfile:1:1: unknown instruction \\x00\\x01binary"
    (ctx / "bad.Dockerfile").write_bytes(b"FROM busybox\nRUN echo \xff\n")
    code, ev = events("-q", "-f", str(ctx / "bad.Dockerfile"), str(ctx))  # -q: still the event
    assert code == 1 and [(e["type"], e["file"], e["line"], e["column"]) for e in ev] == [
        ("build.error", "$CTX/bad.Dockerfile", 2, 10)]
    (ctx / "strict.Dockerfile").write_text("# check=error=true\nFROM busybox\nCMD echo hi\n")
    code, ev = events("-f", str(ctx / "strict.Dockerfile"), str(ctx))
    assert code == 1 and [(e["type"], e.get("rule"), e.get("error")) for e in ev] == [
        ("lint.warning", "JSONArgsRecommended", None),
        ("build.error", None, "lint violation found for rules: JSONArgsRecommended")]
    env = dict(cli.env(), PYBUILD_PROGRESS="rawjson")  # auto honours it as the build does
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-m", "pybuild", "build", "-f", str(ctx / "typo.Dockerfile"), str(ctx)],
                         capture_output=True, text=True, env=env)
    assert res.returncode == 1 and json.loads(res.stderr)["line"] == 2
    # plain keeps its text: the error, the source line and a caret
    res = cli("build", "--progress", "plain", "-f", str(ctx / "typo.Dockerfile"), str(ctx))
    assert res.code == 1 and res.stderr.splitlines() == [
        f"ERROR: {ctx}/typo.Dockerfile:2:1: unknown instruction RUNN (did you mean RUN?)", "RUNN x", "^"]
