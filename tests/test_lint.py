"""Lint rules (BuildKit `docker build --check` names and messages) and `pybuild check`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pybuild.grammar import DockerfileError, parse
from pybuild.grammar.lint import RULES, Warning, lint, parse_check_options

REPO = Path(__file__).resolve().parent.parent


def run_lint(text: str, build_args=None) -> list[Warning]:
    return lint(parse(text, "Dockerfile"), build_args)


def found(text: str, rule: str, build_args=None) -> list[tuple[int, str]]:
    return [(w.span.start_line, w.message) for w in run_lint(text, build_args) if w.rule == rule]


# (rule, triggering Dockerfile, expected (line, message) list, clean Dockerfile)
CASES = [
    ("JSONArgsRecommended",
     "FROM alpine\nCMD echo hi\nENTRYPOINT [\"sh\"]\n",
     [(2, "JSON arguments recommended for CMD to prevent unintended behavior related to OS signals")],
     "FROM alpine\nSHELL [\"/bin/sh\", \"-c\"]\nCMD echo hi\nENTRYPOINT [\"sh\"]\n"),
    ("JSONArgsRecommended",
     "FROM alpine\nENTRYPOINT my-app --serve\n",
     [(2, "JSON arguments recommended for ENTRYPOINT to prevent unintended behavior related to OS signals")],
     "FROM alpine\nENTRYPOINT [\"my-app\", \"--serve\"]\n"),
    ("StageNameCasing",
     "FROM alpine AS BuildStage\nRUN true\n",
     [(1, "Stage name 'BuildStage' should be lowercase")],
     "FROM alpine AS build-stage\nRUN true\n"),
    ("FromAsCasing",
     "FROM debian:latest as builder\n",
     [(1, "'as' and 'FROM' keywords' casing do not match")],
     "from debian:latest as builder\n"),
    ("UndefinedVar",
     "FROM alpine\nENV PATH=$PAHT:/app/bin\n",
     [(2, "Usage of undefined variable '$PAHT' (did you mean $PATH?)")],
     "FROM alpine\nENV PATH=$PATH:/app/bin\n"),
    ("UndefinedVar",
     "FROM alpine AS base\nCOPY $foo .\n",
     [(2, "Usage of undefined variable '$foo'")],
     "FROM alpine AS base\nARG foo\nCOPY $foo .\nRUN echo $bar\n"),
    ("MaintainerDeprecated",
     "FROM alpine\nMAINTAINER me <me@example.com>\n",
     [(2, "Maintainer instruction is deprecated in favor of using label")],
     "FROM alpine\nLABEL org.opencontainers.image.authors=\"me@example.com\"\n"),
    ("RedundantTargetPlatform",
     "FROM --platform=$TARGETPLATFORM alpine\n",
     [(1, "Setting platform to predefined $TARGETPLATFORM in FROM is redundant as this is the default behavior")],
     "FROM --platform=$BUILDPLATFORM alpine\n"),
    ("ConsistentInstructionCasing",
     "FROM alpine\nrun echo hi\nCOPY a /a\n",
     [(2, "Command 'run' should match the case of the command majority (uppercase)")],
     "from alpine\nrun echo hi\ncopy a /a\n"),
    ("ConsistentInstructionCasing",
     "from alpine\nRun echo hi\ncopy a /a\n",
     [(2, "Command 'Run' should match the case of the command majority (lowercase)")],
     "FROM alpine\nRUN echo hi\n"),
    ("MultipleInstructionsDisallowed",
     "FROM alpine\nCMD [\"a\"]\nHEALTHCHECK NONE\nCMD [\"b\"]\nHEALTHCHECK CMD [\"true\"]\n",
     [(2, "Multiple CMD instructions should not be used in the same stage because only the last one will be used"),
      (3, "Multiple HEALTHCHECK instructions should not be used in the same stage because only the last one will be used")],
     "FROM alpine AS a\nCMD [\"a\"]\nFROM alpine\nCMD [\"b\"]\nENTRYPOINT [\"c\"]\n"),
    ("WorkdirRelativePath",
     "FROM alpine\nWORKDIR app\n",
     [(2, 'Relative workdir "app" can have unexpected results if the base image changes')],
     "FROM alpine\nWORKDIR /usr/src\nWORKDIR app\n"),
    ("UndefinedArgInFrom",
     "ARG VERSION=3.19\nFROM alpine:$VERSIO\n",
     [(2, "FROM argument 'VERSIO' is not declared (did you mean VERSION?)")],
     "ARG VERSION=3.19\nFROM alpine:$VERSION\nFROM --platform=$BUILDPLATFORM alpine\n"),
    ("SecretsUsedInArgOrEnv",
     "FROM alpine\nARG GITHUB_TOKEN\nENV DB_PASSWORD=x\n",
     [(2, 'Do not use ARG or ENV instructions for sensitive data (ARG "GITHUB_TOKEN")'),
      (3, 'Do not use ARG or ENV instructions for sensitive data (ENV "DB_PASSWORD")')],
     "FROM alpine\nARG PUBLIC_KEY\nENV KEYBOARD=us\n"),
    ("InvalidDefaultArgInFrom",
     "ARG TAG\nFROM alpine:$TAG\nARG REPO=Docker/x\nFROM ${REPO}\n",
     [(2, "Default value for ARG alpine:$TAG results in empty or invalid base image name"),
      (4, "Default value for ARG ${REPO} results in empty or invalid base image name")],
     "ARG TAG=3.19\nFROM alpine:$TAG\nFROM alpine:${TAG:-latest}\nFROM base-${TARGETARCH}\nARG B\nFROM ${B:-busybox}\n"),
    ("NoEmptyContinuation",
     "FROM alpine\nRUN apk add \\\n\n    gnupg \\\n  \t\n    curl\nCMD [\"x\"]\n",
     [(2, "Empty continuation line")],
     # a comment line inside a continuation is not an empty one; a blank line after the end is not either
     "FROM alpine\nRUN apk add \\\n# gnupg\n    curl\n\nCMD [\"x\"]\n"),
    ("LegacyKeyValueFormat",
     "FROM alpine\nENV DEBUG true\nLABEL team core\n",
     [(2, '"ENV key=value" should be used instead of legacy "ENV key value" format'),
      (3, '"LABEL key=value" should be used instead of legacy "LABEL key value" format')],
     "FROM alpine\nENV DEBUG=true\nLABEL team=core\n"),
]


@pytest.mark.parametrize("rule,bad,expected,good", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_rule_triggers(rule, bad, expected, good):
    assert rule in RULES
    assert found(bad, rule) == expected


@pytest.mark.parametrize("rule,bad,expected,good", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_rule_clean(rule, bad, expected, good):
    assert found(good, rule) == []


def test_every_rule_has_docstring_and_url():
    for name, r in RULES.items():
        assert r.func.__doc__, name
        assert r.url.startswith("https://docs.docker.com/go/dockerfile/rule/"), name


def test_warning_fields_and_sorting():
    ws = run_lint("FROM alpine\n  WORKDIR app\nMAINTAINER x\nCMD echo\n")
    assert [(w.rule, w.span.start_line) for w in ws] == [
        ("WorkdirRelativePath", 2), ("MaintainerDeprecated", 3), ("JSONArgsRecommended", 4)]
    w = ws[0]
    assert w.span.start_col == 3 and w.span.file == "Dockerfile"
    assert w.url == "https://docs.docker.com/go/dockerfile/rule/workdir-relative-path/"
    assert w.format().startswith("Dockerfile:2:3: WorkdirRelativePath: ")


def test_undefined_var_scoping():
    text = ("ARG G=1\nFROM alpine AS a\nENV A=1\nCOPY $G /x\n"  # global ARG not redeclared: undefined
            "FROM a\nARG G\nCOPY $A $G ${TARGETARCH} /y\n")     # env of stage a inherited; G redeclared
    assert found(text, "UndefinedVar") == [(4, "Usage of undefined variable '$G'")]


def test_undefined_var_default_modifier_still_counts_like_buildkit():
    assert found("FROM alpine\nWORKDIR ${DIR:-/app}\n", "UndefinedVar") == [
        (2, "Usage of undefined variable '$DIR'")]


def test_undefined_var_ignores_single_quotes_and_escapes():
    assert found("FROM alpine\nLABEL a='$x' b=\\$y\n", "UndefinedVar") == []


def test_skip_directive():
    text = "# check=skip=JSONArgsRecommended,MaintainerDeprecated\nFROM alpine\nMAINTAINER x\nCMD echo\nWORKDIR app\n"
    assert [w.rule for w in run_lint(text)] == ["WorkdirRelativePath"]


def test_skip_all():
    assert run_lint("# check=skip=all\nFROM alpine\nMAINTAINER x\n") == []


def test_check_options_parsing():
    cfg = parse_check_options("skip=A, B;error=true")
    assert cfg.skip == {"A", "B"} and cfg.error and not cfg.skip_all
    assert not parse_check_options("error=false").error
    with pytest.raises(ValueError):
        parse_check_options("bogus=1")
    with pytest.raises(ValueError):
        parse_check_options("error=maybe")


def test_invalid_directive_is_dockerfile_error():
    with pytest.raises(DockerfileError):
        run_lint("# check=nope\nFROM alpine\n")


def test_build_arg_overrides_directive():
    text = "# check=skip=all\nFROM alpine\nMAINTAINER x\n"
    assert [w.rule for w in run_lint(text, {"BUILDKIT_DOCKERFILE_CHECK": "skip=none"})] == ["MaintainerDeprecated"]


def test_onbuild_maintainer_and_casing_not_double_counted():
    assert run_lint("FROM alpine\nONBUILD RUN echo hi\nCMD [\"x\"]\n") == []


# ---- CLI ------------------------------------------------------------------------------------------

def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "pybuild", "check", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=60)


def test_cli_warnings_exit_0(tmp_path):
    (tmp_path / "Dockerfile").write_text("FROM alpine as build\nCMD echo hi\n")
    r = cli(str(tmp_path))
    df = str(tmp_path / "Dockerfile")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        f"{df}:1:1: FromAsCasing: 'as' and 'FROM' keywords' casing do not match",
        f"{df}:2:1: JSONArgsRecommended: JSON arguments recommended for CMD to prevent unintended behavior "
        "related to OS signals",
        "2 warnings found",
    ]


def test_cli_clean_file(tmp_path):
    (tmp_path / "Dockerfile").write_text("FROM alpine\nCMD [\"echo\", \"hi\"]\n")
    r = cli(cwd=tmp_path)
    assert r.returncode == 0
    assert r.stdout.splitlines() == ["Check complete, no warnings found."]


def test_cli_dash_f_relative_name(tmp_path):
    (tmp_path / "app.Dockerfile").write_text("FROM alpine\nMAINTAINER me\n")
    r = cli("-f", "app.Dockerfile", cwd=tmp_path)
    assert r.returncode == 0
    assert r.stdout.splitlines() == [
        "app.Dockerfile:2:1: MaintainerDeprecated: Maintainer instruction is deprecated in favor of using label",
        "1 warning found"]


def test_cli_error_true_exit_1(tmp_path):
    (tmp_path / "Dockerfile").write_text("# check=error=true\nFROM alpine\nCMD echo hi\n")
    r = cli(str(tmp_path))
    assert r.returncode == 1
    assert "JSONArgsRecommended" in r.stdout
    assert "lint violation found for rules: JSONArgsRecommended" in r.stderr


def test_cli_error_true_without_warnings_exit_0(tmp_path):
    (tmp_path / "Dockerfile").write_text("# check=error=true\nFROM alpine\nCMD [\"x\"]\n")
    assert cli(str(tmp_path)).returncode == 0


def test_cli_skip_then_no_warnings(tmp_path):
    (tmp_path / "Dockerfile").write_text("# check=skip=JSONArgsRecommended;error=true\nFROM alpine\nCMD echo\n")
    r = cli(str(tmp_path))
    assert r.returncode == 0 and r.stdout.strip() == "Check complete, no warnings found."


def test_cli_parse_error_exit_1(tmp_path):
    (tmp_path / "Dockerfile").write_text("FROM alpine\nRUNN echo\n")
    r = cli(str(tmp_path))
    assert r.returncode == 1
    assert "Dockerfile:2:1: unknown instruction RUNN (did you mean RUN?)" in r.stderr


def test_cli_missing_file_exit_2(tmp_path):
    r = cli("-f", str(tmp_path / "nope.Dockerfile"))
    assert r.returncode == 2
    assert "nope.Dockerfile" in r.stderr


def test_workdir_from_an_absolute_env_value_is_not_relative():
    from pybuild.grammar import parse
    from pybuild.grammar.lint import lint

    df = parse("FROM busybox\nENV APP_HOME=/app\nWORKDIR $APP_HOME\nWORKDIR ${BASE_DIR}/x\n", "Dockerfile")
    assert [w.rule for w in lint(df) if w.rule == "WorkdirRelativePath"] == []
    df = parse("FROM busybox\nENV SUB=app\nWORKDIR $SUB\n", "Dockerfile")
    assert [w.rule for w in lint(df) if w.rule == "WorkdirRelativePath"] == ["WorkdirRelativePath"]


def test_no_empty_continuation_is_reported_once_per_instruction_with_its_position():
    text = "ARG A=1 \\\n\nB=2\nFROM alpine\n  ONBUILD RUN a \\\n\n  b\n"
    ws = [w for w in run_lint(text) if w.rule == "NoEmptyContinuation"]
    assert [(w.span.start_line, w.span.start_col, w.span.end_line) for w in ws] == [(1, 1, 3), (5, 3, 7)]
    assert ws[0].url == "https://docs.docker.com/go/dockerfile/rule/no-empty-continuation/"
    assert ws[1].format() == "Dockerfile:5:3: NoEmptyContinuation: Empty continuation line"
    assert found("# check=skip=NoEmptyContinuation\n" + text, "NoEmptyContinuation") == []


def test_undefined_var_sees_the_base_image_env_when_given():
    from pybuild.grammar.lint import external_base_images

    text = ("ARG BASE=base\nFROM ${BASE}:1 AS one\nWORKDIR $APP_HOME\nCOPY $NOPE /x\n"
            "FROM one\nUSER $APP_USER\nFROM other\nUSER $APP_USER\nFROM scratch\n")
    df = parse(text, "Dockerfile")
    assert external_base_images(df) == ["base:1", "other"]
    assert external_base_images(df, {"BASE": "x"}) == ["x:1", "other"]
    names = lambda ws: [(w.span.start_line, w.message) for w in ws if w.rule == "UndefinedVar"]  # noqa: E731
    assert names(lint(df)) == [
        (3, "Usage of undefined variable '$APP_HOME'"), (4, "Usage of undefined variable '$NOPE'"),
        (6, "Usage of undefined variable '$APP_USER'"), (8, "Usage of undefined variable '$APP_USER'")]
    env = {"base:1": {"PATH": "/bin", "APP_HOME": "/app", "APP_USER": "app"}}
    # the stage on base:1 and the one built on it see the image's ENV; "other" still does not
    assert names(lint(df, None, env)) == [
        (4, "Usage of undefined variable '$NOPE'"), (8, "Usage of undefined variable '$APP_USER'")]
    # an image env without PATH: BuildKit sets its default PATH first ("make sure that PATH is
    # always set", dockerfile2llb), so $PATH is defined, as the build expands it
    df = parse("FROM base:1\nENV P=$PATH\nENV PATH=/opt/bin:$PATH\nFROM scratch\nENV PATH=/x:$PATH\n",
               "Dockerfile")
    assert names(lint(df, None, {"base:1": {}})) == []
    assert names(lint(df, None, {"base:1": {"HOME": "/root"}})) == []
    assert names(lint(df)) == []


@pytest.mark.slow
def test_cli_check_reads_base_image_env_from_the_store(cli, tmp_path):
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM busybox:latest\nENV APP_HOME=/app APP_USER=app\n")
    cli("build", "-q", "-t", "appbase:1", str(ctx), check=True)
    (ctx / "Dockerfile").write_text(
        "FROM appbase:1\nWORKDIR $APP_HOME\nENV P=$PATH\nUSER $APP_USER\nCOPY $NOPE /x\n")
    r = cli("check", str(ctx))
    assert r.code == 0, r.output
    undefined = [line for line in r.stdout.splitlines() if "UndefinedVar" in line]
    assert undefined == [f"{ctx / 'Dockerfile'}:5:6: UndefinedVar: Usage of undefined variable '$NOPE'"]
    # the same file against an empty state directory: the base image's ENV is unknown (PATH assumed)
    empty = tmp_path / "empty-root"
    r = cli("--root", str(empty), "check", str(ctx))
    assert r.code == 0, r.output
    assert sum("UndefinedVar" in line for line in r.stdout.splitlines()) == 3
    assert not empty.exists()  # check does not create a state directory


@pytest.mark.slow
def test_path_of_a_base_image_without_one_is_the_default(cli, tmp_path):
    """busybox:latest (samples/make-busybox.sh) has no Env: the build expands $PATH to the default
    PATH, and neither the build's closing warnings nor `check` call it undefined, as BuildKit."""
    (tmp_path / "Dockerfile").write_text("FROM busybox:latest\nENV PATH=/opt/bin:$PATH\nWORKDIR $NOPE\n")
    res = cli("build", "--progress", "plain", "-t", "pathy:1", str(tmp_path), check=True)
    undefined = [line for line in res.stderr.splitlines() if "UndefinedVar" in line]
    assert undefined == [" - UndefinedVar: Usage of undefined variable '$NOPE' (line 3)"], res.stderr
    env = json.loads(cli("inspect", "pathy:1", check=True).stdout)[0]["Config"]["Env"]
    assert "PATH=/opt/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" in env
    r = cli("check", str(tmp_path))
    assert [line for line in r.stdout.splitlines() if "UndefinedVar" in line] == [
        f"{tmp_path / 'Dockerfile'}:3:9: UndefinedVar: Usage of undefined variable '$NOPE'"], r.output


def test_path_is_added_to_a_base_env_that_lacks_it(cli, tmp_path):
    """A base whose Env has entries but no PATH still gets the default one, as BuildKit appends it
    ("make sure that PATH is always set"); was `PATH=/opt/bin:` (only a missing Env got it)."""
    rootfs = tmp_path / "rootfs"
    (rootfs / "bin").mkdir(parents=True)
    cli("import", "-c", "ENV FOO=1", str(rootfs), "envbase:1", check=True)
    (tmp_path / "Dockerfile").write_text("FROM envbase:1\nENV PATH=/opt/bin:$PATH\n")
    cli("build", "-q", "-t", "pathy:2", str(tmp_path), check=True)
    env = json.loads(cli("inspect", "pathy:2", check=True).stdout)[0]["Config"]["Env"]
    assert env == ["FOO=1", "PATH=/opt/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]


def test_undefined_var_points_at_the_variable_on_its_continuation_line():
    """A variable on line 3 of a continued instruction is reported at line 3 (was 2:1)."""
    ws = [w for w in run_lint("FROM alpine\nENV A=1 \\\n    B=${NOPE}\nCOPY --chown=$U \\\n  a $SRC /d/\n")
          if w.rule == "UndefinedVar"]
    assert [(w.span.start_line, w.span.start_col, w.message) for w in ws] == [
        (3, 7, "Usage of undefined variable '$NOPE'"),
        (4, 14, "Usage of undefined variable '$U'"),
        (5, 5, "Usage of undefined variable '$SRC'")]


def test_cli_unknown_copy_from_fails_as_the_build_would(tmp_path):
    """COPY --from=nosuch names no stage and no local image: the build fails on it, so check does
    (it said "no warnings"); RUN --mount from= likewise, and an earlier stage is fine."""
    root = tmp_path / "root"
    df = tmp_path / "Dockerfile"
    df.write_text("FROM alpine AS base\nCOPY --from=nosuch /a /b\n")
    r = subprocess.run(
        [sys.executable, "-m", "pybuild", "--root", str(root), "check", str(tmp_path)],
        capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert f"ERROR: {df}:2:13: COPY --from=nosuch: no stage or local image of that name" in r.stderr
    assert "no warnings" not in r.stdout
    df.write_text("FROM alpine AS base\nRUN --mount=type=bind,from=gone,target=/x true\n")
    r = subprocess.run([sys.executable, "-m", "pybuild", "--root", str(root), "check", str(tmp_path)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert f"ERROR: {df}:2:23: RUN --mount from=gone: no stage or local image of that name" in r.stderr
    df.write_text("FROM alpine AS base\nFROM alpine\nCOPY --from=base /a /b\n")
    r = subprocess.run([sys.executable, "-m", "pybuild", "--root", str(root), "check", str(tmp_path)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "Check complete, no warnings found."
    assert not root.exists()  # check does not create a state directory


def test_cli_check_only_fails_on_sources_the_build_reads(tmp_path):
    """An unknown COPY --from in a stage the default target does not need does not fail the
    build, so check does not fail on it; RUN --security=insecure needs no --allow to be checked."""
    root = tmp_path / "root"
    (tmp_path / "Dockerfile").write_text("FROM alpine AS unused\nCOPY --from=nosuch /a /b\n"
                                         "FROM alpine\nRUN --security=insecure [\"true\"]\n")
    r = subprocess.run([sys.executable, "-m", "pybuild", "--root", str(root), "check", str(tmp_path)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "ERROR" not in r.stderr


# ---------------------------------------------------------------- the build prints them too

def test_build_lists_lint_warnings_after_the_image_and_check_error_fails_it(cli, tmp_path):
    # BuildKit: "N warnings found" closes `docker build`'s output; `# check=error=true` fails the
    # build before any step runs, nothing tagged
    import json

    (tmp_path / "Dockerfile").write_text("FROM busybox AS Build\nCMD echo hi\n")
    res = cli("build", "--progress", "plain", "-t", "linted:1", str(tmp_path), check=True)
    tail = res.stderr.splitlines()[-3:]
    assert tail == ["2 warnings found (use `pybuild check` for details):",
                    " - StageNameCasing: Stage name 'Build' should be lowercase (line 1)",
                    " - JSONArgsRecommended: JSON arguments recommended for CMD to prevent unintended behavior "
                    "related to OS signals (line 2)"], res.stderr
    res = cli("build", "--progress", "rawjson", "-t", "linted:1", str(tmp_path), check=True)
    events = [json.loads(line) for line in res.stderr.splitlines()]
    assert [(e["rule"], e["line"]) for e in events if e["type"] == "lint.warning"] == [
        ("StageNameCasing", 1), ("JSONArgsRecommended", 2)]
    (tmp_path / "Dockerfile").write_text("# check=error=true\nFROM busybox\nRUN touch /ran\nCMD echo hi\n")
    res = cli("build", "--progress", "plain", "-t", "linted:2", str(tmp_path))
    assert res.code == 1 and "ERROR: lint violation found for rules: JSONArgsRecommended" in res.stderr
    assert "Dockerfile:4:1: JSONArgsRecommended" in res.stderr and "RUN touch" not in res.stderr
    assert "linted   2" not in cli("images", check=True).stdout
    (tmp_path / "Dockerfile").write_text('FROM busybox\nCMD ["echo", "hi"]\n')
    assert "warning" not in cli("build", "--progress", "plain", str(tmp_path), check=True).stderr
