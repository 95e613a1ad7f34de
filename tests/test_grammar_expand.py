"""pybuild.grammar.expand: BuildKit shell-lexer semantics (frontend/dockerfile/shell/lex.go)."""

from __future__ import annotations

import pytest

from pybuild.grammar import ExpansionError, expand_word, expand_words

ENV = {
    "SET": "value",
    "EMPTY": "",
    "SPACED": "a  b",
    "PATH_": "/usr/local/bin.tar.gz",
    "REPEAT": "aXbXc",
    "N": "1",
}


# (word, expected) with ENV above; UNSET is never set.
EXPAND_CASES = [
    # plain references
    ("$SET", "value"),
    ("${SET}", "value"),
    ("x$SET/y", "xvalue/y"),
    ("$UNSET", ""),
    ("${UNSET}", ""),
    ("$EMPTY", ""),
    ("$SET$N", "value1"),
    ("${SET}_x", "value_x"),
    ("$SET_x", ""),  # name is SET_x, unset
    ("$", "$"),
    ("a$", "a$"),
    ("$/x", "$/x"),
    ("$1", ""),
    # ${V:-w} / ${V-w}
    ("${SET:-word}", "value"),
    ("${EMPTY:-word}", "word"),
    ("${UNSET:-word}", "word"),
    ("${SET-word}", "value"),
    ("${EMPTY-word}", ""),
    ("${UNSET-word}", "word"),
    ("${UNSET:-$SET}", "value"),
    ("${UNSET:-${N}x}", "1x"),
    ("${UNSET:-}", ""),
    # ${V:+w} / ${V+w}
    ("${SET:+word}", "word"),
    ("${EMPTY:+word}", ""),
    ("${UNSET:+word}", ""),
    ("${SET+word}", "word"),
    ("${EMPTY+word}", "word"),
    ("${UNSET+word}", ""),
    # ${V:?m} / ${V?m} when no error
    ("${SET:?boom}", "value"),
    ("${SET?boom}", "value"),
    ("${EMPTY?boom}", ""),
    # prefix / suffix removal (glob patterns, shortest / longest)
    ("${PATH_#*/}", "usr/local/bin.tar.gz"),
    ("${PATH_##*/}", "bin.tar.gz"),
    ("${PATH_%.*}", "/usr/local/bin.tar"),
    ("${PATH_%%.*}", "/usr/local/bin"),
    ("${PATH_#/usr}", "/local/bin.tar.gz"),
    ("${PATH_%.gz}", "/usr/local/bin.tar"),
    ("${PATH_#nomatch}", "/usr/local/bin.tar.gz"),
    ("${PATH_%?z}", "/usr/local/bin.tar."),
    ("${UNSET#x}", ""),
    ("${EMPTY%%*}", ""),
    ("${REPEAT#*X}", "bXc"),
    ("${REPEAT##*X}", "c"),
    ("${REPEAT%X*}", "aXb"),
    ("${REPEAT%%X*}", "a"),
    ("${SET:#val}", "ue"),
    ("${PATH_#\\*}", "/usr/local/bin.tar.gz"),
    # substitution
    ("${REPEAT/X/-}", "a-bXc"),
    ("${REPEAT//X/-}", "a-b-c"),
    ("${REPEAT/X*/-}", "a-"),
    ("${REPEAT//nomatch/-}", "aXbXc"),
    ("${REPEAT/X/}", "abXc"),
    ("${UNSET/x/y}", ""),
    ("${PATH_//\\//_}", "_usr_local_bin.tar.gz"),
    ("${REPEAT/X/$N}", "a1bXc"),
    # quotes
    ("'$SET'", "$SET"),
    ('"$SET"', "value"),
    ('"${SET} x"', "value x"),
    ("'a b'", "a b"),
    ('"a b"', "a b"),
    ("a'b'c", "abc"),
    ('"it\'s"', "it's"),
    ("'say \"hi\"'", 'say "hi"'),
    ('""', ""),
    ("''", ""),
    # escapes
    ("\\$SET", "$SET"),
    ("a\\ b", "a b"),
    ("\\\\", "\\"),
    ("a\\", "a"),
    ('"\\$SET"', "$SET"),
    ('"a\\"b"', 'a"b'),
    ('"a\\nb"', "a\\nb"),
    ('"\\\\"', "\\"),
    ("'\\$SET'", "\\$SET"),
    ("\\'$SET\\'", "'value'"),
    # whitespace kept by expand_word
    ("a  b", "a  b"),
    ("$SPACED", "a  b"),
    # unicode names
    ("${ÉTÉ:-x}", "x"),
]


@pytest.mark.parametrize(("word", "expected"), EXPAND_CASES)
def test_expand_word(word: str, expected: str) -> None:
    assert expand_word(word, ENV) == expected


@pytest.mark.parametrize(
    ("word", "expected"),
    [
        ("`$SET", "$SET"),
        ("a` b", "a b"),
        ("c:\\path", "c:\\path"),
        ('"`"x"', '"x'),
        ('"a\\b"', "a\\b"),
        ("${UNSET:-`}}", "}"),
    ],
)
def test_expand_word_backtick_escape(word: str, expected: str) -> None:
    assert expand_word(word, ENV, escape="`") == expected


@pytest.mark.parametrize(
    ("word", "message"),
    [
        ("${UNSET:?boom}", "UNSET: boom"),
        ("${UNSET?boom}", "UNSET: boom"),
        ("${EMPTY:?boom}", "EMPTY: boom"),
        ("${UNSET?}", "UNSET: is not allowed to be unset"),
        ("${EMPTY:?}", "EMPTY: is not allowed to be empty"),
        ("${UNSET:?$SET here}", "UNSET: value here"),
        ("${", "missing '}'"),
        ("${SET", "unsupported modifier"),
        ("${SET:-x", "missing '}'"),
        ("${}", "bad substitution"),
        ("${:x}", "bad substitution"),
        ("${{x}", "bad substitution"),
        ("${SET:x}", "unsupported modifier (:x)"),
        ("${SET^x}", "unsupported modifier (^)"),
        ("${SET/x", "missing '/'"),
        ("${SET/x/y", "missing '}'"),
        ("'open", "single-quote"),
        ('"open', "double-quote"),
        ("${SET#\\x}", "invalid escape"),
    ],
)
def test_expand_word_errors(word: str, message: str) -> None:
    with pytest.raises(ExpansionError) as info:
        expand_word(word, ENV)
    assert message in str(info.value)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a b  c", ["a", "b", "c"]),
        ("  a  ", ["a"]),
        ("", []),
        ("$SPACED", ["a", "b"]),  # unquoted expansion splits
        ('"$SPACED"', ["a  b"]),  # quoted expansion does not
        ("'x y' z", ["x y", "z"]),
        ('a"b c"d e', ["ab cd", "e"]),
        ('"" x', ["x"]),  # empty words are dropped, as BuildKit does
        ("a\\ b c", ["a b", "c"]),
        ("$UNSET x", ["x"]),
        ("${UNSET:-p q} r", ["p", "q", "r"]),
        ("$SET/*.txt /dst/", ["value/*.txt", "/dst/"]),
        ("8080/tcp $N", ["8080/tcp", "1"]),
        ("a\tb\nc", ["a", "b", "c"]),
    ],
)
def test_expand_words(text: str, expected: list[str]) -> None:
    assert expand_words(text, ENV) == expected


def test_expand_word_env_is_a_mapping_not_mutated() -> None:
    env = {"A": "1"}
    assert expand_word("${A}${B:-2}", env) == "12"
    assert env == {"A": "1"}


def test_env_values_from_parser_expand_like_buildkit() -> None:
    from pybuild.grammar import parse

    df = parse('FROM a\nENV A="x y" B=\'$A\' C=$A\\ z D="${A:-no}"\n')
    before: dict[str, str] = {}
    pairs = df.stages[0].instructions[0].pairs  # type: ignore[attr-defined]
    # BuildKit expands every pair of one ENV against the env *before* the instruction
    env = {key: expand_word(raw, before) for key, raw in pairs}
    assert env == {"A": "x y", "B": "$A", "C": " z", "D": "no"}


def test_fast_path_for_plain_words_agrees_with_the_lexer():
    """Words without $, quotes or the escape char skip the lexer; the result must be identical."""
    import random
    import string

    from pybuild.grammar.expand import Lex

    rng = random.Random(7)
    chars = string.ascii_letters + " \t/.-_:=@,{}()*?[]~#%!&;|<>"
    for _ in range(3000):
        w = "".join(rng.choice(chars) for _ in range(rng.randint(0, 12)))
        assert expand_word(w, {}) == Lex("\\").process(w, {})[0] == w
        assert expand_word(w, {}, escape="`") == w
