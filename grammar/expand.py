"""BuildKit shell-lexer word expansion (port of moby/buildkit frontend/dockerfile/shell/lex.go).

Pure: no I/O.  ``expand_word`` returns the processed word (quotes removed, ``$VAR`` expanded,
escapes processed); ``expand_words`` additionally splits on unquoted whitespace *after* expansion.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

__all__ = ["ExpansionError", "Lex", "expand_word", "expand_words"]

_EOF = ""


class ExpansionError(ValueError):
    """A word could not be expanded (bad substitution, ``${V:?msg}``, unterminated quote...)."""


def _is_space(ch: str) -> bool:
    return ch.isspace()


_SPECIAL_PARAMS = frozenset("@*#?-$!0")


class _Words:
    __slots__ = ("word", "words", "in_word")

    def __init__(self) -> None:
        self.word = ""
        self.words: list[str] = []
        self.in_word = False

    def add_char(self, ch: str) -> None:
        if _is_space(ch):
            if self.in_word and self.word:
                self.words.append(self.word)
                self.word = ""
                self.in_word = False
        else:
            self.add_raw_char(ch)

    def add_raw_char(self, ch: str) -> None:
        self.word += ch
        self.in_word = True

    def add_string(self, s: str) -> None:
        for ch in s:
            self.add_char(ch)

    def add_raw_string(self, s: str) -> None:
        self.word += s
        self.in_word = True

    def get_words(self) -> list[str]:
        if self.word:
            self.words.append(self.word)
            self.word = ""
            self.in_word = False
        return self.words


class Lex:
    """One expansion run over one word (mirrors BuildKit's ``shell.Lex`` + ``shellWord``)."""

    def __init__(
        self,
        escape: str = "\\",
        *,
        raw_quotes: bool = False,
        raw_escapes: bool = False,
        skip_unset_env: bool = False,
        skip_process_quotes: bool = False,
    ) -> None:
        self.escape = escape
        self.raw_quotes = raw_quotes
        self.raw_escapes_default = raw_escapes
        self.skip_unset_env = skip_unset_env
        self.skip_process_quotes = skip_process_quotes
        self._src = ""
        self._pos = 0
        self._env: Mapping[str, str] = {}
        self._raw_escapes = raw_escapes

    # -- scanner -------------------------------------------------------------------------------
    def _peek(self) -> str:
        return self._src[self._pos] if self._pos < len(self._src) else _EOF

    def _next(self) -> str:
        if self._pos < len(self._src):
            ch = self._src[self._pos]
            self._pos += 1
            return ch
        return _EOF

    # -- public --------------------------------------------------------------------------------
    def process(self, word: str, env: Mapping[str, str]) -> tuple[str, list[str]]:
        self._src = word
        self._pos = 0
        self._env = env
        self._raw_escapes = self.raw_escapes_default
        try:
            return self._process_stop_on(_EOF, self._raw_escapes)
        except ExpansionError as exc:
            raise ExpansionError(f"failed to process {word!r}: {exc}") from None

    # -- internals -----------------------------------------------------------------------------
    def _process_stop_on(self, stop: str, raw_escapes: bool) -> tuple[str, list[str]]:
        result: list[str] = []
        words = _Words()
        saved = self._raw_escapes
        self._raw_escapes = raw_escapes
        try:
            while self._peek() != _EOF:
                ch = self._peek()
                if stop != _EOF and ch == stop:
                    self._next()
                    return "".join(result), words.get_words()
                if ch == "$" or (not self.skip_process_quotes and ch in "'\""):
                    if ch == "$":
                        tmp = self._process_dollar()
                        result.append(tmp)
                        words.add_string(tmp)
                    else:
                        tmp = self._process_single_quote() if ch == "'" else self._process_double_quote()
                        result.append(tmp)
                        words.add_raw_string(tmp)
                    continue
                ch = self._next()
                if ch == self.escape:
                    if self._raw_escapes:
                        words.add_raw_char(ch)
                        result.append(ch)
                    ch = self._next()
                    if ch == _EOF:
                        break
                    words.add_raw_char(ch)
                else:
                    words.add_char(ch)
                result.append(ch)
            if stop != _EOF:
                raise ExpansionError(f"unexpected end of statement while looking for matching {stop}")
            return "".join(result), words.get_words()
        finally:
            self._raw_escapes = saved

    def _process_single_quote(self) -> str:
        out: list[str] = []
        ch = self._next()
        if self.raw_quotes:
            out.append(ch)
        while True:
            ch = self._next()
            if ch == _EOF:
                raise ExpansionError("unexpected end of statement while looking for matching single-quote")
            if ch == "'":
                if self.raw_quotes:
                    out.append(ch)
                return "".join(out)
            out.append(ch)

    def _process_double_quote(self) -> str:
        out: list[str] = []
        ch = self._next()
        if self.raw_quotes:
            out.append(ch)
        while True:
            pk = self._peek()
            if pk == _EOF:
                raise ExpansionError("unexpected end of statement while looking for matching double-quote")
            if pk == '"':
                ch = self._next()
                if self.raw_quotes:
                    out.append(ch)
                return "".join(out)
            if pk == "$":
                out.append(self._process_dollar())
                continue
            ch = self._next()
            if ch == self.escape:
                if self._raw_escapes:
                    out.append(ch)
                nxt = self._peek()
                if nxt == _EOF:
                    continue
                if nxt in ('"', "$", self.escape):
                    ch = self._next()
            out.append(ch)

    def _get_env(self, name: str) -> tuple[str, bool]:
        if name in self._env:
            return self._env[name], True
        return "", False

    def _process_name(self) -> str:
        name: list[str] = []
        while self._peek() != _EOF:
            ch = self._peek()
            if not name and ch.isdecimal():
                while self._peek() != _EOF and self._peek().isdecimal():
                    name.append(self._next())
                return "".join(name)
            if not name and ch in _SPECIAL_PARAMS:
                return self._next()
            if not (ch.isalpha() or ch.isdecimal() or ch == "_"):
                break
            name.append(self._next())
        return "".join(name)

    def _process_dollar(self) -> str:
        self._next()  # '$'
        if self._peek() != "{":
            name = self._process_name()
            if name == "":
                return "$"
            value, found = self._get_env(name)
            if not found and self.skip_unset_env:
                return "$" + name
            return value

        self._next()  # '{'
        pk = self._peek()
        if pk == _EOF:
            raise ExpansionError("syntax error: missing '}'")
        if pk in "{}:":
            raise ExpansionError("syntax error: bad substitution")
        name = self._process_name()
        ch = self._next()
        chs = ch
        null_is_unset = False

        if ch == "}":
            value, found = self._get_env(name)
            if not found and self.skip_unset_env:
                return "${" + name + "}"
            return value

        if ch == ":":
            null_is_unset = True
            ch = self._next()
            chs += ch
        if ch != _EOF and (ch in "+-?#%" or chs.startswith(":")):
            raw = ch in ("#", "%")
            try:
                word, _ = self._process_stop_on("}", raw)
            except ExpansionError:
                if self._peek() == _EOF:
                    raise ExpansionError("syntax error: missing '}'") from None
                raise
            value, found = self._get_env(name)
            if self.skip_unset_env and not found:
                return "${" + name + chs + word + "}"
            if ch == "-":
                if not found or (null_is_unset and value == ""):
                    return word
                return value
            if ch == "+":
                if not found or (null_is_unset and value == ""):
                    return ""
                return word
            if ch == "?":
                if not found:
                    raise ExpansionError(f"{name}: {word or 'is not allowed to be unset'}")
                if null_is_unset and value == "":
                    raise ExpansionError(f"{name}: {word or 'is not allowed to be empty'}")
                return value
            if ch in ("%", "#"):
                greedy = False
                if word[:1] == ch:
                    greedy = True
                    word = word[1:]
                if ch == "%":
                    return _trim_suffix(word, value, greedy)
                return _trim_prefix(word, value, greedy)
            raise ExpansionError(f"unsupported modifier ({chs}) in substitution")

        if ch == "/":
            replace_all = self._peek() == "/"
            if replace_all:
                self._next()
            try:
                pattern, _ = self._process_stop_on("/", True)
            except ExpansionError:
                if self._peek() == _EOF:
                    raise ExpansionError("syntax error: missing '/' in ${}") from None
                raise
            try:
                replacement, _ = self._process_stop_on("}", True)
            except ExpansionError:
                if self._peek() == _EOF:
                    raise ExpansionError("syntax error: missing '}'") from None
                raise
            value, found = self._get_env(name)
            if self.skip_unset_env and not found:
                return "${" + name + "/" + pattern + "/" + replacement + "}"
            rx = _pattern_to_regex(pattern, greedy=True, anchored=False)
            if replace_all:
                return rx.sub(lambda _m: replacement, value)
            m = rx.search(value)
            if m is not None:
                value = value[: m.start()] + replacement + value[m.end():]
            return value

        raise ExpansionError(f"unsupported modifier ({chs}) in substitution")


def _pattern_to_regex(pattern: str, *, greedy: bool, anchored: bool) -> re.Pattern[str]:
    """Shell glob (``*``, ``?``, backslash escapes; no brackets) -> compiled regex."""
    out = ["^"] if anchored else []
    star = ".*" if greedy else ".*?"
    i, n = 0, len(pattern)
    while i < n:
        tok = pattern[i]
        i += 1
        if tok == "*":
            out.append(star)
        elif tok == "?":
            out.append(".")
        elif tok == "\\":
            nxt = pattern[i] if i < n else ""
            if nxt in ("}", "/"):
                continue
            i += 1
            if nxt not in ("*", "?", "\\"):
                raise ExpansionError(f"invalid pattern ({pattern}) in substitution: invalid escape '\\{nxt}'")
            out.append(re.escape(nxt))
        else:
            out.append(re.escape(tok))
    try:
        return re.compile("".join(out))
    except re.error as exc:  # pragma: no cover - defensive
        raise ExpansionError(f"invalid pattern ({pattern}) in substitution: {exc}") from None


def _trim_prefix(pattern: str, value: str, greedy: bool) -> str:
    m = _pattern_to_regex(pattern, greedy=greedy, anchored=True).search(value)
    return value[m.end():] if m is not None else value


def _reverse_pattern(pattern: str) -> str:
    out: list[str] = []
    i, last = 0, len(pattern) - 1
    while i <= last:
        tok = pattern[i]
        if tok == "\\" and i != last:
            out.append(tok + pattern[i + 1])
            i += 2
        else:
            out.append(tok)
            i += 1
    return "".join(reversed(out))


def _trim_suffix(pattern: str, value: str, greedy: bool) -> str:
    return _trim_prefix(_reverse_pattern(pattern), value[::-1], greedy)[::-1]


def expand_word(word: str, env: Mapping[str, str], *, escape: str = "\\") -> str:
    """Expand one Dockerfile word like BuildKit's ``ProcessWordWithMap``.

    Unset variables expand to ``""``; quotes are removed (single quotes stop expansion);
    raises :class:`ExpansionError` on bad substitutions and ``${V?msg}``.
    """
    if "$" not in word and "'" not in word and '"' not in word and escape not in word:
        return word  # nothing to expand or unquote: the lexer would return it unchanged
    if escape not in word and word.isascii():
        simple = _expand_simple(word, env)
        if simple is not None:
            return simple
    return Lex(escape).process(word, env)[0]


# The common shapes of a word, read by regex instead of the character-by-character lexer: literal
# text, '...' (kept as is), "..." holding literal text and references, and references: $NAME,
# ${NAME}, and ${NAME-word} ${NAME:-word} ${NAME+word} ${NAME:+word} with a literal word.
# Only for ASCII words without the escape character (non-ASCII letters can continue a name).
# Possessive quantifiers: "$ABC" inside quotes must not be re-read as "$A" + "BC" when the quoted
# part fails to match (that backtracking is exponential in the number of references).
_NAME = r"[A-Za-z_][A-Za-z0-9_]*+"


def _ref(group: str) -> str:
    """A reference, with its name, name, operator and word in groups if ``group`` is ``"("``
    (``"(?:"``: no groups).  The word is literal: the lexer reads quotes, "$" and the escape."""
    return rf"""\$(?:{group}{_NAME})|\{{{group}{_NAME})(?:{group}:?[-+]){group}[^'"$}}]*+))?\}})"""


_RE_SIMPLE_REF = re.compile(_ref("("))
_RE_SIMPLE_TOKEN = re.compile(  # groups: the token; literal, single, double; then those of _ref
    rf"""(([^'"$]++)|'([^']*+)'|"((?:[^"$]++|{_ref("(?:")})*+)"|{_ref("(")})"""
)


def _lookup(env: Mapping[str, str], name: str, op: str | None = None, word: str = "") -> str:
    """The value of a reference (``op`` is the operator of ``${NAME<op>word}``, if any)."""
    found = name in env
    value = env[name] if found else ""
    if not op:
        return value
    is_set = found and (value != "" or op[0] != ":")  # ":" makes an empty value count as unset
    if op[-1] == "-":
        return value if is_set else word
    return word if is_set else ""


def _expand_simple(word: str, env: Mapping[str, str]) -> str | None:
    """``word`` expanded, or ``None`` if it has a shape only the lexer reads (another operator
    such as ``${V:?x}`` or ``${V#x}``, ``$1``, ``$@``, a lone ``$``, an unterminated quote)."""
    out: list[str] = []
    read = 0
    for token, literal, single, double, name1, name2, op, default in _RE_SIMPLE_TOKEN.findall(word):
        read += len(token)
        first = token[0]
        if first == "$":
            out.append(_lookup(env, name1 or name2, op, default))
        elif first == "'":
            out.append(single)
        elif first == '"':
            out.append(_RE_SIMPLE_REF.sub(lambda r: _lookup(env, r[1] or r[2], r[3], r[4]), double)
                       if "$" in double else double)
        else:
            out.append(literal)
    # findall skips the characters where no token starts: all of ``word`` read means none did
    return "".join(out) if read == len(word) else None


def expand_words(text: str, env: Mapping[str, str], *, escape: str = "\\") -> list[str]:
    """Expand ``text`` and split it on unquoted whitespace (BuildKit ``ProcessWordsWithMap``).

    Whitespace produced by a ``$VAR`` expansion splits too; quoted whitespace does not;
    empty words (e.g. ``""``) are dropped.
    """
    return Lex(escape).process(text, env)[1]
