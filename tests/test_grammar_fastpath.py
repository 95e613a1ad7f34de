"""The hand-written fast path of the parser gives exactly what the lark grammar gives.

``parse(text)`` reads instruction heads and JSON arrays with a scanner (grammar/parser.py
``scan_head``, ``json_string_array``), ``parse(text, engine="lark")`` with the lark grammar
(dockerfile.lark).  Every model must be equal field for field (spans and ``original`` included),
and every error must be the same text (file:line:col, message, source line and caret).  Also pinned
here: the regex shortcuts of ``parse_words`` and ``expand_word`` against the character loops they
stand in for.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pybuild.grammar import DockerfileError, parse
from pybuild.grammar import parser as P
from pybuild.grammar.expand import ExpansionError, Lex, expand_word

from test_grammar import ERROR_CASES, INSTRUCTION_CASES

ROOT = Path(__file__).resolve().parent.parent
CORPUS = sorted(
    [*ROOT.glob("tests/data/**/*Dockerfile*"), *ROOT.glob("samples/**/Dockerfile*")],
    key=lambda p: str(p),
)


def outcome(text: str, engine: str):
    """The model, or the error's full text, of parsing ``text`` with ``engine``."""
    try:
        return parse(text, "Dockerfile", engine=engine)
    except DockerfileError as err:
        return ("error", str(err))


def assert_same(text: str) -> None:
    fast, slow = outcome(text, "fast"), outcome(text, "lark")
    assert fast == slow, text
    if not isinstance(fast, tuple):  # spans (with positions used by messages) and original texts too
        assert repr(fast) == repr(slow)


def test_corpus_exists() -> None:
    assert len(CORPUS) >= 30, CORPUS
    assert any("samples" in str(p) for p in CORPUS)


@pytest.mark.parametrize("path", CORPUS, ids=lambda p: str(p.relative_to(ROOT)))
def test_corpus_parses_the_same_both_ways(path: Path) -> None:
    with open(path, encoding="utf-8", newline="") as fh:
        assert_same(fh.read())


@pytest.mark.parametrize("case", INSTRUCTION_CASES, ids=lambda c: c[0][:40])
def test_instruction_table_parses_the_same_both_ways(case) -> None:
    assert_same("FROM scratch\n" + case[0])


@pytest.mark.parametrize("case", ERROR_CASES, ids=lambda c: c[3][:50])
def test_error_table_reports_the_same_both_ways(case) -> None:
    text = case[0]
    fast = outcome(text, "fast")
    assert isinstance(fast, tuple), "the table's inputs are all errors"
    assert fast == outcome(text, "lark")


def test_lark_engine_is_really_used_and_unknown_engine_refused(monkeypatch) -> None:
    def no_fast_path(*_args, **_kwargs):
        raise AssertionError("the fast scanner was used")

    monkeypatch.setattr(P, "scan_head", no_fast_path)
    monkeypatch.setattr(P, "_RE_FLAT_JSON_ARRAY", None)  # .match on None would raise
    df = parse('FROM a\nCMD ["x", "y"]\n', engine="lark")
    assert df.stages[0].instructions[0].command.args == ("x", "y")
    with pytest.raises(DockerfileError, match="the fast scanner was used"):
        parse("FROM a\n")
    with pytest.raises(ValueError, match="unknown parser engine"):
        parse("FROM a\n", engine="yacc")


# ---- generated instructions ---------------------------------------------------------------------

_KEYWORDS = ["FROM", "RUN", "CMD", "ENTRYPOINT", "ENV", "ARG", "LABEL", "EXPOSE", "WORKDIR", "USER",
             "COPY", "ADD", "STOPSIGNAL", "VOLUME", "SHELL", "MAINTAINER", "HEALTHCHECK", "ONBUILD",
             "RUNN", "Copy", "from", "onbuild", "healthcheck"]
_FLAG_NAMES = ["platform", "mount", "network", "security", "from", "chown", "chmod", "link", "parents",
               "exclude", "checksum", "keep-git-dir", "interval", "retries", "start-period", "bogus", ""]
_FLAG_VALUES = ["", "x", "type=cache,target=/root/.cache", '"a b"', "'q'", "a\\ b", '"open', "\\", "$X",
                "=", "1:1", "--x"]
_WORDS = ["a", "b/c", "$X", "${Y:-z}", '"q w"', "'s p'", "k=v", 'k="v w"', "=v", "k=", "AS", "as", "n1",
          "--", "--x", "-", "[", "]", '["a"]', '["a", "b"]', "[1]", '["a", 1]', '[ "a" ,\t"b" ]', "[]",
          '["\\u00e9", "\\n"]', '{"a": 1}', '["a",]', "NONE", "CMD", "<<EOF", "<<-'E'", '<<"X"', "2<<Y",
          "\\", "`", "#", "é", "\u00a0", "\t", "  ", "80/udp", "1000-2000", "\\$X", "'", '"']


_SEPARATORS = [" ", "  ", "\t", " ", " \\\n  ", " \\\n#c\n ", " \\\n\n ", "\\\n"]


@st.composite
def instruction_lines(draw, nested: bool = False) -> str:
    """Mostly well-formed instructions (each keyword's own flags, the right number of words), with
    a minority of unknown keywords, unknown flags and odd words, so both outcomes are exercised."""
    kw = draw(st.sampled_from(_KEYWORDS[:-5] if nested else _KEYWORDS))
    upper = kw.upper()
    allowed = list(P.ALLOWED_FLAGS.get(upper, ()))
    flag_names = st.sampled_from(allowed) if allowed and draw(st.integers(0, 9)) else st.sampled_from(_FLAG_NAMES)
    flags = draw(st.lists(st.tuples(flag_names, st.sampled_from(_FLAG_VALUES), st.booleans()),
                          max_size=2 if allowed else draw(st.sampled_from([0, 0, 0, 1]))))
    if upper == "ONBUILD" and not nested:
        words = [draw(instruction_lines(nested=True))]
    elif upper == "FROM" and draw(st.integers(0, 5)):
        words = [draw(st.sampled_from(["alpine", "$X", "a:1", "${Y:-z}"]))]
        if draw(st.booleans()):
            words += [draw(st.sampled_from(["AS", "as"])), draw(st.sampled_from(["n1", "b-2", "N3"]))]
    else:
        words = draw(st.lists(st.sampled_from(_WORDS), min_size=1 if draw(st.integers(0, 9)) else 0,
                              max_size=5))
    parts = [f"--{n}={v}" if with_value else f"--{n}" for n, v, with_value in flags] + words
    line = kw
    for part in parts:
        line += draw(st.sampled_from(_SEPARATORS)) + part
    return line


_BODIES = ["EOF\n", "echo hi\nEOF\n", "\tx\nE\n", "y\nX\n", "Y\n", "", "a\n\tEOF\n"]


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(instruction_lines(), min_size=1, max_size=4), st.sampled_from(_BODIES),
       st.sampled_from(["", "# escape=`\n", "# syntax=x\n# check=skip=all\n"]))
def test_generated_instructions_parse_the_same_both_ways(lines: list[str], body: str, directive: str) -> None:
    text = "\n".join(lines) + "\n"
    if "<<" in text:
        text += body  # a heredoc body (or a bad or missing one)
    assert_same(directive + "FROM scratch\n" + text)
    assert_same(directive + text)  # also before/without a FROM


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet=st.sampled_from(list(" \t\x0b\x0c\r\n-=\"'\\ab#[]`é\u00a0\u2003")), min_size=1,
               max_size=30))
def test_scan_head_matches_the_grammar_on_any_text(text: str) -> None:
    from lark.exceptions import UnexpectedInput

    try:
        expected = P.scan_head_lark(text)
    except UnexpectedInput:
        expected = None  # the fast path hands such text to lark, which reports the error
    assert P.scan_head(text) == expected


_JSON_PIECES = ['"a"', '"b c"', '"\\u00e9"', '"\\\\"', '"\\""', "1", "-2.5e3", "true", "null", "[]",
                '["x"]', '{"k": "v"}', "{}", ",", " ", "\t", "\x0b", "\n", '"', "'a'", "NaN", '"\x01"',
                "-f", "x", "] &&", "t", "]"]


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(_JSON_PIECES), max_size=6), st.booleans())
@example(pieces=["]", " "], close=False)  # "[] ": blanks after the array (lark skips them)
def test_json_arrays_read_the_same_both_ways(pieces: list[str], close: bool) -> None:
    _assert_json_read_the_same_both_ways("[" + "".join(pieces) + ("]" if close else ""))


def _assert_json_read_the_same_both_ways(text: str) -> None:
    results = []
    for engine in ("fast", "lark"):
        try:
            results.append(P.json_string_array(text, engine))
        except P.NotStringArray:
            results.append("not strings")
    assert results[0] == results[1], text


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet=st.sampled_from(list(" \t\"'\\`ab=é\u00a0")), max_size=25),
       st.sampled_from(["\\", "`"]))
def test_word_split_shortcut_matches_parse_words(text: str, escape: str) -> None:
    assert P._words(text, escape) == P.parse_words(text, escape)


_WORD_PIECES = list("$${}AB_1:-+?#%/ x'\"\\`é@") + ["$A", "${A}", "$B_1", '"$A x"', "'$A'", "${AB:-d}", '"', "$_"]


@settings(max_examples=600, deadline=None)
@given(st.lists(st.sampled_from(_WORD_PIECES), max_size=10).map("".join), st.sampled_from(["\\", "`"]))
def test_expand_word_shortcut_matches_the_lexer(word: str, escape: str) -> None:
    _assert_shortcut_matches_lexer(word, escape)


def _assert_shortcut_matches_lexer(word: str, escape: str) -> None:
    """expand_word (regex shortcut where it applies) gives what the shell lexer gives, errors too."""
    env = {"A": "1", "B_1": "x y", "AB": "", "_": "u"}

    def run(fn):
        try:
            return fn()
        except ExpansionError as exc:
            return ("error", str(exc))

    assert run(lambda: expand_word(word, env, escape=escape)) == run(lambda: Lex(escape).process(word, env)[0])


def test_common_files_parse_without_importing_lark() -> None:
    """Start-up: `pybuild parse`/`check`/`build` of an ordinary file never pays lark's import."""
    import subprocess
    import sys

    code = ("import sys, pybuild.grammar as g\n"
            "from pybuild.grammar.nodes import to_nodes\n"
            "df = g.parse(sys.stdin.read())\n"
            "to_nodes(df)\n"
            "print('lark' in sys.modules)\n")
    text = ('ARG B=a\nFROM $B AS x\nRUN --mount=type=cache,target=/c make \\\n  all\nCOPY ["a", "b"]\n'
            "COPY -- --x /y\nHEALTHCHECK --interval=5s CMD [\"true\"]\nONBUILD RUN x\nRUN <<EOF\nhi\nEOF\n"
            "RUN [ -f /x ] || touch /x\nVOLUME [/data]\n")
    out = subprocess.run([sys.executable, "-c", code], input=text, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False"]
    # a JSON array the scanner does not read itself (a non-string element) goes to lark
    out = subprocess.run([sys.executable, "-c", code], input='FROM a\nCMD ["a", 1]\n', capture_output=True,
                         text=True, check=False)
    assert out.returncode != 0
    assert "arrays must be comprised of strings only" in out.stderr


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(["RUN", "<<EOF", "<<-X", "2<<Y", "<<", "<<-", "a<<b", "cat", "\t", " ", "<<<",
                                 "é", "\u00a0", "`", "-", "x<<-  Y"]), max_size=8).map(" ".join))
def test_plain_heredoc_lines_split_like_the_shell_lexer(text: str) -> None:
    """_heredocs skips the shell lexer for a line without quotes, backslashes or "$": there it
    only splits on blanks, and a heredoc name is the text after the marker."""
    lex = Lex("\\", raw_quotes=True, raw_escapes=True, skip_unset_env=True)
    assert text.split() == lex.process(text, {})[1]
    for word in text.split():
        m = P._RE_HEREDOC.match(word)
        if m is not None and m.group(3):
            assert Lex("\\", skip_unset_env=True).process(m.group(3), {})[1] == [m.group(3)]
            assert Lex("\\", skip_unset_env=True, raw_quotes=True).process(m.group(3), {})[1] == [m.group(3)]


@pytest.mark.parametrize("text", [
    "a" * 3000 + ' "',                                      # word split: unterminated quote after a long word
    ("a 'b' " * 500) + '"',
    '"' + " ".join(["$AAAAAAAAAA"] * 40) + ' $"',           # expansion: many references, then a lone "$"
    '"' + " ".join(["${AAAAAAAAAA}"] * 40) + " ${A:-x}\"",
])
def test_shortcut_regexes_do_not_backtrack_on_near_misses(text: str) -> None:
    """Inputs that made an earlier version of the shortcut regexes backtrack exponentially (each
    would take longer than the universe's age); now they are read in linear time, same results."""
    assert P._words(text, "\\") == P.parse_words(text, "\\")
    env = {"A": "1"}

    def run(fn):
        try:
            return fn()
        except ExpansionError as exc:
            return str(exc)

    assert run(lambda: expand_word(text, env)) == run(lambda: Lex("\\").process(text, env)[0])


# ---- shortcuts added for bench/bench_parse.py (each against what it stands in for) -------------

@pytest.mark.parametrize("text", [
    "RUN x", "RUN  x", "RUN\tx", "RUN -x", "RUN --x", "RUN --x y", "RUN --x=1 -- --y z", "RUN -- ", "RUN --",
    "RUN", "RUN ", "RUN\u00a0x", "RUN \u00a0x", "ÉTÉ x", "R2 x", "RUN x  ", "RUN --a='b c' --d=\"e\\\" f\" g",
    "RUN --a='open", 'RUN --a="open', "RUN --a=\\", "  RUN --x  --  --y", "COPY --chown=1:1 --chmod=755 a b",
    "RUN --x\t--y=\"1 2\"\x0b-- z", "RUN --x--y z", "RUN x--", "RUN \\", "--x y",
])
def test_scan_head_shortcuts_match_the_grammar(text: str) -> None:
    from lark.exceptions import UnexpectedInput

    try:
        expected = P.scan_head_lark(text)
    except UnexpectedInput:
        expected = None
    assert P.scan_head(text) == expected


@pytest.mark.parametrize("text", [
    '["a"]', '[ "a" , "b" ]', '["a"]\x0c', '[\x0b"a"]', '["a",]', "[NaN]", '["a", null]', '["a"] x', "[]",
    '["\\u00e9\\n\\"", "\\ud800"]', '["a\x01"]', "['a']", '[["a"]]', '["a"] ]', "[ -f x ]",
])
def test_json_decoder_shortcut_matches_the_grammar(text: str) -> None:
    _assert_json_read_the_same_both_ways(text)


def test_json_shortcut_survives_deep_nesting() -> None:
    assert P.json_string_array("[" * 100_000, "fast") is None  # the C decoder's RecursionError


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet=st.sampled_from(list(" \t\x0b\x0c\r\x1c\x85\u00a0é/a1")), max_size=20))
def test_blank_split_shortcut_matches_buildkit_split(text: str) -> None:
    stripped = text.strip()
    assert P._ws_split(text) == (P._RE_WS.split(stripped) if stripped else [])


_OPERATOR_PIECES = [*_WORD_PIECES, "${A-x}", "${AB:-}", "${AB-y}", "${A:+p q}", "${C+z}", "${AB:+w}", "${A:-{}",
                    "${A:-'q'}", '${A:-"q"}', "${A:-$B_1}", "${A:-x}}", "${_:-u}", "${A:?e}", "${A#1}", "${A:-\\}"]


@settings(max_examples=600, deadline=None)
@given(st.lists(st.sampled_from(_OPERATOR_PIECES), max_size=8).map("".join), st.sampled_from(["\\", "`"]))
@example(word='"${A:-x} ${AB:-y} ${C+z}"', escape="\\")
def test_expand_word_operator_shortcut_matches_the_lexer(word: str, escape: str) -> None:
    _assert_shortcut_matches_lexer(word, escape)
