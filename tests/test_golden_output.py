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
