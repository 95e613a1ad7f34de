"""BuildKit's parser *node view* of a parsed Dockerfile (what ``pybuild parse --json`` prints).

:func:`to_nodes` gives one dict per instruction (global ARGs and FROMs included, file order) with
exactly the keys ``cmd``, ``sub_cmd``, ``json``, ``flags``, ``value``, ``original``,
``start_line``, ``end_line``, ``heredocs`` -- the fields BuildKit's ``parser.Node`` exposes (and
that the PyPI ``dockerfile`` package, a wrapper of that parser, returns), before any expansion:

* ``flags`` are the ``--flag`` words as written, after BuildKit's flag quote removal
  (``--chown="1:1"`` is ``--chown=1:1``, as in ``Node.Flags``);
* ``value`` holds the words as BuildKit's per-instruction splitter gives them: the JSON strings in
  exec form, the rest of the line as one string for RUN/CMD/ENTRYPOINT/WORKDIR/USER/STOPSIGNAL/
  MAINTAINER shell form, whitespace-split words for FROM/EXPOSE/COPY/ADD/VOLUME, ``parseWords``
  words for ARG, alternating keys and values for ENV/LABEL, ``["CMD", ...]``/``["NONE"]`` for
  HEALTHCHECK (the type word as written, BuildKit does not upper-case it);
* ``ONBUILD X`` is ``cmd="ONBUILD"``, ``sub_cmd="X"``, with the wrapped instruction's ``value``;
  like BuildKit, the ONBUILD node itself has no flags (the trigger's own flags stay visible in
  ``original``) and ``json`` is the trigger's;
* ``cmd``/``sub_cmd`` are upper-cased (BuildKit's node keeps the keyword as written);
* ``original`` is the logical line (continuations joined, comment lines dropped, leading blanks
  trimmed, trailing blanks kept); for a heredoc
  instruction BuildKit appends ``"\\n"`` and each body followed by its terminator line.
"""

from __future__ import annotations

from typing import Any, Iterator

from . import ast as A

__all__ = ["to_nodes", "iter_instructions", "node"]


def iter_instructions(df: A.Dockerfile) -> Iterator[A.Instruction]:
    """Every instruction in file order: global ARGs, then each stage's FROM and body."""
    yield from df.global_args
    for stage in df.stages:
        yield stage.base
        yield from stage.instructions


def _split(original: str) -> tuple[list[str], str]:
    """``(flags as written, rest)`` of one instruction's logical line."""
    from .parser import _unquote_flag, scan_head, scan_head_lark

    head = scan_head(original) or scan_head_lark(original)
    _, _, raw_flags, rest, _ = head
    return [_unquote_flag(raw) for raw, _ in raw_flags], rest.rstrip()


def _json_args(rest: str) -> tuple[str, ...] | None:
    from .parser import NotStringArray, json_string_array

    try:
        return json_string_array(rest)
    except NotStringArray:  # pragma: no cover - non-string arrays were rejected by parse()
        return None


def _command_value(command: A.Command) -> tuple[bool, list[str]]:
    if isinstance(command, A.ExecForm):
        return True, list(command.args)
    return False, [command.text]


def _value(ins: A.Instruction, rest: str, escape: str) -> tuple[bool, list[str]]:
    """``(json, value)`` of one (non-ONBUILD) instruction."""
    from .parser import _ws_split, parse_words

    if isinstance(ins, (A.Run, A.Cmd, A.Entrypoint)):
        return _command_value(ins.command)
    if isinstance(ins, A.Shell):
        return True, list(ins.args)
    if isinstance(ins, (A.Env, A.Label)):
        return False, [item for pair in ins.pairs for item in pair]
    if isinstance(ins, A.Arg):
        return False, parse_words(rest, escape)
    if isinstance(ins, A.Healthcheck):
        typ = rest.split(None, 1)[0]  # as written: BuildKit does not upper-case it
        if ins.command is None:
            return False, [typ]
        is_json, words = _command_value(ins.command)
        return is_json, [typ, *words]
    if isinstance(ins, (A.Copy, A.Add, A.Volume)):
        args = _json_args(rest)
        if args is not None:
            return True, list(args)
        return False, _ws_split(rest)
    if isinstance(ins, (A.From, A.Expose)):
        return False, _ws_split(rest)
    # WORKDIR USER STOPSIGNAL MAINTAINER: the rest of the line, one string
    return False, [rest]


def _heredocs(ins: A.Instruction) -> list[dict[str, Any]]:
    docs = getattr(ins, "heredocs", ())
    return [{"name": h.name, "content": h.content, "expand": h.expand, "chomp": h.chomp} for h in docs]


def node(ins: A.Instruction, escape: str = "\\") -> dict[str, Any]:
    """The node view of one instruction (see the module docstring)."""
    flags, rest = _split(ins.original)
    sub_cmd = None
    target = ins
    if isinstance(ins, A.Onbuild):
        target = ins.instruction
        sub_cmd = target.keyword
        _, rest = _split(target.original)
        flags = []
    is_json, value = _value(target, rest, escape)
    original = ins.original
    docs = getattr(target, "heredocs", ())
    if docs:
        original += "\n" + "".join(h.content + h.name + "\n" for h in docs)
    return {
        "cmd": ins.keyword,
        "sub_cmd": sub_cmd,
        "json": is_json,
        "flags": flags,
        "value": value,
        "original": original,
        "start_line": ins.span.start_line,
        "end_line": ins.span.end_line,
        "heredocs": _heredocs(target),
    }


def to_nodes(df: A.Dockerfile) -> list[dict[str, Any]]:
    """One node dict per instruction of ``df``, in file order."""
    return [node(ins, df.escape) for ins in iter_instructions(df)]
