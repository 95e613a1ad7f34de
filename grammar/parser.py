"""Dockerfile text -> :class:`pybuild.grammar.ast.Dockerfile`.

Pipeline: :class:`~pybuild.grammar.lexer.LineReader` (directives, comments, continuations, heredoc
bodies) -> lark LALR grammar ``dockerfile.lark`` (keyword, ``--flags``, rest, JSON arrays) ->
per-instruction argument splitting that mirrors BuildKit's parser (parseWords, whitespace split,
"maybe JSON") -> frozen dataclasses.  Words are never expanded here.
"""

from __future__ import annotations

import difflib
import json
import re
from pathlib import Path
from typing import Any, Callable

from . import ast as A
from .errors import DockerfileError
from .expand import ExpansionError, Lex
from .lexer import LineReader, LogicalLine

__all__ = ["parse", "ALLOWED_FLAGS", "KEYWORDS"]

KEYWORDS = tuple(A.INSTRUCTION_CLASSES)

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

_LARK: Any = None


def _lark() -> Any:
    """The LALR parser, built on first use (lark's own cache makes later processes fast)."""
    global _LARK
    if _LARK is None:
        from lark import Lark

        grammar = (Path(__file__).with_name("dockerfile.lark")).read_text(encoding="utf-8")
        _LARK = Lark(grammar, parser="lalr", start=["instruction", "json_array"], cache=True)
    return _LARK


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
    rest = rest.strip()
    return _RE_WS.split(rest) if rest else []


# ---- instruction construction -----------------------------------------------------------------

class _Ctx:
    def __init__(self, reader: LineReader, ll: LogicalLine) -> None:
        self.reader = reader
        self.ll = ll
        self.end_line = ll.end_line

    def error(self, offset: int, message: str) -> DockerfileError:
        line, col = self.ll.position(offset)
        return self.reader.error(line, col, message)


def _did_you_mean(word: str, choices: tuple[str, ...], fmt: Callable[[str], str] = str) -> str:
    match = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f" (did you mean {fmt(match[0])}?)" if match else ""


def _parse_json_array(rest: str, ctx: _Ctx, offset: int) -> tuple[str, ...] | None:
    """Exec form: a tuple of strings, ``None`` if ``rest`` is not a JSON array (-> shell form)."""
    if not rest.startswith("["):
        return None
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
            raise ctx.error(offset, _NOT_STRING_ARRAY)
        try:
            args.append(json.loads(tok.value))
        except ValueError:  # pragma: no cover - the grammar only admits valid JSON strings
            return None
    return tuple(args)


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


def _name_vals(rest: str, kw: str, ctx: _Ctx, kw_off: int, escape: str) -> tuple[tuple[str, str], ...]:
    words = parse_words(rest, escape)
    if not words:
        raise ctx.error(kw_off, f"{kw} requires at least one argument")
    if "=" not in words[0]:
        parts = _RE_WS.split(rest, maxsplit=1)
        if len(parts) < 2 or parts[1] == "":
            raise ctx.error(kw_off, f"{kw} must have two arguments")
        pairs = [(parts[0], parts[1])]
    else:
        pairs = []
        for word in words:
            if "=" not in word:
                raise ctx.error(kw_off, f"Syntax error - can't find = in {word!r}. Must be of the form: name=value")
            key, value = word.split("=", 1)
            pairs.append((key, value))
    for key, _ in pairs:
        if key == "":
            raise ctx.error(kw_off, f"{kw} names can not be blank")
    return tuple(pairs)


def _heredocs(text: str, ctx: _Ctx, kw_off: int, text_off: int) -> tuple[A.Heredoc, ...]:
    """BuildKit ``heredocsFromLine`` + reading each body from the following lines."""
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


def _instruction(text: str, base: int, ctx: _Ctx) -> A.Instruction:
    """Parse one instruction starting at offset ``base`` of the logical line ``text``."""
    from lark.exceptions import LarkError, UnexpectedInput

    sub = text[base:]
    try:
        tree = _lark().parse(sub, start="instruction")
    except UnexpectedInput as exc:
        raise ctx.error(base + (exc.pos_in_stream or 0), "syntax error") from None
    except LarkError:  # pragma: no cover - defensive
        raise ctx.error(base, "syntax error") from None

    kw_tok = tree.children[0]
    kw_off = base + kw_tok.start_pos
    kw = kw_tok.value.upper()
    cls = A.INSTRUCTION_CLASSES.get(kw)
    if cls is None:
        raise ctx.error(kw_off, f"unknown instruction {kw_tok.value}{_did_you_mean(kw, KEYWORDS)}")

    flags: list[tuple[str, str | None]] = []
    rest, rest_off = "", base + len(sub)
    for child in tree.children[1:]:
        if child is None:
            continue
        if hasattr(child, "children"):  # flag subtree
            tok = child.children[0]
            word = _unquote_flag(tok.value)[2:]
            name, eq, value = word.partition("=")
            allowed = ALLOWED_FLAGS.get(kw, ())
            if name not in allowed:
                hint = _did_you_mean(name, allowed, lambda s: "--" + s)
                raise ctx.error(base + tok.start_pos, f"unknown flag --{name} for {kw}{hint}")
            flags.append((name, value if eq else None))
        elif child.type in ("REST", "REST_ANY"):
            rest, rest_off = child.value.rstrip(), base + child.start_pos

    escape = ctx.reader.escape
    line, col = ctx.ll.position(kw_off)
    # BuildKit keeps trailing blanks in Node.Original (only leading ones are trimmed)
    common: dict[str, Any] = {"original": sub.lstrip(), "flags": tuple(flags)}

    def need(cond: bool, message: str) -> None:
        if not cond:
            raise ctx.error(kw_off, message)

    def span() -> A.SourceSpan:
        return A.SourceSpan(ctx.reader.filename, line, ctx.end_line, col)

    if kw == "FROM":
        args = _ws_split(rest)
        need(len(args) in (1, 3), "FROM requires either one or three arguments")
        name = None
        if len(args) == 3:
            need(args[1].lower() == "as", 'when using FROM with three arguments, the second one must be "AS"')
            name = args[2].lower()
            if not _RE_STAGE_NAME.match(name):
                raise ctx.error(rest_off + rest.rfind(args[2]),
                                f"invalid name for build stage: {args[2]!r}, name can't start with a number "
                                "or contain symbols")
        return A.From(span=span(), image=args[0], stage_name=name, platform=dict(flags).get("platform"),
                      **common)

    if kw in ("RUN", "CMD", "ENTRYPOINT"):
        command = _maybe_json(rest, ctx, rest_off)
        need(command is not None, f"{kw} requires at least one argument")
        assert command is not None
        if kw == "RUN":
            docs: tuple[A.Heredoc, ...] = ()
            if isinstance(command, A.ShellForm) and "<<" in rest:
                docs = _heredocs(rest, ctx, kw_off, rest_off)
            return A.Run(span=span(), command=command, heredocs=docs, **common)
        return cls(span=span(), command=command, **common)  # type: ignore[call-arg]

    if kw == "SHELL":
        command = _maybe_json(rest, ctx, rest_off)
        need(isinstance(command, A.ExecForm), "SHELL requires the arguments to be in JSON form")
        assert isinstance(command, A.ExecForm)
        need(len(command.args) > 0, "SHELL requires at least one argument")
        return A.Shell(span=span(), args=command.args, **common)

    if kw in ("COPY", "ADD"):
        args, is_json = _maybe_json_list(rest, ctx, rest_off)
        need(len(args) >= 2, f"{kw} requires at least two arguments (sources and a destination)")
        docs = ()
        if not is_json and "<<" in rest:
            docs = _heredocs(rest, ctx, kw_off, rest_off)
        return cls(span=span(), sources=tuple(args[:-1]), dest=args[-1],  # type: ignore[call-arg]
                   heredocs=docs, json_form=is_json, **common)

    if kw == "VOLUME":
        args, _ = _maybe_json_list(rest, ctx, rest_off)
        need(len(args) > 0, "VOLUME requires at least one argument")
        need(all(a.strip() for a in args), "VOLUME specified can not be an empty string")
        return A.Volume(span=span(), paths=tuple(args), **common)

    if kw in ("ENV", "LABEL"):
        pairs = _name_vals(rest, kw, ctx, kw_off, escape)
        return cls(span=span(), pairs=pairs, **common)  # type: ignore[call-arg]

    if kw == "ARG":
        words = parse_words(rest, escape)
        need(len(words) > 0, "ARG requires at least one argument")
        arg_pairs: list[tuple[str, str | None]] = []
        for word in words:
            key, eq, value = word.partition("=")
            need(key != "", "ARG names can not be blank")
            arg_pairs.append((key, value if eq else None))
        return A.Arg(span=span(), pairs=tuple(arg_pairs), **common)

    if kw == "EXPOSE":
        ports = _ws_split(rest)
        need(len(ports) > 0, "EXPOSE requires at least one argument")
        return A.Expose(span=span(), ports=tuple(ports), **common)

    if kw in ("WORKDIR", "USER", "STOPSIGNAL", "MAINTAINER"):
        need(rest != "", f"{kw} requires exactly one argument")
        field = {"WORKDIR": "path", "USER": "user", "STOPSIGNAL": "signal", "MAINTAINER": "name"}[kw]
        return cls(span=span(), **{field: rest}, **common)

    if kw == "HEALTHCHECK":
        words = _ws_split(rest)
        need(len(words) > 0, "HEALTHCHECK requires at least one argument")
        typ = words[0].upper()
        if typ == "NONE":
            need(len(words) == 1, "HEALTHCHECK NONE takes no arguments")
            need(not flags, "HEALTHCHECK NONE takes no options")
            return A.Healthcheck(span=span(), command=None, **common)
        need(typ == "CMD", f"unknown type {words[0]!r} in HEALTHCHECK (try CMD)")
        cmd_rest = rest[len(words[0]):].strip()
        cmd_off = rest_off + len(rest) - len(rest[len(words[0]):].lstrip())
        command = _maybe_json(cmd_rest, ctx, cmd_off)
        need(command is not None, "HEALTHCHECK CMD requires at least one argument")
        return A.Healthcheck(span=span(), command=command, **common)

    # ONBUILD
    need(rest != "", "ONBUILD requires at least one argument")
    inner = _instruction(text, rest_off, ctx)
    if inner.keyword in _ONBUILD_FORBIDDEN:
        raise ctx.error(rest_off, f"{inner.keyword} isn't allowed as an ONBUILD trigger")
    return A.Onbuild(span=span(), instruction=inner, **common)


# ---- file ---------------------------------------------------------------------------------------

def _parse(text: str, filename: str) -> A.Dockerfile:
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

    while (ll := reader.next_line()) is not None:
        seen_any = True
        text = ll.text
        ctx = _Ctx(reader, ll)
        ins = _instruction(text, 0, ctx)
        if isinstance(ins, A.From):
            close()
            if ins.stage_name is not None:
                if ins.stage_name in names:
                    off = text.lower().rfind(ins.stage_name)
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


def parse(text: str, filename: str = "Dockerfile") -> A.Dockerfile:
    """Parse Dockerfile ``text``.  Raises only :class:`DockerfileError`."""
    try:
        return _parse(text, filename)
    except DockerfileError:
        raise
    except Exception as exc:  # noqa: BLE001 - contract: nothing but DockerfileError escapes
        raise DockerfileError(filename, 1, 1, f"internal parser error: {type(exc).__name__}: {exc}") from exc
