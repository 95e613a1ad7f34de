"""Print a :class:`~pybuild.grammar.ast.Dockerfile` model back as Dockerfile text.

``parse(to_text(df))`` equals ``df`` except for source spans and ``original`` texts: every
instruction is printed on one line (no continuations, no comments), words exactly as the model
holds them (unexpanded, quotes kept), exec forms as JSON, heredoc bodies after their instruction.
"""

from __future__ import annotations

import json

from . import ast as A

__all__ = ["to_text", "instruction_text"]

_FLAG_SPECIAL = frozenset(" \t\v\f\r\n\"'\\")


def _flag(name: str, value: str | None) -> str:
    if value is None:
        return f"--{name}"
    # BuildKit's flag reader removes quotes and backslashes; a backslash keeps any character
    quoted = "".join("\\" + ch if ch in _FLAG_SPECIAL else ch for ch in value)
    return f"--{name}={quoted}"


def _json(args: tuple[str, ...] | list[str]) -> str:
    return json.dumps(list(args), ensure_ascii=False)


def _command(command: A.Command) -> str:
    return _json(command.args) if isinstance(command, A.ExecForm) else command.text


def _plain_words_ok(words: tuple[str, ...]) -> bool:
    """Can ``words`` be written whitespace-separated and read back by a whitespace split?"""
    return bool(words) and all(w and not any(c.isspace() for c in w) for w in words) \
        and not words[0].startswith("[")


def _pairs(ins: A.Env | A.Label, escape: str) -> str:
    from .parser import parse_words

    parts = [f"{k}={v}" for k, v in ins.pairs]
    if parse_words(" ".join(parts), escape) == parts:
        return " ".join(parts)
    # ``ENV key value with blanks`` (the legacy one-pair form keeps the rest of the line as is)
    (key, value), = ins.pairs
    return f"{key} {value}"


def _body(ins: A.Instruction, escape: str) -> str:
    """The instruction's text after its keyword and flags."""
    if isinstance(ins, A.From):
        # the model lower-cases the stage name, which BuildKit matches case-insensitively anyway
        return ins.image + (f" AS {ins.stage_name}" if ins.stage_name is not None else "")
    if isinstance(ins, (A.Run, A.Cmd, A.Entrypoint)):
        return _command(ins.command)
    if isinstance(ins, A.Shell):
        return _json(ins.args)
    if isinstance(ins, (A.Env, A.Label)):
        return _pairs(ins, escape)
    if isinstance(ins, A.Arg):
        return " ".join(k if v is None else f"{k}={v}" for k, v in ins.pairs)
    if isinstance(ins, A.Expose):
        return " ".join(ins.ports)
    if isinstance(ins, (A.Copy, A.Add)):
        args = (*ins.sources, ins.dest)
        return _json(args) if ins.json_form else " ".join(args)
    if isinstance(ins, A.Volume):
        return " ".join(ins.paths) if _plain_words_ok(ins.paths) else _json(ins.paths)
    if isinstance(ins, A.Healthcheck):
        return "NONE" if ins.command is None else "CMD " + _command(ins.command)
    if isinstance(ins, A.Onbuild):
        return _line(ins.instruction, escape)
    field = {A.Workdir: "path", A.User: "user", A.StopSignal: "signal", A.Maintainer: "name"}[type(ins)]
    return getattr(ins, field)


def _line(ins: A.Instruction, escape: str) -> str:
    body = _body(ins, escape)
    if body.startswith("--"):  # would read as a flag: end the flags with a bare "--"
        body = "-- " + body
    return " ".join([ins.keyword, *(_flag(k, v) for k, v in ins.flags), body])


def _heredoc_bodies(ins: A.Instruction) -> str:
    target = ins.instruction if isinstance(ins, A.Onbuild) else ins
    return "".join(h.content + h.name + "\n" for h in getattr(target, "heredocs", ()))


def instruction_text(ins: A.Instruction, escape: str = "\\") -> str:
    """One instruction as Dockerfile text (one line, plus heredoc bodies), ending with a newline."""
    return _line(ins, escape) + "\n" + _heredoc_bodies(ins)


def to_text(df: A.Dockerfile) -> str:
    """The whole file: directives, global ARGs, then each stage."""
    out = [f"# {key}={value}\n" for key, value in df.directives.items()]
    from .nodes import iter_instructions

    out += [instruction_text(ins, df.escape) for ins in iter_instructions(df)]
    return "".join(out)
