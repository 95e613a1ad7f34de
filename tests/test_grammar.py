"""pybuild.grammar.parse: Dockerfile text -> typed model, and its errors."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pybuild.grammar as g
from pybuild.grammar import (
    Add, Arg, Cmd, Copy, Dockerfile, DockerfileError, Entrypoint, Env, ExecForm, Expose, Healthcheck, Heredoc, Label, Maintainer, Onbuild, Run, Shell, ShellForm, SourceSpan, Stage,
    StopSignal, User, Volume, Workdir, parse,
)


def only(text: str, filename: str = "Dockerfile"):
    """Parse ``FROM scratch`` + text and return the single instruction of the stage."""
    df = parse("FROM scratch\n" + text, filename)
    assert len(df.stages) == 1
    (ins,) = df.stages[0].instructions
    return ins


def fields(ins) -> dict:
    """The instruction's fields minus span/original (compared separately)."""
    return {k: v for k, v in vars(ins).items() if k not in ("span", "original")}


# ---------------------------------------------------------------------------------------------
# every instruction, both forms: text after "FROM scratch\n" -> (class, fields)
# ---------------------------------------------------------------------------------------------
INSTRUCTION_CASES = [
    # RUN: shell and exec form
    ("RUN echo hi", Run, {"command": ShellForm("echo hi"), "heredocs": (), "flags": ()}),
    ('RUN ["echo", "hi"]', Run, {"command": ExecForm(("echo", "hi")), "heredocs": (), "flags": ()}),
    ('RUN [ "a b" , "\\u00e9\\n" ]', Run, {"command": ExecForm(("a b", "é\n")), "heredocs": (), "flags": ()}),
    ("RUN []", Run, {"command": ExecForm(()), "heredocs": (), "flags": ()}),
    # invalid JSON -> shell form, as BuildKit does
    ("RUN [echo, hi]", Run, {"command": ShellForm("[echo, hi]"), "heredocs": (), "flags": ()}),
    ("RUN ['echo']", Run, {"command": ShellForm("['echo']"), "heredocs": (), "flags": ()}),
    ('RUN ["a",]', Run, {"command": ShellForm('["a",]'), "heredocs": (), "flags": ()}),
    ('RUN ["a"] && b', Run, {"command": ShellForm('["a"] && b'), "heredocs": (), "flags": ()}),
    ('RUN [ -f x ] && echo', Run, {"command": ShellForm("[ -f x ] && echo"), "heredocs": (), "flags": ()}),
    ("RUN --mount=type=cache,target=/root/.cache pip install x", Run,
     {"command": ShellForm("pip install x"), "heredocs": (), "flags": (("mount", "type=cache,target=/root/.cache"),)}),
    ("RUN --network=none --security=insecure true", Run,
     {"command": ShellForm("true"), "heredocs": (), "flags": (("network", "none"), ("security", "insecure"))}),
    ('RUN --mount="type=bind,target=/a b" ls', Run,
     {"command": ShellForm("ls"), "heredocs": (), "flags": (("mount", "type=bind,target=/a b"),)}),
    ("RUN -- --not-a-flag", Run, {"command": ShellForm("--not-a-flag"), "heredocs": (), "flags": ()}),
    ("RUN -x", Run, {"command": ShellForm("-x"), "heredocs": (), "flags": ()}),
    # "#" is a comment only at the start of a line
    ("RUN echo hi # not a comment", Run, {"command": ShellForm("echo hi # not a comment"), "heredocs": (), "flags": ()}),
    ("RUN echo\u00a0x", Run, {"command": ShellForm("echo\u00a0x"), "heredocs": (), "flags": ()}),
    # CMD / ENTRYPOINT
    ("CMD echo hi", Cmd, {"command": ShellForm("echo hi"), "flags": ()}),
    ('CMD ["nginx", "-g", "daemon off;"]', Cmd, {"command": ExecForm(("nginx", "-g", "daemon off;")), "flags": ()}),
    ("CMD []", Cmd, {"command": ExecForm(()), "flags": ()}),
    ("ENTRYPOINT /bin/sh -c x", Entrypoint, {"command": ShellForm("/bin/sh -c x"), "flags": ()}),
    ('ENTRYPOINT ["/tini", "--"]', Entrypoint, {"command": ExecForm(("/tini", "--")), "flags": ()}),
    # ENV: both syntaxes, words kept unexpanded with their quotes
    ("ENV A 1", Env, {"pairs": (("A", "1"),), "flags": ()}),
    ("ENV A x  y z", Env, {"pairs": (("A", "x  y z"),), "flags": ()}),
    ('ENV A "x y"', Env, {"pairs": (("A", '"x y"'),), "flags": ()}),
    ("ENV A=1", Env, {"pairs": (("A", "1"),), "flags": ()}),
    ('ENV A=1 B="x y" C=\'$A\' D=a\\ b E=', Env,
     {"pairs": (("A", "1"), ("B", '"x y"'), ("C", "'$A'"), ("D", "a\\ b"), ("E", "")), "flags": ()}),
    ("ENV PATH=$PATH:/x", Env, {"pairs": (("PATH", "$PATH:/x"),), "flags": ()}),
    ('ENV "A"=b', Env, {"pairs": (('"A"', "b"),), "flags": ()}),
    # ARG with and without defaults
    ("ARG VERSION", Arg, {"pairs": (("VERSION", None),), "flags": ()}),
    ("ARG VERSION=1.2", Arg, {"pairs": (("VERSION", "1.2"),), "flags": ()}),
    ('ARG A B=2 C= D="x y"', Arg, {"pairs": (("A", None), ("B", "2"), ("C", ""), ("D", '"x y"')), "flags": ()}),
    # LABEL
    ('LABEL a=b "c d"="e f"', Label, {"pairs": (("a", "b"), ('"c d"', '"e f"')), "flags": ()}),
    ("LABEL maintainer me@x", Label, {"pairs": (("maintainer", "me@x"),), "flags": ()}),
    # EXPOSE / VOLUME
    ("EXPOSE 80", Expose, {"ports": ("80",), "flags": ()}),
    ("EXPOSE 80/tcp  443/udp $PORT", Expose, {"ports": ("80/tcp", "443/udp", "$PORT"), "flags": ()}),
    ("VOLUME /data", Volume, {"paths": ("/data",), "flags": ()}),
    ("VOLUME /a /b", Volume, {"paths": ("/a", "/b"), "flags": ()}),
    ('VOLUME ["/a", "/b c"]', Volume, {"paths": ("/a", "/b c"), "flags": ()}),
    # single-string instructions
    ("WORKDIR /app", Workdir, {"path": "/app", "flags": ()}),
    ("WORKDIR /my app", Workdir, {"path": "/my app", "flags": ()}),
    ("USER 1000:1000", User, {"user": "1000:1000", "flags": ()}),
    ("STOPSIGNAL SIGKILL", StopSignal, {"signal": "SIGKILL", "flags": ()}),
    ("MAINTAINER Jane <j@x>", Maintainer, {"name": "Jane <j@x>", "flags": ()}),
    # SHELL
    ('SHELL ["/bin/bash", "-o", "pipefail", "-c"]', Shell, {"args": ("/bin/bash", "-o", "pipefail", "-c"), "flags": ()}),
    # COPY / ADD
    ("COPY a /dst/", Copy, {"sources": ("a",), "dest": "/dst/", "heredocs": (), "json_form": False, "flags": ()}),
    ("COPY --from=build --chown=1:2 a b /dst/", Copy,
     {"sources": ("a", "b"), "dest": "/dst/", "heredocs": (), "json_form": False,
      "flags": (("from", "build"), ("chown", "1:2"))}),
    ('COPY ["a b", "c", "/d/"]', Copy,
     {"sources": ("a b", "c"), "dest": "/d/", "heredocs": (), "json_form": True, "flags": ()}),
    ("COPY --link --chmod=755 x y", Copy,
     {"sources": ("x",), "dest": "y", "heredocs": (), "json_form": False, "flags": (("link", None), ("chmod", "755"))}),
    ("ADD https://x/y.tgz /opt/", Add,
     {"sources": ("https://x/y.tgz",), "dest": "/opt/", "heredocs": (), "json_form": False, "flags": ()}),
    ('ADD --checksum=sha256:00 ["s", "/d"]', Add,
     {"sources": ("s",), "dest": "/d", "heredocs": (), "json_form": True, "flags": (("checksum", "sha256:00"),)}),
    # HEALTHCHECK
    ("HEALTHCHECK NONE", Healthcheck, {"command": None, "flags": ()}),
    ("HEALTHCHECK --interval=5s --retries=3 CMD curl -f http://x/", Healthcheck,
     {"command": ShellForm("curl -f http://x/"), "flags": (("interval", "5s"), ("retries", "3"))}),
    ('HEALTHCHECK cmd ["true"]', Healthcheck, {"command": ExecForm(("true",)), "flags": ()}),
]


@pytest.mark.parametrize(("text", "cls", "expected"), INSTRUCTION_CASES, ids=[c[0][:40] for c in INSTRUCTION_CASES])
def test_instruction(text: str, cls: type, expected: dict) -> None:
    ins = only(text)
    assert type(ins) is cls
    assert fields(ins) == expected
    assert ins.original == text
    assert ins.span == SourceSpan("Dockerfile", 2, 2, 1)


def test_copy_convenience_properties() -> None:
    ins = only("COPY --from=build --chown=1:2 --chmod=0644 --link a b /dst/")
    assert isinstance(ins, Copy)
    assert (ins.from_stage, ins.chown, ins.chmod, ins.link) == ("build", "1:2", "0644", True)
    plain = only("COPY a b")
    assert (plain.from_stage, plain.chown, plain.chmod, plain.link) == (None, None, None, False)
    assert only("COPY --link=false a b").link is False
    assert only("COPY --exclude=*.md --exclude=x a b").excludes == ("*.md", "x")


def test_run_and_healthcheck_properties() -> None:
    run = only("RUN --mount=type=cache,target=/a --mount=type=secret,id=s --network=host x")
    assert run.mounts == ("type=cache,target=/a", "type=secret,id=s")
    assert run.network == "host"
    hc = only("HEALTHCHECK --interval=1s --timeout=2s --start-period=3s --start-interval=4s --retries=5 CMD x")
    assert (hc.interval, hc.timeout, hc.start_period, hc.start_interval, hc.retries) == ("1s", "2s", "3s", "4s", "5")
    assert only("HEALTHCHECK NONE").none


def test_onbuild() -> None:
    ins = only("ONBUILD COPY --chown=1 . /app")
    assert isinstance(ins, Onbuild)
    inner = ins.instruction
    assert isinstance(inner, Copy)
    assert inner.sources == (".",) and inner.dest == "/app" and inner.chown == "1"
    assert inner.span == SourceSpan("Dockerfile", 2, 2, 9)
    assert inner.original == "COPY --chown=1 . /app"


# ---------------------------------------------------------------------------------------------
# FROM and stages
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("line", "image", "name", "platform"),
    [
        ("FROM alpine", "alpine", None, None),
        ("FROM alpine:3.19 AS build", "alpine:3.19", "build", None),
        ("from alpine as Build", "alpine", "build", None),  # stage names are lower-cased
        ("FROM --platform=$BUILDPLATFORM golang:1.22 AS builder", "golang:1.22", "builder", "$BUILDPLATFORM"),
        ("FROM ${BASE}:${TAG:-latest}", "${BASE}:${TAG:-latest}", None, None),
        ("FROM scratch AS a.b_c-1", "scratch", "a.b_c-1", None),
    ],
)
def test_from(line: str, image: str, name: str | None, platform: str | None) -> None:
    base = parse(line).stages[0].base
    assert (base.image, base.stage_name, base.platform) == (image, name, platform)


def test_stages_and_global_args() -> None:
    text = (
        "ARG BASE=alpine\n"
        "ARG TAG\n"
        "FROM $BASE AS build\n"
        "ARG TAG\n"
        "RUN make\n"
        "FROM scratch\n"
        "COPY --from=build /out /\n"
    )
    df = parse(text, "x/Dockerfile.prod")
    assert isinstance(df, Dockerfile)
    assert df.filename == "x/Dockerfile.prod"
    assert [a.pairs for a in df.global_args] == [(("BASE", "alpine"),), (("TAG", None),)]
    assert [(s.index, s.name, s.base.image) for s in df.stages] == [(0, "build", "$BASE"), (1, None, "scratch")]
    assert [type(i) for i in df.stages[0].instructions] == [Arg, Run]
    assert [type(i) for i in df.stages[1].instructions] == [Copy]
    assert df.stage("BUILD") is df.stages[0] and df.stage(1) is df.stages[1]
    assert isinstance(df.stages[0], Stage)
    assert df.stages[1].instructions[0].span == SourceSpan("x/Dockerfile.prod", 7, 7, 1)


def test_case_insensitive_keywords() -> None:
    df = parse("from a\nRuN echo\nenv A=1\nCopy x y\nhealthcheck none\n")
    assert [type(i) for i in df.stages[0].instructions] == [Run, Env, Copy, Healthcheck]


# ---------------------------------------------------------------------------------------------
# line reader: continuations, comments, directives, CRLF, BOM, heredocs
# ---------------------------------------------------------------------------------------------
def test_continuation_with_comment_and_empty_lines() -> None:
    text = (
        "FROM a\n"
        "RUN apt-get update \\\n"
        "    # a comment inside the continuation\n"
        "\n"
        "   \t\n"
        "  && apt-get install -y x \\   \n"
        "  && rm -rf /var/lib/apt\n"
        "# trailing comment\n"
        "CMD x\n"
    )
    run, cmd = parse(text).stages[0].instructions
    assert run.command == ShellForm("apt-get update   && apt-get install -y x   && rm -rf /var/lib/apt")
    assert run.original == "RUN apt-get update   && apt-get install -y x   && rm -rf /var/lib/apt"
    # the blank lines are skipped but remembered (NoEmptyContinuation); the comment line is not one
    assert run.span == SourceSpan("Dockerfile", 2, 7, 1, empty_continuation_lines=(4, 5))
    assert cmd.span == SourceSpan("Dockerfile", 9, 9, 1)


def test_leading_whitespace_and_indented_comments() -> None:
    df = parse("  # comment\n\t FROM a\n    RUN x\n\n  # another\n")
    assert df.stages[0].base.span == SourceSpan("Dockerfile", 2, 2, 3)
    assert df.stages[0].instructions[0].span == SourceSpan("Dockerfile", 3, 3, 5)


def test_backtick_escape_directive() -> None:
    text = (
        "# escape=`\n"
        "FROM mcr.microsoft.com/windows/servercore\n"
        "RUN dir c:\\ `\n"
        "    && echo done\n"
        "COPY c:\\src\\ d:\\dst\\\n"
        "WORKDIR c:\\app\n"
    )
    df = parse(text)
    assert df.directives == {"escape": "`"}
    assert df.escape == "`"
    run, copy, workdir = df.stages[0].instructions
    assert run.command == ShellForm("dir c:\\     && echo done")
    assert run.span.end_line == 4
    assert (copy.sources, copy.dest) == (("c:\\src\\",), "d:\\dst\\")
    assert workdir.path == "c:\\app"


def test_backtick_escape_in_env_words() -> None:
    env = only_with("# escape=`\nFROM a\nENV A=x`\" B=y\n")
    assert env.pairs == (("A", 'x`"'), ("B", "y"))


def only_with(text: str):
    (ins,) = parse(text).stages[0].instructions
    return ins


@pytest.mark.parametrize(
    ("text", "directives"),
    [
        ("# syntax=docker/dockerfile:1.7\nFROM a\n", {"syntax": "docker/dockerfile:1.7"}),
        ("#syntax = x\n# ESCAPE = \\ \n#check=skip=all\nFROM a\n", {"syntax": "x", "escape": "\\", "check": "skip=all"}),
        # directives end at the first non-directive line (comment, blank line or instruction)
        ("# hello\n# escape=`\nFROM a\n", {}),
        ("\n# escape=`\nFROM a\n", {}),
        ("FROM a\n# escape=`\n", {}),
        ("# unknown=1\n# escape=`\nFROM a\n", {}),
    ],
)
def test_directives(text: str, directives: dict) -> None:
    assert parse(text).directives == directives


def test_crlf_and_bom() -> None:
    text = "\ufeff# escape=`\r\nFROM a AS b\r\nRUN echo `\r\n  x\r\nENV A=1\r\n"
    df = parse(text)
    assert df.directives == {"escape": "`"}
    assert df.stages[0].name == "b"
    run, env = df.stages[0].instructions
    assert run.command == ShellForm("echo   x")
    assert env.pairs == (("A", "1"),)
    assert env.span == SourceSpan("Dockerfile", 5, 5, 1)


def test_bom_only_at_start_and_no_trailing_newline() -> None:
    df = parse("\ufeffFROM a\nCMD x")
    assert df.stages[0].instructions[0].command == ShellForm("x")


def test_heredocs() -> None:
    text = (
        "FROM a\n"
        "RUN <<EOF\n"
        "apt-get update\n"
        "  echo $HOME\n"
        "EOF\n"
        "RUN python3 <<'PY' > out\n"
        "print('$x')\n"
        "PY\n"
        "COPY <<-END /etc/conf\n"
        "\tkey=1\n"
        "\tEND\n"
        "RUN 3<<A cat /dev/fd/3 <<B\n"
        "a\n"
        "A\n"
        "b\n"
        "B\n"
        'RUN ["sh", "-c", "cat <<EOF"]\n'
        "CMD done\n"
    )
    run1, run2, copy, run3, run4, cmd = parse(text).stages[0].instructions
    assert run1.command == ShellForm("<<EOF")
    assert run1.heredocs == (Heredoc("EOF", "apt-get update\n  echo $HOME\n", True, False, None),)
    assert run1.span == SourceSpan("Dockerfile", 2, 5, 1)
    assert run2.heredocs == (Heredoc("PY", "print('$x')\n", False, False, None),)
    assert copy.sources == ("<<-END",) and copy.dest == "/etc/conf"
    assert copy.heredocs == (Heredoc("END", "\tkey=1\n", True, True, None),)
    assert copy.heredocs[0].chomped_content == "key=1\n"
    assert [(h.name, h.content, h.file_descriptor) for h in run3.heredocs] == [("A", "a\n", 3), ("B", "b\n", None)]
    assert run4.heredocs == () and isinstance(run4.command, ExecForm)  # no heredocs in exec form
    assert cmd.span.start_line == 18


def test_heredoc_like_text_is_not_a_heredoc() -> None:
    run = only("RUN echo a<<b && cat <<<word")
    assert run.heredocs == ()


# ---------------------------------------------------------------------------------------------
# errors: exact file:line:col, message, source line and caret
# ---------------------------------------------------------------------------------------------
ERROR_CASES = [
    ("FROM a\nRUNN echo hi\n", 2, 1, "unknown instruction RUNN (did you mean RUN?)"),
    ("FROM a\n  coppy a b\n", 2, 3, "unknown instruction coppy (did you mean COPY?)"),
    ("FROM a\nXYZZY\n", 2, 1, "unknown instruction XYZZY"),
    ("FROM a\nCOPY --chwon=1:1 a b\n", 2, 6, "unknown flag --chwon for COPY (did you mean --chown?)"),
    ("FROM a\nRUN --from=x echo\n", 2, 5, "unknown flag --from for RUN"),
    ("FROM a\nCMD --x echo\n", 2, 5, "unknown flag --x for CMD"),
    ("FROM a\nRUN --network=none \\\n    --bogus x\n", 3, 5, "unknown flag --bogus for RUN"),
    ("", 1, 1, "file with no instructions"),
    ("# just a comment\n\n   \n", 1, 1, "file with no instructions"),
    ("\ufeff", 1, 1, "file with no instructions"),
    ("RUN echo\nFROM a\n", 1, 1, "RUN instruction before the first FROM: only ARG may come before FROM"),
    ("ARG X\n  ENV A=1\nFROM a\n", 2, 3, "ENV instruction before the first FROM: only ARG may come before FROM"),
    ("ARG X\n", 1, 1, "no FROM instruction: the file has no build stage"),
    ("FROM a\nRUN\n", 2, 1, "RUN requires at least one argument"),
    ("FROM a\nRUN --mount=type=tmpfs\n", 2, 1, "RUN requires at least one argument"),
    ("FROM a\nCOPY onlyone\n", 2, 1, "COPY requires at least two arguments (sources and a destination)"),
    ("FROM a\nENV\n", 2, 1, "ENV requires at least one argument"),
    ("FROM a\nENV A\n", 2, 1, "ENV must have two arguments"),
    ("FROM a\nENV A=1 B\n", 2, 9, "Syntax error - can't find = in 'B'. Must be of the form: name=value"),
    ("FROM a\nENV =1\n", 2, 1, "ENV names can not be blank"),
    ("FROM a\nARG\n", 2, 1, "ARG requires at least one argument"),
    ("FROM a\nARG =x\n", 2, 1, "ARG names can not be blank"),
    ("FROM a\nEXPOSE\n", 2, 1, "EXPOSE requires at least one argument"),
    ("FROM a\nWORKDIR\n", 2, 1, "WORKDIR requires exactly one argument"),
    ("FROM a\nCMD [1, 2]\n", 2, 5, "when using JSON array syntax, arrays must be comprised of strings only"),
    ('FROM a\nRUN ["a", null]\n', 2, 5, "when using JSON array syntax, arrays must be comprised of strings only"),
    ("FROM a\nSHELL /bin/sh -c\n", 2, 1, "SHELL requires the arguments to be in JSON form"),
    ("FROM a\nSHELL []\n", 2, 1, "SHELL requires at least one argument"),
    ("FROM a\nHEALTHCHECK CMDX true\n", 2, 1, "unknown type 'CMDX' in HEALTHCHECK (try CMD)"),
    ("FROM a\nHEALTHCHECK NONE x\n", 2, 1, "HEALTHCHECK NONE takes no arguments"),
    ("FROM a\nONBUILD\n", 2, 1, "ONBUILD requires at least one argument"),
    ("FROM a\nONBUILD ONBUILD RUN x\n", 2, 9, "ONBUILD isn't allowed as an ONBUILD trigger"),
    ("FROM a\nONBUILD RUNN x\n", 2, 9, "unknown instruction RUNN (did you mean RUN?)"),
    ("FROM\n", 1, 1, "FROM requires either one or three arguments"),
    ("FROM a b\n", 1, 1, "FROM requires either one or three arguments"),
    ("FROM a TO b\n", 1, 1, 'when using FROM with three arguments, the second one must be "AS"'),
    ("FROM a AS 1x\n", 1, 11, "invalid name for build stage: '1x', name can't start with a number or contain symbols"),
    ("FROM a AS b\nFROM c AS B\n", 2, 11, "duplicate stage name 'b'"),
    ("FROM --plat=x a\n", 1, 6, "unknown flag --plat for FROM (did you mean --platform?)"),
    ("FROM a\nRUN <<EOF\necho\n", 2, 5, "unterminated heredoc <<EOF"),
    ("FROM a\nCOPY <<-X /d\nx\n", 2, 6, "unterminated heredoc <<-X"),
    ("# escape=x\nFROM a\n", 1, 1, "invalid escape token 'x' does not match ^[\\\\`]$"),
    ("# syntax=a\n# syntax=b\nFROM a\n", 2, 1, "only one syntax parser directive can be used"),
]


@pytest.mark.parametrize(("text", "line", "col", "message"), ERROR_CASES, ids=[c[3][:50] for c in ERROR_CASES])
def test_errors(text: str, line: int, col: int, message: str) -> None:
    with pytest.raises(DockerfileError) as info:
        parse(text, "Dockerfile")
    err = info.value
    assert (err.filename, err.line, err.col, err.message) == ("Dockerfile", line, col, message)
    physical = text.lstrip("\ufeff").split("\n")
    expected_source = physical[line - 1].rstrip("\r") if line <= len(physical) else ""
    assert err.source_line == expected_source


def test_error_str_has_location_source_and_caret() -> None:
    with pytest.raises(DockerfileError) as info:
        parse("FROM a\n\nRUNN echo hi\n", "Dockerfile")
    assert str(info.value) == "Dockerfile:3:1: unknown instruction RUNN (did you mean RUN?)\nRUNN echo hi\n^"
    with pytest.raises(DockerfileError) as info:
        parse("FROM a\n\tCOPY --chwon=1 a b\n", "build/Dockerfile")
    assert str(info.value).splitlines() == [
        "build/Dockerfile:2:7: unknown flag --chwon for COPY (did you mean --chown?)",
        "\tCOPY --chwon=1 a b",
        "\t     ^",
    ]


def test_error_str_escapes_control_characters() -> None:
    """A binary file read as a Dockerfile: its bytes are not echoed raw (a NUL, an ANSI escape),
    but escaped as Go's %q writes them; the caret still points at the column."""
    from pybuild.grammar.errors import printable

    with pytest.raises(DockerfileError) as info:
        parse("\x00\x01binary", "Dockerfile")
    assert info.value.message == "unknown instruction \x00\x01binary"  # the raw text stays on the error
    assert str(info.value) == "Dockerfile:1:1: unknown instruction \\x00\\x01binary\n\\x00\\x01binary\n^"
    with pytest.raises(DockerfileError) as info:
        parse("FROM a\nRUN\x1b[31m x\n", "Dockerfile")
    assert str(info.value).splitlines()[:2] == ["Dockerfile:2:1: unknown instruction RUN\\x1b[31m",
                                                "RUN\\x1b[31m x"]
    with pytest.raises(DockerfileError) as info:  # a column after an escaped character
        parse("FROM a\nCOPY --chown=\x01x --frm=a b c\n", "Dockerfile")
    assert str(info.value).splitlines()[1:] == ["COPY --chown=\\x01x --frm=a b c",
                                                "                   ^"]
    assert all(c.isprintable() for c in str(info.value).replace("\n", ""))
    # ordinary UTF-8 text and tabs are shown as they are; C1, DEL, separators and bidi controls escaped
    assert printable("héllo wörld 中文 🐳\tx") == "héllo wörld 中文 🐳\tx"
    assert printable("a\x7fb\x85c\u2028d\u202ee\r\n") == "a\\x7fb\\u0085c\\u2028d\\u202ee\\x0d\\x0a"
    with pytest.raises(DockerfileError) as info:
        parse("FROM a\nRÜNN é\n", "Dockerfile")
    assert str(info.value).splitlines()[1] == "RÜNN é"


@pytest.mark.parametrize("engine", ["fast", "lark"])
def test_flag_and_word_positions_for_build_errors(engine: str) -> None:
    """Where each flag and argument of an instruction is (1-based line:col), for the errors the
    build reports after parsing; also on continuation lines (whose text the parser joins), inside
    ONBUILD, after tabs and with a repeated flag."""
    text = ("FROM --platform=linux/arm64 \\\n    ${BASE} AS b\n"
            "\tCOPY --from=nosuch --chmod=75x \\\n  # note\n\n   a.txt \\\n\\\n  /dst/\n"
            "  ONBUILD RUN --mount=type=cache --mount=type=tmpfs true\n"
            "EXPOSE 80 \"8080\" 8080/xyz\n"
            "ENV A=\"${X:?need X}\"\n"
            "HEALTHCHECK --retries=x CMD true\n"
            "COPY [\"a b\", \"/c\"]\n")
    df = parse(text, "Dockerfile", engine=engine)
    base = df.stages[0].base
    assert base.flag_position("platform") == (1, 17)
    assert base.flag_position("platform", at_value=False) == (1, 6)
    assert base.word_position("${BASE}") == (2, 5)
    copy, onbuild, expose, env, health, json_copy = df.stages[0].instructions
    assert copy.span.start_col == 2
    assert copy.flag_position("from") == (3, 14) and copy.flag_position("chmod") == (3, 29)
    assert copy.word_position("a.txt") == (6, 4) and copy.word_position("/dst/") == (8, 3)
    assert copy.flag_position("chown") == (3, 2)  # no such flag: the instruction
    assert copy.word_position("nosuch") == (3, 2)  # a flag's value is not an argument
    run = onbuild.instruction
    assert (run.span.start_line, run.span.start_col) == (9, 11)
    assert run.flag_position("mount", "type=cache") == (9, 23)
    assert run.flag_position("mount") == (9, 42)  # the last one
    assert run.word_position("true") == (9, 53)
    assert expose.word_position("80") == (10, 8)  # not inside "8080"
    assert expose.word_position("8080") == (10, 12) and expose.word_position('"8080"') == (10, 11)
    assert expose.word_position("8080/xyz") == (10, 18)
    assert env.word_position("need") == (11, 1)  # not a whole word: the instruction
    assert env.word_position('"${X:?need X}"') == (11, 7)
    assert health.flag_position("retries") == (12, 23)
    assert json_copy.word_position("a b") == (13, 8) and json_copy.word_position("/c") == (13, 15)


def test_error_is_exception_with_attributes() -> None:
    err = DockerfileError("f", 1, 2, "m", "src")
    assert isinstance(err, Exception)
    assert (err.filename, err.line, err.col, err.message, err.source_line) == ("f", 1, 2, "m", "src")


# ---------------------------------------------------------------------------------------------
# robustness: nothing but DockerfileError escapes, for any text
# ---------------------------------------------------------------------------------------------
_ALPHABET = st.sampled_from(
    list("FROMRUNCOPYADDENVARGfrom runcopy \t\n\r\\`#=\"'[]{},:$-<>0123456789ab/\u00a0\ufeff\x0b\x00é")
    + ["FROM ", "RUN ", "COPY ", "ENV ", "ARG ", "ONBUILD ", "HEALTHCHECK ", "SHELL ", "--", "--from=",
       "<<EOF", "<<-'X'", "EOF\n", "\n", " AS ", '["a"', ']', "# escape=`\n", "\\\n", "`\n"]
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_ALPHABET, max_size=60).map("".join) | st.text(max_size=200))
def test_random_text_raises_only_dockerfile_error(text: str) -> None:
    try:
        df = parse(text)
    except DockerfileError as err:
        assert not err.message.startswith("internal parser error"), err.message
        assert err.line >= 1 and err.col >= 1
        str(err)
    else:
        assert isinstance(df, Dockerfile) and df.stages


# ---------------------------------------------------------------------------------------------
# cross-check with the dockerfile-parse package on the fields both parsers model
# ---------------------------------------------------------------------------------------------
CROSS_CHECK_FILES = [
    "FROM alpine:3.19 AS build\nRUN apk add x \\\n    y\nCOPY --from=build a b\nENV A=1 B=2\nLABEL k=v\nCMD [\"x\"]\n",
    "ARG BASE=debian\nFROM $BASE\n# comment\nWORKDIR /app\nUSER nobody\nEXPOSE 80 443\nENTRYPOINT x\n",
    "FROM a\nFROM b AS c\nENV PATH /usr/bin\nVOLUME /data\nSTOPSIGNAL SIGTERM\n",
]


@pytest.mark.parametrize("text", CROSS_CHECK_FILES)
def test_cross_check_with_dockerfile_parse(text: str) -> None:
    from dockerfile_parse import DockerfileParser

    theirs = DockerfileParser(fileobj=io.BytesIO(text.encode()))
    their_rows = [(r["instruction"], r["startline"] + 1, r["endline"] + 1) for r in theirs.structure
                  if r["instruction"] != "COMMENT"]
    df = parse(text)
    ours = [(a.keyword, a.span.start_line, a.span.end_line) for a in df.global_args]
    for stage in df.stages:
        ours.append(("FROM", stage.base.span.start_line, stage.base.span.end_line))
        ours += [(i.keyword, i.span.start_line, i.span.end_line) for i in stage.instructions]
    assert ours == their_rows
    # base images as written, and the last stage's labels after expansion
    assert [s.base.image for s in df.stages] == [v.split()[0] for v in
                                                  (r["value"] for r in theirs.structure if r["instruction"] == "FROM")]
    labels = {k: g.expand_word(v, {}) for i in df.stages[-1].instructions if isinstance(i, Label) for k, v in i.pairs}
    assert labels == theirs.labels


# ---------------------------------------------------------------------------------------------
# packaging / purity
# ---------------------------------------------------------------------------------------------
def test_import_is_cheap_and_lazy() -> None:
    code = "import sys, pybuild.grammar; print('lark' in sys.modules, 'pybuild.grammar.ast' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_models_are_frozen() -> None:
    ins = only("RUN x")
    with pytest.raises(AttributeError):
        ins.command = ShellForm("y")  # type: ignore[misc]
    assert hash(ins) == hash(only("RUN x"))


def test_public_api() -> None:
    for name in g.__all__:
        assert getattr(g, name) is not None
    assert issubclass(g.ExpansionError, ValueError)
