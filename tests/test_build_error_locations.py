"""Errors about a Dockerfile instruction name FILE:LINE:COL (1-based), pointing at the flag value
or argument they are about when there is one, through `pybuild build` (planning and build time)."""

from __future__ import annotations

import pytest

CASES = [
    # an unknown stage or image in COPY --from, the flag on a continuation line
    ("FROM scratch\nCOPY --chmod=644 \\\n     --from=nosuch /a /b\n",
     "3:13: COPY --from=nosuch: no stage or local image of that name"),
    ("FROM scratch AS a\nCOPY --from=b /x /y\nFROM scratch AS b\nCOPY --from=a /x /y\n",
     "2:13: COPY --from=b names this stage or a later one"),
    # bad flag values
    ("FROM scratch\nCOPY --chmod=8x9 a /a\n", "2:14: --chmod=8x9: expected an octal mode such as 0755"),
    ("FROM scratch\n\tRUN --network=bogus true\n", "2:16: RUN --network=bogus: expected one of default, none, host"),
    ("FROM scratch\nRUN --network=none \\\n    --mount=type=cache,bogus=1 true\n",
     "3:13: RUN --mount=type=cache,bogus=1: unexpected key 'bogus'"),
    ("FROM scratch\nHEALTHCHECK --interval=5s --retries=x CMD true\n",
     "2:37: HEALTHCHECK --retries=x: expected a whole number"),
    ("FROM scratch\nCOPY --parents=maybe a /\n", "2:16: COPY --parents=maybe: expected true or false"),
    # a bad word on a continuation line, an unknown stage in one option of a --mount value
    ("FROM scratch\nENV A=1 \\\n    B=${X:?on continuation}\n",
     "3:15: Syntax error - can't find = in 'continuation}'"),
    ("FROM scratch\nLABEL a=1 b\n", "2:11: Syntax error - can't find = in 'b'"),
    ("FROM scratch\nRUN --mount=type=bind,from=nope,target=/x true\n",
     "2:23: RUN --mount from=nope: no stage or local image of that name"),
    ("FROM scratch\nRUN --network=none \\\n  --mount=target=/x,from=later true\nFROM scratch AS later\n",
     "3:21: RUN --mount from=later names this stage or a later one"),
    # undefined ARGs, invalid values, missing sources
    ("ARG BASE\nFROM ${BASE}\n", "2:6: FROM names an empty image (an unset ARG?)"),
    ("FROM ${BASE:?needed}\n", "1:6: failed to process '${BASE:?needed}': BASE: needed"),
    ("ARG B=${X:?unset}\nFROM scratch\n", "1:7: failed to process '${X:?unset}': X: unset"),
    ("FROM scratch\nENV A=1 B=${NOPE:?required}\n", "2:11: failed to process '${NOPE:?required}': NOPE: required"),
    ("FROM scratch\nVOLUME /a ${X:?oops}\n", "2:11: failed to process '${X:?oops}': X: oops"),  # was a traceback
    ("FROM scratch\nRUN --mount=type=cache,target=${T:?unset} true\n", "2:13: failed to process '${T:?unset}'"),
    ("FROM scratch\nEXPOSE 80 8o/tcp\n", "2:11: EXPOSE 8o/tcp: expected PORT, PORT/PROTO or a range"),
    ("FROM scratch\n  STOPSIGNAL SIGBOGUS\n", "2:14: STOPSIGNAL SIGBOGUS: not a signal name or number"),
    ("FROM scratch\nCOPY a missing.txt /d/\n", "2:8: COPY failed: 'missing.txt' not found in the build context"),
    ("FROM scratch\nFROM nosuch:1\n",
     "2:6: base image 'nosuch:1' not found in the local store and --pull=never forbids pulling it"),
]


@pytest.mark.parametrize("dockerfile, where", CASES, ids=[c[1].split(": ")[1][:30] for c in CASES])
def test_build_errors_name_file_line_and_column(cli, tmp_path, dockerfile, where):
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(dockerfile)
    (ctx / "a").write_text("a\n")
    res = cli("build", "--pull=never", "--progress", "plain", "-t", "bad:1", str(ctx))
    assert res.code == 1, res.output
    assert f"ERROR: {ctx}/Dockerfile:{where}" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr
    assert "bad:1" not in cli("images", check=True).stdout


def test_excerpt_marks_the_instruction_and_points_at_the_column(cli, tmp_path):
    """The failure excerpt marks every line of the instruction (>>>) and puts a caret under the
    column the error names, here a flag value on a continuation line."""
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM scratch\nCOPY --chmod=644 \\\n     --from=nosuch /a /b\nLABEL x=1\n")
    res = cli("build", "--progress", "plain", str(ctx))
    assert res.code == 1
    lines = res.stderr.splitlines()
    start = lines.index(f"{ctx}/Dockerfile:2")
    assert lines[start + 1:start + 8] == [
        "-" * 20,
        " 1 |     FROM scratch",
        " 2 | >>> COPY --chmod=644 \\",
        " 3 | >>>      --from=nosuch /a /b",
        "   |                 ^",
        " 4 |     LABEL x=1",
        "-" * 20,
    ]
    # the caret is under column 13 of line 3
    assert lines[start + 5].index("^") - len("   |     ") == 13 - 1
    assert lines[start + 4][len(" 3 | >>> ") + 12:].startswith("nosuch")
    assert lines[start + 8] == f"ERROR: {ctx}/Dockerfile:3:13: COPY --from=nosuch: no stage or local image of that name"
