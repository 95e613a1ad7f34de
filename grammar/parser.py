"""Dockerfile text -> :class:`pybuild.grammar.ast.Dockerfile`.

Pipeline: :class:`~pybuild.grammar.lexer.LineReader` (directives, comments, continuations, heredoc
bodies) -> the instruction head (keyword, ``--flags``, rest) and JSON arrays -> per-instruction
argument splitting that mirrors BuildKit's parser (parseWords, whitespace split, "maybe JSON") ->
frozen dataclasses.  Words are never expanded here.

The head and JSON arrays have two readers that give the same result: the lark LALR grammar
``dockerfile.lark`` (the specification) and a hand-written scanner built from the same token
regexes (the default, ~20x faster and without lark's import cost).  The scanner hands anything it
does not recognise (a JSON array that is not a flat list of strings, a head it cannot split) to
lark, so it never decides a case lark would decide differently; ``parse(..., engine="lark")``
forces the lark path and ``tests/test_grammar_fastpath.py`` compares both.
"""

from __future__ import annotations

import gc
import json
import re
from pathlib import Path
from typing import Any, Callable

from . import ast as A
from .errors import DockerfileError
from .lexer import LineReader, LogicalLine

__all__ = ["parse", "ALLOWED_FLAGS", "KEYWORDS", "ENGINES"]

KEYWORDS = tuple(A.INSTRUCTION_CLASSES)
ENGINES = ("fast", "lark")

ALLOWED_FLAGS: dict[str, tuple[str, ...]] = {
    "FROM": ("platform",),
    "RUN": ("mount", "network", "security", "device"),
    "COPY": ("from", "chown", "chmod", "link", "parents", "exclude"),
    "ADD": ("chown", "chmod", "link", "keep-git-dir", "checksum", "exclude", "unpack"),
    "HEALTHCHECK": ("interval", "timeout", "start-period", "start-interval", "retries"),
}

_NOT_STRING_ARRAY = "when using JSON array syntax, arrays must be comprised of strings only"
_RE_WS = re.compile(r"[\t\v\f\r ]+")
_RE_STAGE_NAME = re.compile(r"[a-z][a-z0-9\-_.]*\Z")
_RE_HEREDOC = re.compile(r"(\d*)<<(-?)[\t\n\f\r ]*([^<]*)\Z", re.DOTALL)  # BuildKit reHeredoc
_HEREDOC_KEYWORDS = ("RUN", "COPY", "ADD")
_ONBUILD_FORBIDDEN = ("ONBUILD", "FROM", "MAINTAINER")

# ---- the fast scanner: the terminals of dockerfile.lark, applied by hand ------------------------
# (keep these in step with the grammar file; tests/test_grammar_fastpath.py checks both agree)
_BLANK = r"[ \t\n\r\f\v]"
# FLAG as in the grammar, with possessive runs: the alternatives start with different characters,
# so the regex reads a flag in one way only and never needs to backtrack
_FLAG = r"""--(?:[^ \t\n\r\f\v"'\\]++|\\[\s\S]?|"(?:[^"\\]++|\\[\s\S]?)*+(?:"|\Z)|'(?:[^'\\]++|\\[\s\S]?)*+(?:'|\Z))++"""
_RE_BLANKS_FLAG = re.compile(rf"{_BLANK}++({_FLAG})")
# KEYWORD, then FLAGs each after blanks (group 2), then blanks and an END_FLAGS "--"; the rest of
# the line is what follows the match.  Possessive: each part is read once, as the grammar's lexer
# reads its terminals (a FLAG is never shortened to let something else match).
_RE_HEAD = re.compile(
    rf"{_BLANK}*+([^ \t\n\r\f\v]++)((?:{_BLANK}++{_FLAG})*+){_BLANK}*+(?:--(?:{_BLANK}++|\Z))?"
)
_NOT_PLAIN_REST_START = " \t\n\r\f\v-"  # and "" (no rest, or no space at all): see scan_head
_JSON_STRING = r'"(?:[^"\\\x00-\x1f]|\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4}))*"'
_RE_JSON_STRING = re.compile(_JSON_STRING)
_RE_FLAT_JSON_ARRAY = re.compile(
    rf"\[{_BLANK}*(?:{_JSON_STRING}(?:{_BLANK}*,{_BLANK}*{_JSON_STRING})*{_BLANK}*)?\]{_BLANK}*\Z"
)
# what any JSON array matches: a value's first character after "[", and "]" at the end, blanks
# aside (lark is only asked about text that passes this)
_RE_COULD_BE_JSON_ARRAY = re.compile(rf"\[{_BLANK}*(?=[\"\-0-9tfn\[{{\]])[\s\S]*\]{_BLANK}*\Z")

# (keyword, keyword offset, [(flag word as written, offset)], rest of the line, rest offset)
Head = tuple[str, int, list[tuple[str, int]], str, int]

_LARK: Any = None
_JSON_DECODER = json.JSONDecoder()


def _lark() -> Any:
    """The LALR parser, built on first use (lark's own cache makes later processes fast)."""
    global _LARK
    if _LARK is None:
        from lark import Lark

        grammar = (Path(__file__).with_name("dockerfile.lark")).read_text(encoding="utf-8")
        _LARK = Lark(grammar, parser="lalr", start=["instruction", "json_array"], cache=True)
    return _LARK


def scan_head(sub: str) -> Head | None:
    """Split one instruction into keyword, flags and rest like the grammar's ``instruction`` rule.

    Offsets are into ``sub``; the rest is returned as written (trailing blanks included) and its
    offset is ``len(sub)`` when there is none.  ``None`` when the text has no keyword at all (the
    caller lets lark report it).
    """
    # The most common case by string methods (about three times as fast as the regex below): a
    # keyword of letters, one space, and a rest that starts with neither a blank nor a "-".
    kw, _, rest = sub.partition(" ")
    if kw.isalpha() and rest[:1] not in _NOT_PLAIN_REST_START:
        return kw, 0, [], rest, len(kw) + 1
    m = _RE_HEAD.match(sub)
    if m is None:
        return None
    flags: list[tuple[str, int]] = []
    at, end = m.span(2)
    if at != end:
        for word in _RE_BLANKS_FLAG.findall(sub, at, end):
            at = sub.find(word, at)  # only blanks before it
            flags.append((word, at))
            at += len(word)
    rest = m.end()
    return m.group(1), m.start(1), flags, sub[rest:], rest


def scan_head_lark(sub: str) -> Head:
    """:func:`scan_head` by the lark grammar; raises lark's ``UnexpectedInput`` on a syntax error."""
    tree = _lark().parse(sub, start="instruction")
    kw_tok = tree.children[0]
    flags: list[tuple[str, int]] = []
    rest, rest_start = "", len(sub)
    for child in tree.children[1:]:
        if child is None:
            continue
        if hasattr(child, "children"):  # flag subtree
            tok = child.children[0]
            flags.append((tok.value, tok.start_pos))
        elif child.type in ("REST", "REST_ANY"):
            rest, rest_start = child.value, child.start_pos
    return kw_tok.value, kw_tok.start_pos, flags, rest, rest_start


class NotStringArray(ValueError):
    """A JSON array with a value that is not a string (BuildKit refuses it, no shell-form fallback)."""


def json_string_array(rest: str, engine: str = "fast") -> tuple[str, ...] | None:
    """The strings of ``rest`` if it is a JSON array (exec form), ``None`` if it is not (shell form).

    Raises :class:`NotStringArray` for valid JSON with a non-string element.
    """
    if not rest.startswith("["):
        return None
    if engine == "fast":
        # The C JSON decoder first: when it reads all of ``rest`` as a list of strings, that is the
        # flat string array the grammar reads, with the same values (its strings and escapes are the
        # grammar's STRING, its blanks " \t\n\r" a subset of the grammar's).  Anything else takes
        # the regex route below, which also knows the grammar's "\f" and "\v" blanks.
        try:
            value, end = _JSON_DECODER.raw_decode(rest)
        except (ValueError, RecursionError):
            value, end = None, 0
        if end == len(rest) and type(value) is list and all(type(v) is str for v in value):
            return tuple(value)
        if _RE_FLAT_JSON_ARRAY.match(rest) is not None:
            return tuple(
                tok[1:-1] if "\\" not in tok else json.loads(tok) for tok in _RE_JSON_STRING.findall(rest)
            )
        if _RE_COULD_BE_JSON_ARRAY.match(rest) is None:
            return None  # e.g. the shell test ``[ -f x ] && ...``: no JSON array reads like that
    from lark.exceptions import LarkError

    try:
        tree = _lark().parse(rest, start="json_array")
    except LarkError:
        return None
    args: list[str] = []
    for value in tree.children:
        if value is None:  # "[]"
            continue
        tok = value.children[0]
        if getattr(tok, "type", None) != "STRING":
            raise NotStringArray(_NOT_STRING_ARRAY)
        args.append(json.loads(tok.value))
    return tuple(args)


# ---- BuildKit word splitting ------------------------------------------------------------------

def _unquote_flag(word: str) -> str:
    """Quote/backslash processing of one ``--flag`` word (BuildKit ``extractBuilderFlags``)."""
    out: list[str] = []
    quote = ""
    i, n = 0, len(word)
    while i < n:
        ch = word[i]
        if not quote and ch in "'\"":
            quote = ch
        elif quote and ch == quote:
            quote = ""
        elif ch == "\\":
            if i + 1 < n:
                i += 1
                out.append(word[i])
        else:
            out.append(ch)
        i += 1
    return "".join(out)


def parse_words(rest: str, escape: str) -> list[str]:
    """BuildKit ``parseWords``: split on whitespace, keeping quotes and escapes in the words."""
    words: list[str] = []
    word = ""
    in_word = in_quote = False
    quote = ""
    blank_ok = False
    i, n = 0, len(rest)
    while i <= n:
        ch = rest[i] if i < n else ""
        if not in_word and not in_quote:
            if i == n:
                break
            if ch.isspace():
                i += 1
                continue
            in_word = True
        if i == n:
            if blank_ok or word:
                words.append(word)
            break
        if in_word:
            if ch.isspace():
                in_word = False
                if blank_ok or word:
                    words.append(word)
                word = ""
                blank_ok = False
                i += 1
                continue
            if ch in "'\"":
                quote = ch
                blank_ok = True
                in_word, in_quote = False, True
            if ch == escape:
                if i + 1 == n:
                    i += 1
                    continue
                word += ch
                i += 1
                ch = rest[i]
            word += ch
            i += 1
            continue
        # in quote
        if ch == quote:
            in_word, in_quote = True, False
        if ch == escape and quote != "'":
            if i + 1 == n:
                in_word, in_quote = True, False
                i += 1
                continue
            word += ch
            i += 1
            ch = rest[i]
        word += ch
        i += 1
    return words


def _ws_split(rest: str) -> list[str]:
    """BuildKit's split on blanks after trimming (``[\\t\\v\\f\\r ]``, not Unicode spaces)."""
    if rest.isascii() and rest.isprintable():  # no blank but " ": str.split() splits alike, faster
        return rest.split()
    rest = rest.strip()
    return _RE_WS.split(rest) if rest else []


# ---- instruction construction -----------------------------------------------------------------

class _Ctx:
    """The logical line being turned into an instruction (shared by an ONBUILD and its trigger).

    One per parse: the parser moves it on to each line (``ll``, and ``end_line`` that heredoc
    bodies and an ONBUILD's trigger extend), cheaper than a new one per line."""

    __slots__ = ("reader", "ll", "end_line", "engine")

    def __init__(self, reader: LineReader, engine: str) -> None:
        self.reader = reader
        self.engine = engine

    def error(self, offset: int, message: str) -> DockerfileError:
        line, col = self.ll.position(offset)
        return self.reader.error(line, col, message)


def _did_you_mean(word: str, choices: tuple[str, ...], fmt: Callable[[str], str] = str) -> str:
    import difflib  # only on the error path: keeps it out of the start-up time

    match = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f" (did you mean {fmt(match[0])}?)" if match else ""


def _parse_json_array(rest: str, ctx: _Ctx, offset: int) -> tuple[str, ...] | None:
    """Exec form: a tuple of strings, ``None`` if ``rest`` is not a JSON array (-> shell form)."""
    if rest[:1] != "[":  # the shell form, at once (as json_string_array would, a call later)
        return None
    try:
        return json_string_array(rest, ctx.engine)
    except NotStringArray:
        raise ctx.error(offset, _NOT_STRING_ARRAY) from None


def _maybe_json(rest: str, ctx: _Ctx, offset: int) -> A.Command | None:
    if rest == "":
        return None
    args = _parse_json_array(rest, ctx, offset)
    return A.ExecForm(args) if args is not None else A.ShellForm(rest)


def _maybe_json_list(rest: str, ctx: _Ctx, offset: int) -> tuple[tuple[str, ...], bool]:
    args = _parse_json_array(rest, ctx, offset)
    if args is not None:
        return args, True
    return tuple(_ws_split(rest)), False


# A word: runs of non-blanks and quoted strings (possessive: the alternatives start with different
# characters, so there is one way to read a word and no backtracking).  A quote that does not pair
# up matches on its own, as a one-character "word" no real word can be.
_RE_QUOTED_WORD_OR_QUOTE = re.compile(r"""(?:[^\s"']++|"[^"]*+"|'[^']*+')++|["']""")


def _words(rest: str, escape: str) -> list[str]:
    """:func:`parse_words`, by regex when ``rest`` has no escape character and its quotes pair up.

    Then a word is a run of non-blanks and quoted strings (quotes kept), as parseWords splits it.
    """
    if escape in rest:
        return parse_words(rest, escape)
    if "'" not in rest and '"' not in rest:
        return rest.split()
    words = _RE_QUOTED_WORD_OR_QUOTE.findall(rest)
    if '"' in words or "'" in words:  # an unterminated quote
        return parse_words(rest, escape)
    return words


def _name_vals(rest: str, kw: str, ctx: _Ctx, kw_off: int, escape: str,
               rest_off: int | None = None) -> tuple[tuple[str, str], ...]:
    words = _words(rest, escape)
    if not words:
        raise ctx.error(kw_off, f"{kw} requires at least one argument")
    if "=" not in words[0]:
        parts = _RE_WS.split(rest, maxsplit=1)
        if len(parts) < 2 or parts[1] == "":
            raise ctx.error(kw_off, f"{kw} must have two arguments")
        pairs = [(parts[0], parts[1])]
    else:
        pairs = []
        at = 0  # where the next word is looked for in ``rest``: errors point at the word itself
        for word in words:
            found = rest.find(word, at)
            if found >= 0:
                at = found + len(word)
            if "=" not in word:
                where = rest_off + found if rest_off is not None and found >= 0 else kw_off
                raise ctx.error(where, f"Syntax error - can't find = in {word!r}. Must be of the form: name=value")
            key, value = word.split("=", 1)
            pairs.append((key, value))
    for key, _ in pairs:
        if key == "":
            raise ctx.error(kw_off, f"{kw} names can not be blank")
    return tuple(pairs)


def _heredocs(text: str, ctx: _Ctx, kw_off: int, text_off: int) -> tuple[A.Heredoc, ...]:
    """BuildKit ``heredocsFromLine`` + reading each body from the following lines."""
    # Without quotes, backslashes or "$" the shell lexer below only splits on blanks (and is not
    # even imported: an import statement costs microseconds, each time).
    plain = "'" not in text and '"' not in text and "\\" not in text and "$" not in text
    if plain:
        words = text.split()
    else:
        from .expand import ExpansionError, Lex

        try:
            # SkipUnsetEnv as in BuildKit: ``<<$EOF`` is a heredoc named ``$EOF``
            words = Lex("\\", raw_quotes=True, raw_escapes=True, skip_unset_env=True).process(text, {})[1]
        except ExpansionError:
            return ()
    docs: list[A.Heredoc] = []
    for word in words:
        m = _RE_HEREDOC.match(word)
        if m is None or m.group(3) == "":
            continue
        rest = m.group(3)
        if plain:
            cooked = raw = [rest]
        else:
            try:
                cooked = Lex("\\", skip_unset_env=True).process(rest, {})[1]
                raw = Lex("\\", skip_unset_env=True, raw_quotes=True).process(rest, {})[1]
            except ExpansionError as exc:
                raise ctx.error(kw_off, f"invalid heredoc {word!r}: {exc}") from None
        if len(cooked) != 1 or len(raw) != 1:
            continue
        name = cooked[0]
        quotes = lambda s: s.count("'") + s.count('"')  # noqa: E731
        body = ctx.reader.read_heredoc(name, m.group(2) == "-")
        if body is None:
            marker = text.find(word)
            raise ctx.error(text_off + marker if marker >= 0 else kw_off, f"unterminated heredoc {word}")
        content, end = body
        ctx.end_line = end
        docs.append(A.Heredoc(
            name=name, content=content, expand=quotes(name) == quotes(raw[0]),
            chomp=m.group(2) == "-", file_descriptor=int(m.group(1)) if m.group(1) else None,
        ))
    return tuple(docs)


def _lark_head(sub: str, base: int, ctx: _Ctx) -> Head:
    """:func:`scan_head_lark` with lark's errors turned into ours."""
    from lark.exceptions import LarkError, UnexpectedInput

    try:
        return scan_head_lark(sub)
    except UnexpectedInput as exc:
        raise ctx.error(base + (exc.pos_in_stream or 0), "syntax error") from None
    except LarkError:  # pragma: no cover - defensive
        raise ctx.error(base, "syntax error") from None


_SINGLE_WORD_FIELD = {"WORKDIR": "path", "USER": "user", "STOPSIGNAL": "signal", "MAINTAINER": "name"}


def _ending(span: A.SourceSpan, end_line: int) -> A.SourceSpan:
    """``span`` ending at ``end_line`` (after heredoc bodies, an ONBUILD's trigger)."""
    return A.SourceSpan(span.file, span.start_line, end_line, span.start_col, span.empty_continuation_lines,
                        span.segments, span.origin, span.flag_words, span.args_offset)


def _instruction(text: str, base: int, ctx: _Ctx) -> A.Instruction:
    """Parse one instruction starting at offset ``base`` of the logical line ``text``."""
    sub = text[base:] if base else text
    head = scan_head(sub) if ctx.engine == "fast" else None
    kw_raw, kw_start, raw_flags, rest, rest_start = head if head is not None else _lark_head(sub, base, ctx)
    kw_off = base + kw_start
    kw = kw_raw.upper()
    cls = A.INSTRUCTION_CLASSES.get(kw)
    if cls is None:
        raise ctx.error(kw_off, f"unknown instruction {kw_raw}{_did_you_mean(kw, KEYWORDS)}")

    flags: tuple[tuple[str, str | None], ...] = ()
    if raw_flags:
        allowed = ALLOWED_FLAGS.get(kw, ())
        parsed: list[tuple[str, str | None]] = []
        for raw, start in raw_flags:
            quoted = "'" in raw or '"' in raw or "\\" in raw
            word = _unquote_flag(raw)[2:] if quoted else raw[2:]
            name, eq, value = word.partition("=")
            if name not in allowed:
                hint = _did_you_mean(name, allowed, lambda s: "--" + s)
                raise ctx.error(base + start, f"unknown flag --{name} for {kw}{hint}")
            parsed.append((name, value if eq else None))
        flags = tuple(parsed)
    rest = rest.rstrip()
    rest_off = base + rest_start

    ll = ctx.ll
    line, col = ll.position(kw_off)
    # BuildKit keeps trailing blanks in Node.Original (only leading ones are trimmed)
    original = sub.lstrip()
    # where the parts of ``original`` are in the file, for errors about one flag or argument; the
    # head's offsets are into ``sub``, which is ``original`` but when the logical line starts with
    # blanks (its first line held nothing but the escape character)
    flag_words = tuple(raw_flags) if raw_flags else ()
    args_offset = rest_start
    if kw_start:
        flag_words = tuple((word, start - kw_start) for word, start in flag_words)
        args_offset -= kw_start
    span = A.SourceSpan(ctx.reader.filename, line, ctx.end_line, col, ll.empty_continuation_lines, ll.segments,
                        kw_off, flag_words, args_offset)

    if kw == "RUN":
        command = _maybe_json(rest, ctx, rest_off)
        if command is None:
            raise ctx.error(kw_off, "RUN requires at least one argument")
        docs: tuple[A.Heredoc, ...] = ()
        if "<<" in rest and type(command) is A.ShellForm:
            docs = _heredocs(rest, ctx, kw_off, rest_off)
            span = _ending(span, ctx.end_line)
        return A.Run(span=span, original=original, flags=flags, command=command, heredocs=docs)

    if kw in ("COPY", "ADD"):
        args, is_json = _maybe_json_list(rest, ctx, rest_off)
        if len(args) < 2:
            raise ctx.error(kw_off, f"{kw} requires at least two arguments (sources and a destination)")
        docs = ()
        if not is_json and "<<" in rest:
            docs = _heredocs(rest, ctx, kw_off, rest_off)
            span = _ending(span, ctx.end_line)
        return cls(span=span, original=original, flags=flags,  # type: ignore[call-arg]
                   sources=tuple(args[:-1]), dest=args[-1], heredocs=docs, json_form=is_json)

    if kw in ("ENV", "LABEL"):
        pairs = _name_vals(rest, kw, ctx, kw_off, ctx.reader.escape, rest_off)
        return cls(span=span, original=original, flags=flags, pairs=pairs)  # type: ignore[call-arg]

    field = _SINGLE_WORD_FIELD.get(kw)
    if field is not None:  # WORKDIR USER STOPSIGNAL MAINTAINER: the rest of the line
        if rest == "":
            raise ctx.error(kw_off, f"{kw} requires exactly one argument")
        return cls(span=span, original=original, flags=flags, **{field: rest})

    if kw == "FROM":
        args = _ws_split(rest)
        if len(args) not in (1, 3):
            raise ctx.error(kw_off, "FROM requires either one or three arguments")
        name = None
        if len(args) == 3:
            if args[1].lower() != "as":
                raise ctx.error(kw_off, 'when using FROM with three arguments, the second one must be "AS"')
            name = args[2].lower()
            if not _RE_STAGE_NAME.match(name):
                raise ctx.error(rest_off + rest.rfind(args[2]),
                                f"invalid name for build stage: {args[2]!r}, name can't start with a number "
                                "or contain symbols")
        platform = None
        for key, value in flags:
            if key == "platform":
                platform = value
        return A.From(span=span, original=original, flags=flags, image=args[0], stage_name=name,
                      platform=platform)

    if kw in ("CMD", "ENTRYPOINT"):
        command = _maybe_json(rest, ctx, rest_off)
        if command is None:
            raise ctx.error(kw_off, f"{kw} requires at least one argument")
        return cls(span=span, original=original, flags=flags, command=command)  # type: ignore[call-arg]

    if kw == "ARG":
        words = _words(rest, ctx.reader.escape)
        if not words:
            raise ctx.error(kw_off, "ARG requires at least one argument")
        arg_pairs: list[tuple[str, str | None]] = []
        for word in words:
            key, eq, value = word.partition("=")
            if key == "":
                raise ctx.error(kw_off, "ARG names can not be blank")
            arg_pairs.append((key, value if eq else None))
        return A.Arg(span=span, original=original, flags=flags, pairs=tuple(arg_pairs))

    if kw == "EXPOSE":
        ports = _ws_split(rest)
        if not ports:
            raise ctx.error(kw_off, "EXPOSE requires at least one argument")
        return A.Expose(span=span, original=original, flags=flags, ports=tuple(ports))

    if kw == "VOLUME":
        args, _ = _maybe_json_list(rest, ctx, rest_off)
        if not args:
            raise ctx.error(kw_off, "VOLUME requires at least one argument")
        if not all(a.strip() for a in args):
            raise ctx.error(kw_off, "VOLUME specified can not be an empty string")
        return A.Volume(span=span, original=original, flags=flags, paths=tuple(args))

    if kw == "SHELL":
        command = _maybe_json(rest, ctx, rest_off)
        if not isinstance(command, A.ExecForm):
            raise ctx.error(kw_off, "SHELL requires the arguments to be in JSON form")
        if not command.args:
            raise ctx.error(kw_off, "SHELL requires at least one argument")
        return A.Shell(span=span, original=original, flags=flags, args=command.args)

    if kw == "HEALTHCHECK":
        words = _ws_split(rest)
        if not words:
            raise ctx.error(kw_off, "HEALTHCHECK requires at least one argument")
        typ = words[0].upper()
        if typ == "NONE":
            if len(words) != 1:
                raise ctx.error(kw_off, "HEALTHCHECK NONE takes no arguments")
            if flags:
                raise ctx.error(kw_off, "HEALTHCHECK NONE takes no options")
            return A.Healthcheck(span=span, original=original, flags=flags, command=None)
        if typ != "CMD":
            raise ctx.error(kw_off, f"unknown type {words[0]!r} in HEALTHCHECK (try CMD)")
        cmd_rest = rest[len(words[0]):].strip()
        cmd_off = rest_off + len(rest) - len(rest[len(words[0]):].lstrip())
        command = _maybe_json(cmd_rest, ctx, cmd_off)
        if command is None:
            raise ctx.error(kw_off, "HEALTHCHECK CMD requires at least one argument")
        return A.Healthcheck(span=span, original=original, flags=flags, command=command)

    # ONBUILD
    if rest == "":
        raise ctx.error(kw_off, "ONBUILD requires at least one argument")
    inner = _instruction(text, rest_off, ctx)
    if inner.keyword in _ONBUILD_FORBIDDEN:
        raise ctx.error(rest_off, f"{inner.keyword} isn't allowed as an ONBUILD trigger")
    span = _ending(span, ctx.end_line)
    return A.Onbuild(span=span, original=original, flags=flags, instruction=inner)


# ---- file ---------------------------------------------------------------------------------------

def _parse(text: str, filename: str, engine: str) -> A.Dockerfile:
    reader = LineReader(text, filename)
    global_args: list[A.Arg] = []
    stages: list[A.Stage] = []
    current: tuple[A.From, list[A.Instruction]] | None = None
    names: set[str] = set()
    seen_any = False

    def close() -> None:
        if current is not None:
            base, body = current
            stages.append(A.Stage(len(stages), base.stage_name, base, tuple(body)))

    ctx = _Ctx(reader, engine)
    for ll in reader.logical_lines():
        seen_any = True
        ctx.ll, ctx.end_line = ll, ll.end_line
        ins = _instruction(ll.text, 0, ctx)
        if type(ins) is A.From:
            close()
            if ins.stage_name is not None:
                if ins.stage_name in names:
                    off = ll.text.lower().rfind(ins.stage_name)
                    raise ctx.error(max(off, 0), f"duplicate stage name {ins.stage_name!r}")
                names.add(ins.stage_name)
            current = (ins, [])
        elif current is None:
            if not isinstance(ins, A.Arg):
                raise reader.error(ins.span.start_line, ins.span.start_col,
                                   f"{ins.keyword} instruction before the first FROM: "
                                   "only ARG may come before FROM")
            global_args.append(ins)
        else:
            current[1].append(ins)
    close()

    if not seen_any:
        raise reader.error(1, 1, "file with no instructions")
    if not stages:
        first = global_args[0].span
        raise reader.error(first.start_line, first.start_col, "no FROM instruction: the file has no build stage")
    return A.Dockerfile(filename=filename, directives=dict(reader.directives),
                        global_args=tuple(global_args), stages=tuple(stages))


def parse(text: str, filename: str = "Dockerfile", *, engine: str = "fast") -> A.Dockerfile:
    """Parse Dockerfile ``text``.  Raises only :class:`DockerfileError`.

    ``engine="lark"`` reads every instruction head and JSON array with the lark grammar instead of
    the hand-written scanner; the result is the same (that is what the tests check), only slower.
    """
    if engine not in ENGINES:
        raise ValueError(f"unknown parser engine {engine!r} (expected one of {', '.join(ENGINES)})")
    # The model is thousands of small objects and none of them form reference cycles, yet each
    # allocation burst triggers cyclic-GC passes over the whole heap: about half of the parse time
    # (bench/bench_parse.py).  So the collector is paused while parsing (and restarted only if it
    # was running: a caller's gc.disable() stays in force).
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _parse(text, filename, engine)
    except DockerfileError:
        raise
    except Exception as exc:  # noqa: BLE001 - contract: nothing but DockerfileError escapes
        raise DockerfileError(filename, 1, 1, f"internal parser error: {type(exc).__name__}: {exc}") from exc
    finally:
        if gc_was_enabled:
            gc.enable()
