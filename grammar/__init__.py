"""Dockerfile front end: ``parse(text, filename) -> Dockerfile`` and BuildKit word expansion.

Importing this package is cheap: submodules are imported on first attribute access (PEP 562) and
the lark parser is built (or loaded from lark's cache) on the first call to :func:`parse`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_AST_NAMES = (
    "SourceSpan", "ShellForm", "ExecForm", "Command", "Heredoc", "Instruction",
    "From", "Run", "Cmd", "Entrypoint", "Env", "Arg", "Label", "Expose", "Workdir", "User",
    "Copy", "Add", "StopSignal", "Volume", "Shell", "Maintainer", "Healthcheck", "Onbuild",
    "Stage", "Dockerfile",
)
_LAZY: dict[str, str] = {name: ".ast" for name in _AST_NAMES}
_LAZY.update({
    "parse": ".parser",
    "DockerfileError": ".errors",
    "ExpansionError": ".expand",
    "expand_word": ".expand",
    "expand_words": ".expand",
})

__all__ = ["parse", "DockerfileError", "ExpansionError", "expand_word", "expand_words", *_AST_NAMES]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # pragma: no cover
    from .ast import (  # noqa: F401
        Add, Arg, Cmd, Command, Copy, Dockerfile, Entrypoint, Env, ExecForm, Expose, From,
        Healthcheck, Heredoc, Instruction, Label, Maintainer, Onbuild, Run, Shell, ShellForm,
        SourceSpan, Stage, StopSignal, User, Volume, Workdir,
    )
    from .errors import DockerfileError  # noqa: F401
    from .expand import ExpansionError, expand_word, expand_words  # noqa: F401
    from .parser import parse  # noqa: F401
