"""Typed, frozen Dockerfile model, independent of lark's tree types.

Words are stored UNEXPANDED, exactly as BuildKit's parser splits them (quotes and escapes kept);
expansion happens later with :func:`pybuild.grammar.expand.expand_word`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import ClassVar, Union

__all__ = [
    "SourceSpan", "ShellForm", "ExecForm", "Command", "Heredoc", "Instruction",
    "From", "Run", "Cmd", "Entrypoint", "Env", "Arg", "Label", "Expose", "Workdir", "User",
    "Copy", "Add", "StopSignal", "Volume", "Shell", "Maintainer", "Healthcheck", "Onbuild",
    "Stage", "Dockerfile", "INSTRUCTION_CLASSES",
]

Flags = tuple[tuple[str, Union[str, None]], ...]


@dataclass(frozen=True)
class SourceSpan:
    """Where an instruction is: 1-based lines (``end_line`` includes continuation lines and heredoc
    bodies) and the keyword's column.  ``empty_continuation_lines`` lists the blank lines inside its
    continuation, which the parser skips and BuildKit's ``NoEmptyContinuation`` rule reports.

    The last four fields place the parts of the instruction's ``original`` text in the file, for
    error messages that point at one flag or argument (see :meth:`position`); they take no part in
    comparisons.  ``segments`` are the parser's map of the logical line (continuations joined) the
    instruction is on: ``(offset, line, col)`` means the line's character at ``offset`` is at
    ``line:col`` and what follows is on that line (empty: all of ``original`` is on
    ``start_line`` from ``start_col``); ``origin`` is the offset of ``original[0]`` in that
    logical line.  ``flag_words`` are the ``--flag`` words as written with their offsets in
    ``original`` (one per entry of :attr:`Instruction.flags`), ``args_offset`` is that of the
    arguments after them.  The parser hands over data it has anyway: parsing stays as fast."""

    file: str
    start_line: int
    end_line: int
    start_col: int = 1
    empty_continuation_lines: tuple[int, ...] = ()
    segments: tuple[tuple[int, int, int], ...] = field(default=(), compare=False, repr=False)
    origin: int = field(default=0, compare=False, repr=False)
    flag_words: tuple[tuple[str, int], ...] = field(default=(), compare=False, repr=False)
    args_offset: int = field(default=0, compare=False, repr=False)

    def position(self, offset: int) -> tuple[int, int]:
        """``(line, col)``, 1-based, of ``original[offset]`` of the instruction this span is of."""
        if not self.segments:
            return self.start_line, self.start_col + offset
        at = self.origin + offset
        start, line, col = self.segments[0]
        for seg_offset, seg_line, seg_col in self.segments:
            if seg_offset > at:
                break
            start, line, col = seg_offset, seg_line, seg_col
        return line, col + (at - start)


_ANY: object = object()
# what may stand right before / right after an argument in the source text (blanks, "=" of a
# NAME=VALUE pair, the quotes and commas of a JSON array)
_WORD_BEFORE = frozenset(" \t\n\r\f\v=\"'[,")
_WORD_AFTER = frozenset(" \t\n\r\f\v=\"',]")


@dataclass(frozen=True)
class ShellForm:
    text: str


@dataclass(frozen=True)
class ExecForm:
    args: tuple[str, ...]


Command = Union[ShellForm, ExecForm]


@dataclass(frozen=True)
class Heredoc:
    """A here-document attached to RUN/COPY/ADD.

    ``content`` is the raw body (every line ends with ``\\n``; leading tabs NOT yet removed even
    when ``chomp``); ``expand`` is False when the name was quoted (``<<'EOF'``/``<<"EOF"``).
    """

    name: str
    content: str
    expand: bool = True
    chomp: bool = False
    file_descriptor: int | None = None

    @property
    def chomped_content(self) -> str:
        """Content with leading tabs removed from each line when ``<<-`` was used."""
        if not self.chomp:
            return self.content
        return "".join(line.lstrip("\t") for line in self.content.splitlines(keepends=True))


@dataclass(frozen=True, kw_only=True)
class Instruction:
    keyword: ClassVar[str] = ""
    span: SourceSpan
    original: str
    flags: Flags = ()

    def flag(self, name: str) -> str | None:
        """Value of the last ``--name=value`` flag (``None`` if absent or written without a value)."""
        value = None
        for key, val in self.flags:
            if key == name:
                value = val
        return value

    def flag_values(self, name: str) -> tuple[str | None, ...]:
        return tuple(val for key, val in self.flags if key == name)

    def has_flag(self, name: str) -> bool:
        return any(key == name for key, _ in self.flags)

    # -- where things are, for error messages -----------------------------------------------------
    def flag_position(self, name: str, value: object = _ANY, *, at_value: bool = True) -> tuple[int, int]:
        """``(line, col)`` of the last ``--name`` flag (the last one whose value is ``value``, if
        given): of its value when ``at_value`` and it has one, else of its ``--``.  The
        instruction's start when there is no such flag."""
        words = self.span.flag_words
        found = None
        for i, (key, val) in enumerate(self.flags):
            if key == name and (value is _ANY or val == value) and i < len(words):
                found = words[i]
        if found is None:
            return self.span.start_line, self.span.start_col
        word, offset = found
        eq = word.find("=") if at_value else -1
        return self.span.position(offset + eq + 1 if eq >= 0 else offset)

    def word_position(self, word: str) -> tuple[int, int]:
        """``(line, col)`` of the argument ``word`` as written (unexpanded, quotes kept) after the
        flags: its first occurrence standing as a word of its own.  The instruction's start when
        it is not there verbatim (a word from a JSON array with escapes, an expanded value)."""
        text = self.original
        if word:
            end = len(word)
            i = text.find(word, self.span.args_offset)
            while i >= 0:
                if (i == 0 or text[i - 1] in _WORD_BEFORE) and (i + end == len(text) or text[i + end] in _WORD_AFTER):
                    return self.span.position(i)
                i = text.find(word, i + 1)
        return self.span.start_line, self.span.start_col


@dataclass(frozen=True, kw_only=True)
class From(Instruction):
    keyword: ClassVar[str] = "FROM"
    image: str
    stage_name: str | None = None  # lower-cased, as BuildKit does
    platform: str | None = None


@dataclass(frozen=True, kw_only=True)
class Run(Instruction):
    keyword: ClassVar[str] = "RUN"
    command: Command
    heredocs: tuple[Heredoc, ...] = ()

    @property
    def mounts(self) -> tuple[str, ...]:
        return tuple(v for v in self.flag_values("mount") if v is not None)

    @property
    def network(self) -> str | None:
        return self.flag("network")

    @property
    def security(self) -> str | None:
        return self.flag("security")


@dataclass(frozen=True, kw_only=True)
class Cmd(Instruction):
    keyword: ClassVar[str] = "CMD"
    command: Command


@dataclass(frozen=True, kw_only=True)
class Entrypoint(Instruction):
    keyword: ClassVar[str] = "ENTRYPOINT"
    command: Command


@dataclass(frozen=True, kw_only=True)
class Env(Instruction):
    keyword: ClassVar[str] = "ENV"
    pairs: tuple[tuple[str, str], ...]


@dataclass(frozen=True, kw_only=True)
class Arg(Instruction):
    keyword: ClassVar[str] = "ARG"
    pairs: tuple[tuple[str, str | None], ...]


@dataclass(frozen=True, kw_only=True)
class Label(Instruction):
    keyword: ClassVar[str] = "LABEL"
    pairs: tuple[tuple[str, str], ...]


@dataclass(frozen=True, kw_only=True)
class Expose(Instruction):
    keyword: ClassVar[str] = "EXPOSE"
    ports: tuple[str, ...]


@dataclass(frozen=True, kw_only=True)
class Workdir(Instruction):
    keyword: ClassVar[str] = "WORKDIR"
    path: str


@dataclass(frozen=True, kw_only=True)
class User(Instruction):
    keyword: ClassVar[str] = "USER"
    user: str


@dataclass(frozen=True, kw_only=True)
class _CopyLike(Instruction):
    sources: tuple[str, ...]
    dest: str
    heredocs: tuple[Heredoc, ...] = ()
    json_form: bool = False

    @property
    def chown(self) -> str | None:
        return self.flag("chown")

    @property
    def chmod(self) -> str | None:
        return self.flag("chmod")

    @property
    def link(self) -> bool:
        if not self.has_flag("link"):
            return False
        return (self.flag("link") or "true").lower() not in ("false", "0")

    @property
    def excludes(self) -> tuple[str, ...]:
        return tuple(v for v in self.flag_values("exclude") if v is not None)


@dataclass(frozen=True, kw_only=True)
class Copy(_CopyLike):
    keyword: ClassVar[str] = "COPY"

    @property
    def from_stage(self) -> str | None:
        return self.flag("from")


@dataclass(frozen=True, kw_only=True)
class Add(_CopyLike):
    keyword: ClassVar[str] = "ADD"

    @property
    def checksum(self) -> str | None:
        return self.flag("checksum")


@dataclass(frozen=True, kw_only=True)
class StopSignal(Instruction):
    keyword: ClassVar[str] = "STOPSIGNAL"
    signal: str


@dataclass(frozen=True, kw_only=True)
class Volume(Instruction):
    keyword: ClassVar[str] = "VOLUME"
    paths: tuple[str, ...]


@dataclass(frozen=True, kw_only=True)
class Shell(Instruction):
    keyword: ClassVar[str] = "SHELL"
    args: tuple[str, ...]


@dataclass(frozen=True, kw_only=True)
class Maintainer(Instruction):
    keyword: ClassVar[str] = "MAINTAINER"
    name: str


@dataclass(frozen=True, kw_only=True)
class Healthcheck(Instruction):
    """``HEALTHCHECK NONE`` has ``command=None``; timing options stay in ``flags`` (unparsed)."""

    keyword: ClassVar[str] = "HEALTHCHECK"
    command: Command | None

    @property
    def none(self) -> bool:
        return self.command is None

    @property
    def interval(self) -> str | None:
        return self.flag("interval")

    @property
    def timeout(self) -> str | None:
        return self.flag("timeout")

    @property
    def start_period(self) -> str | None:
        return self.flag("start-period")

    @property
    def start_interval(self) -> str | None:
        return self.flag("start-interval")

    @property
    def retries(self) -> str | None:
        return self.flag("retries")


@dataclass(frozen=True, kw_only=True)
class Onbuild(Instruction):
    keyword: ClassVar[str] = "ONBUILD"
    instruction: Instruction


def _fast_init(cls: type) -> None:
    """Give the frozen dataclass ``cls`` an ``__init__`` that fills ``__dict__`` directly.

    The generated frozen ``__init__`` sets each field through ``object.__setattr__``; the parser
    builds a few objects per instruction and that was a measurable part of parsing (see
    bench/bench_parse.py).  Same signature and defaults; instances stay frozen (assignment and
    deletion still raise).  Classes with ``default_factory`` fields keep the generated one.
    """
    fields = [f for f in dataclasses.fields(cls) if f.init]
    if any(f.default_factory is not dataclasses.MISSING for f in fields):
        return
    defaults = {f"_d_{f.name}": f.default for f in fields if f.default is not dataclasses.MISSING}

    def param(f: dataclasses.Field) -> str:
        return f.name + (f"=_d_{f.name}" if f.default is not dataclasses.MISSING else "")

    positional = [param(f) for f in fields if not f.kw_only]
    keyword = [param(f) for f in fields if f.kw_only]
    params = ", ".join(["self", *positional, *(["*", *keyword] if keyword else [])])
    body = "".join(f"    d[{f.name!r}] = {f.name}\n" for f in fields) or "    pass\n"
    src = f"def __init__({params}):\n    d = self.__dict__\n{body}"
    namespace: dict[str, object] = {}
    exec(src, defaults, namespace)  # noqa: S102 - source built above from the class's own field names
    init = namespace["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"  # type: ignore[attr-defined]
    cls.__init__ = init  # type: ignore[misc]


INSTRUCTION_CLASSES: dict[str, type[Instruction]] = {
    cls.keyword: cls
    for cls in (From, Run, Cmd, Entrypoint, Env, Arg, Label, Expose, Workdir, User, Copy, Add,
                StopSignal, Volume, Shell, Maintainer, Healthcheck, Onbuild)
}


@dataclass(frozen=True)
class Stage:
    index: int
    name: str | None
    base: From
    instructions: tuple[Instruction, ...] = ()


@dataclass(frozen=True)
class Dockerfile:
    """Parsed file.  ``directives`` maps lower-case directive names (``syntax``, ``escape``,
    ``check``) to their values as written.  Note: holds a dict, so instances are not hashable."""

    filename: str
    directives: dict[str, str] = field(default_factory=dict)
    global_args: tuple[Arg, ...] = ()
    stages: tuple[Stage, ...] = ()

    @property
    def escape(self) -> str:
        return self.directives.get("escape", "\\")

    def stage(self, name_or_index: str | int) -> Stage:
        if isinstance(name_or_index, int):
            return self.stages[name_or_index]
        key = name_or_index.lower()
        for st in self.stages:
            if st.name == key:
                return st
        raise KeyError(name_or_index)


for _cls in (SourceSpan, ShellForm, ExecForm, Heredoc, *INSTRUCTION_CLASSES.values(), Stage):
    _fast_init(_cls)
del _cls
