"""The node view (grammar/nodes.py), `pybuild parse`, and printing the model back (grammar/printer.py)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pybuild.grammar import DockerfileError, parse
from pybuild.grammar.nodes import to_nodes
from pybuild.grammar.printer import to_text

CORPUS = sorted((Path(__file__).parent / "data" / "dockerfiles").glob("*.Dockerfile"))


def _node(text: str, index: int = 1) -> dict:
    return to_nodes(parse(text))[index]


def _pick(node: dict, *keys: str) -> tuple:
    return tuple(node[k] for k in keys)


# ---------------------------------------------------------------------------------------------
# to_nodes
# ---------------------------------------------------------------------------------------------

NODE_CASES = [
    # text after "FROM a\n" -> (cmd, sub_cmd, json, flags, value)
    ("RUN echo  hi ", ("RUN", None, False, [], ["echo  hi"])),
    ('RUN ["echo", "hi"]', ("RUN", None, True, [], ["echo", "hi"])),
    ("run --mount=type=cache,target=/x --network=none make",
     ("RUN", None, False, ["--mount=type=cache,target=/x", "--network=none"], ["make"])),
    ('COPY --chown="1:1" a b /c/', ("COPY", None, False, ["--chown=1:1"], ["a", "b", "/c/"])),
    ('COPY ["a b", "/c"]', ("COPY", None, True, [], ["a b", "/c"])),
    ("COPY --link a b", ("COPY", None, False, ["--link"], ["a", "b"])),
    ("COPY -- --x /d", ("COPY", None, False, [], ["--x", "/d"])),
    ("ENV a=1 b=\"x y\"", ("ENV", None, False, [], ["a", "1", "b", '"x y"'])),
    ("ENV k some  value", ("ENV", None, False, [], ["k", "some  value"])),
    ("LABEL \"k\"='v w' x=", ("LABEL", None, False, [], ['"k"', "'v w'", "x", ""])),
    ('ARG A="x y" B', ("ARG", None, False, [], ['A="x y"', "B"])),
    ("EXPOSE 80 90/udp", ("EXPOSE", None, False, [], ["80", "90/udp"])),
    ("VOLUME /a  /b", ("VOLUME", None, False, [], ["/a", "/b"])),
    ('VOLUME ["/a b"]', ("VOLUME", None, True, [], ["/a b"])),
    ("WORKDIR /a  b", ("WORKDIR", None, False, [], ["/a  b"])),
    ("USER 1:1", ("USER", None, False, [], ["1:1"])),
    ("STOPSIGNAL SIGKILL", ("STOPSIGNAL", None, False, [], ["SIGKILL"])),
    ("MAINTAINER me <m@x>", ("MAINTAINER", None, False, [], ["me <m@x>"])),
    ('SHELL ["sh", "-c"]', ("SHELL", None, True, [], ["sh", "-c"])),
    ("HEALTHCHECK none", ("HEALTHCHECK", None, False, [], ["none"])),
    ("HEALTHCHECK --retries=3 CMD curl x", ("HEALTHCHECK", None, False, ["--retries=3"], ["CMD", "curl x"])),
    ('HEALTHCHECK CMD ["a"]', ("HEALTHCHECK", None, True, [], ["CMD", "a"])),
    ("ONBUILD COPY --from=b x y", ("ONBUILD", "COPY", False, [], ["x", "y"])),
    ('onbuild run ["a"]', ("ONBUILD", "RUN", True, [], ["a"])),
    ("CMD [not json", ("CMD", None, False, [], ["[not json"])),
]


@pytest.mark.parametrize("text, expected", NODE_CASES, ids=[c[0] for c in NODE_CASES])
def test_node_view(text, expected):
    node = _node("FROM a\n" + text)
    assert _pick(node, "cmd", "sub_cmd", "json", "flags", "value") == expected
    assert node["original"] == text
    assert (node["start_line"], node["end_line"], node["heredocs"]) == (2, 2, [])


def test_file_order_lines_and_from_value():
    text = "ARG V=1\n# c\nFROM --platform=$P img:${V} AS Build\nRUN a \\\n  # c\n  b\nFROM scratch\n"
    nodes = to_nodes(parse(text))
    assert [(n["cmd"], n["start_line"], n["end_line"]) for n in nodes] == [
        ("ARG", 1, 1), ("FROM", 3, 3), ("RUN", 4, 6), ("FROM", 7, 7)]
    assert nodes[1]["value"] == ["img:${V}", "AS", "Build"]  # as written, not lower-cased/expanded
    assert nodes[1]["flags"] == ["--platform=$P"]
    assert nodes[2]["original"] == "RUN a   b"


def test_heredoc_nodes():
    text = "FROM a\nCOPY <<A <<-'B' /x\na\nA\n\tb\n\tB\nRUN 3<<EOF cat\nx\nEOF\n"
    _, copy, run = to_nodes(parse(text))
    assert copy["value"] == ["<<A", "<<-'B'", "/x"]
    assert copy["heredocs"] == [{"name": "A", "content": "a\n", "expand": True, "chomp": False},
                                {"name": "B", "content": "\tb\n", "expand": False, "chomp": True}]
    assert copy["original"] == "COPY <<A <<-'B' /x\na\nA\n\tb\nB\n"  # BuildKit: terminator unindented
    assert (copy["start_line"], copy["end_line"]) == (2, 6)
    assert run["value"] == ["3<<EOF cat"] and run["heredocs"][0]["content"] == "x\n"


def test_escape_backtick_value():
    node = _node("# escape=`\nFROM a\nARG P=c:\\x `\n  Q=\"`\"\"\n", 1)
    assert node["value"] == ["P=c:\\x", 'Q="`""']


def test_nodes_are_json_serialisable():
    for path in CORPUS:
        for node in to_nodes(parse(path.read_text(encoding="utf-8"))):
            assert json.loads(json.dumps(node)) == node


# ---------------------------------------------------------------------------------------------
# pybuild parse
# ---------------------------------------------------------------------------------------------

def test_cli_parse_json(tmp_path, capsys):
    from pybuild.cli import main

    (tmp_path / "Dockerfile").write_text("FROM a AS b\nRUN <<EOF\nx\nEOF\nCOPY --from=b x y\n")
    assert main(["parse", "--json", str(tmp_path / "Dockerfile")]) == 0
    lines = capsys.readouterr().out.splitlines()
    nodes = [json.loads(line) for line in lines]
    assert nodes == to_nodes(parse((tmp_path / "Dockerfile").read_text()))
    assert nodes[2]["flags"] == ["--from=b"] and nodes[1]["heredocs"][0]["name"] == "EOF"


def test_cli_parse_readable_default_file(tmp_path, capsys, monkeypatch):
    from pybuild.cli import main

    (tmp_path / "Dockerfile").write_text("FROM a\nONBUILD RUN [\"x\"]\nRUN <<-'E'\n\ty\n\tE\n")
    monkeypatch.chdir(tmp_path)
    assert main(["parse"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == ['1: FROM ["a"]', '2: ONBUILD RUN json ["x"]', "3-5: RUN [\"<<-'E'\"] <<E(noexpand,chomp) 1 line(s)"]


def test_cli_parse_error_and_stdin():
    proc = subprocess.run([sys.executable, "-m", "pybuild", "parse", "-"], input="FROM a\nRUNN x\n",
                          capture_output=True, text=True)
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout == ""
    assert proc.stderr.startswith("<stdin>:2:1: unknown instruction RUNN (did you mean RUN?)\nRUNN x\n^")
    ok = subprocess.run([sys.executable, "-m", "pybuild", "parse", "--json", "-"], input="FROM a\n",
                        capture_output=True, text=True)
    assert ok.returncode == 0 and json.loads(ok.stdout)["value"] == ["a"]


def test_cli_parse_missing_file(tmp_path, capsys):
    from pybuild.cli import main

    assert main(["parse", str(tmp_path / "nope")]) == 1
    assert "No such file" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# printer: parse(to_text(parse(t))) == parse(t), modulo spans and original text
# ---------------------------------------------------------------------------------------------

def _strip(obj):
    """The model with every ``span`` and ``original`` blanked (recursively)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        changes = {}
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if f.name == "span":
                changes[f.name] = None
            elif f.name == "original":
                changes[f.name] = ""
            else:
                changes[f.name] = _strip(value)
        return dataclasses.replace(obj, **changes)
    if isinstance(obj, tuple):
        return tuple(_strip(x) for x in obj)
    return obj


def assert_round_trip(text: str) -> str:
    model = parse(text)
    printed = to_text(model)
    again = parse(printed)
    assert _strip(again) == _strip(model), printed
    assert to_text(again) == printed  # printing is a fixed point
    return printed


@pytest.mark.parametrize("path", CORPUS, ids=lambda p: p.stem)
def test_printer_round_trips_corpus(path):
    with open(path, encoding="utf-8", newline="") as fh:
        assert_round_trip(fh.read())


def test_printer_output_shape():
    printed = assert_round_trip(
        "# syntax=x\n# escape=`\nARG A\nfrom  img  as  B\nENV k some value\nCOPY --chown=\"a b\" -- --x /y\n"
        "VOLUME [\"/a b\"]\nONBUILD RUN <<EOF\nhi\nEOF\nHEALTHCHECK NONE\n")
    assert printed == ("# syntax=x\n# escape=`\nARG A\nFROM img AS b\nENV k some value\n"
                       "COPY --chown=a\\ b -- --x /y\nVOLUME [\"/a b\"]\nONBUILD RUN <<EOF\nhi\nEOF\n"
                       "HEALTHCHECK NONE\n")


# ---- hypothesis: generated valid Dockerfiles -----------------------------------------------------

_WORD_CHARS = "abcxyzABC019_-./:@$%{}+,"
_word = st.text(_WORD_CHARS, min_size=1, max_size=8).filter(lambda w: not w.startswith(("--", "[", "#")))
_quoted = st.one_of(_word, _word.map(lambda w: f'"{w} {w}"'), _word.map(lambda w: f"'{w}'"),
                    _word.map(lambda w: f"{w}\\ x"))
_name = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,6}", fullmatch=True)
_stage = st.from_regex(r"[a-z][a-z0-9_.-]{0,6}", fullmatch=True)
_json_str = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\r\\"), max_size=8)
_shell = st.lists(_quoted, min_size=1, max_size=4).map(" ".join)
_exec = st.lists(_json_str, min_size=1, max_size=3).map(lambda a: json.dumps(a))
_command = st.one_of(_shell, _exec)
_flag_val = st.text(_WORD_CHARS + " \"'=", min_size=0, max_size=6)


def _flags(names):
    return st.lists(st.tuples(st.sampled_from(names), _flag_val), max_size=2).map(
        lambda fs: "".join(f"--{n}={json.dumps(v)} " for n, v in fs))


_heredoc_body = st.lists(st.text("abc $\t'\"", max_size=6).filter(lambda s: s.strip("\t") != "EOF"),
                         max_size=3)


@st.composite
def _heredoc_run(draw):
    chomp = draw(st.booleans())
    quote = draw(st.sampled_from(["", "'", '"']))
    body = draw(_heredoc_body)
    head = draw(st.sampled_from(["RUN", "COPY", "ADD"]))
    tail = " /dst" if head != "RUN" else draw(st.sampled_from(["", " bash", " && echo"]))
    marker = f"<<{'-' if chomp else ''}{quote}EOF{quote}"
    return f"{head} {marker}{tail}\n" + "".join(line + "\n" for line in body) + ("\tEOF" if chomp else "EOF")


_instruction = st.one_of(
    st.builds(lambda f, c: f"RUN {f}{c}", _flags(["mount", "network", "security"]), _command),
    st.builds(lambda c: f"CMD {c}", _command),
    st.builds(lambda c: f"ENTRYPOINT {c}", _command),
    st.builds(lambda ps: "ENV " + " ".join(f"{k}={v}" for k, v in ps),
              st.lists(st.tuples(_name, st.one_of(st.just(""), _quoted)), min_size=1, max_size=3)),
    st.builds(lambda k, v: f"ENV {k} {v}", _name, _shell),
    st.builds(lambda ps: "LABEL " + " ".join(f"{k}={v}" for k, v in ps),
              st.lists(st.tuples(_quoted, _quoted), min_size=1, max_size=3)),
    st.builds(lambda ps: "ARG " + " ".join(k if v is None else f"{k}={v}" for k, v in ps),
              st.lists(st.tuples(_name, st.none() | _quoted), min_size=1, max_size=3)),
    st.builds(lambda ps: "EXPOSE " + " ".join(ps), st.lists(st.from_regex(r"[0-9]{1,5}(/udp|/tcp|-9)?", fullmatch=True),
                                                            min_size=1, max_size=3)),
    st.builds(lambda f, a: f"COPY {f}{' '.join(a)}", _flags(["from", "chown", "chmod", "link", "exclude"]),
              st.lists(_word, min_size=2, max_size=4)),
    st.builds(lambda f, a: f"ADD {f}{json.dumps(a)}", _flags(["checksum", "keep-git-dir"]),
              st.lists(_json_str, min_size=2, max_size=3)),
    st.builds(lambda a: "VOLUME " + " ".join(a), st.lists(_word, min_size=1, max_size=3)),
    st.builds(lambda a: "VOLUME " + json.dumps(a), st.lists(_json_str.filter(str.strip), min_size=1, max_size=3)),
    st.builds(lambda w: f"WORKDIR {w}", _shell),
    st.builds(lambda w: f"USER {w}", _word),
    st.builds(lambda w: f"STOPSIGNAL {w}", _word),
    st.builds(lambda w: f"MAINTAINER {w}", _shell),
    st.builds(lambda a: "SHELL " + json.dumps(a), st.lists(_json_str, min_size=1, max_size=3)),
    st.just("HEALTHCHECK NONE"),
    st.builds(lambda f, c: f"HEALTHCHECK {f}CMD {c}", _flags(["interval", "retries"]), _command),
    st.builds(lambda c: f"ONBUILD RUN {c}", _command),
    st.builds(lambda w: f"ONBUILD WORKDIR {w}", _word),
    _heredoc_run(),
)


@st.composite
def dockerfiles(draw):
    lines = []
    if draw(st.booleans()):
        lines.append("# escape=" + draw(st.sampled_from(["\\", "`"])))
    for _ in range(draw(st.integers(0, 2))):
        lines.append(f"ARG {draw(_name)}={draw(_word)}")
    used: set[str] = set()
    for _ in range(draw(st.integers(1, 3))):
        name = draw(_stage)
        platform = draw(st.sampled_from(["", "--platform=linux/amd64 "]))
        stage = f" AS {name}" if name not in used and draw(st.booleans()) else ""
        used.add(name)
        kw = draw(st.sampled_from(["FROM", "from"]))
        lines.append(f"{kw} {platform}{draw(_word)}{stage}")
        lines += draw(st.lists(_instruction, max_size=5))
    return "\n".join(lines) + "\n"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(dockerfiles())
def test_printer_round_trip_property(text):
    try:
        parse(text)
    except DockerfileError:  # the generator can still produce e.g. a stage named like an earlier one
        return
    assert_round_trip(text)
