"""Dockerfile linter: BuildKit's ``docker build --check`` rules over the typed model.

Pure: no I/O.  ``lint(df, build_args, base_env)`` runs every registered rule (see :mod:`.rules`) and
returns the warnings that the ``# check=`` parser directive does not skip, sorted by source position.
``base_env`` optionally gives the environment of external base images (the caller reads image
configs, e.g. ``pybuild check`` from the local store; :func:`external_base_images` lists the names).

The directive follows BuildKit's syntax (``frontend/dockerfile/linter/linter.go``
``ParseLintOptions``): ``skip=Rule1,Rule2`` or ``skip=all``, ``error=true|false``, separated by
``;``.  The build argument ``BUILDKIT_DOCKERFILE_CHECK`` overrides the directive, as in BuildKit.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ..ast import Dockerfile, SourceSpan
from ..errors import DockerfileError

__all__ = ["Warning", "CheckConfig", "parse_check_options", "check_config", "lint", "external_base_images",
           "RULES"]


@dataclass(frozen=True)
class Warning:  # noqa: A001 - the name the lint API is specified with
    """One lint finding: BuildKit rule name, formatted message, where, and the rule's doc URL."""

    rule: str
    message: str
    span: SourceSpan
    url: str

    def format(self) -> str:
        """``FILE:LINE:COL: Rule: message``, the line `pybuild check` prints."""
        s = self.span
        return f"{s.file}:{s.start_line}:{s.start_col}: {self.rule}: {self.message}"


@dataclass(frozen=True)
class CheckConfig:
    """The parsed ``# check=`` directive."""

    skip: frozenset[str] = frozenset()
    skip_all: bool = False
    error: bool = False

    def enabled(self, rule: str) -> bool:
        return not self.skip_all and rule not in self.skip


_TRUE = {"1", "t", "T", "TRUE", "true", "True"}
_FALSE = {"0", "f", "F", "FALSE", "false", "False"}


def parse_check_options(value: str) -> CheckConfig:
    """Parse a check directive value like BuildKit's ``ParseLintOptions``.

    Raises ``ValueError`` with BuildKit's wording for an unknown option or a bad boolean.
    """
    value = value.strip()
    if not value:
        return CheckConfig()
    skip: set[str] = set()
    skip_all = error = False
    for part in value.split(";", 1):
        key, sep, val = part.partition("=")
        if not sep:
            raise ValueError(f"invalid check option {part!r}")
        key = key.strip()
        if key == "skip":
            val = val.strip()
            if val == "all":
                skip_all = True
            else:
                skip = {r.strip() for r in val.split(",")}
        elif key == "error":
            val = val.strip()
            if val in _TRUE:
                error = True
            elif val in _FALSE:
                error = False
            else:
                raise ValueError(f"failed to parse check option {part!r}: invalid syntax")
        else:
            raise ValueError(f"invalid check option {key!r}")
    return CheckConfig(frozenset(skip - {""}), skip_all, error)


def check_config(df: Dockerfile, build_args: Mapping[str, str] | None = None) -> CheckConfig:
    """The effective check configuration: ``BUILDKIT_DOCKERFILE_CHECK`` build arg, else the directive.

    Raises :class:`DockerfileError` (at line 1) when the value is invalid.
    """
    value = (build_args or {}).get("BUILDKIT_DOCKERFILE_CHECK")
    if value is None:
        value = df.directives.get("check", "")
    try:
        return parse_check_options(value)
    except ValueError as exc:
        raise DockerfileError(df.filename, 1, 1, f"invalid check directive: {exc}") from None


def lint(
    df: Dockerfile,
    build_args: Mapping[str, str] | None = None,
    base_env: Mapping[str, Mapping[str, str]] | None = None,
) -> list[Warning]:
    """All warnings for ``df`` that the check directive does not skip, sorted by position.

    ``build_args`` are the ``--build-arg`` values (names count as defined variables).  ``base_env``
    maps an external base image, named as :func:`external_base_images` names it, to its config's
    environment; a stage on an image missing there is assumed to start with ``PATH`` only.
    Raises :class:`DockerfileError` only for an invalid ``# check=`` directive.
    """
    from .rules import RULES, Context

    config = check_config(df, build_args)
    ctx = Context(df, dict(build_args or {}), base_env)
    out: list[Warning] = []
    for name, rule in RULES.items():
        if not config.enabled(name):
            continue
        for span, message in rule.func(ctx):
            out.append(Warning(name, message, span, rule.url))
    out.sort(key=lambda w: (w.span.start_line, w.span.start_col))
    return out


def external_base_images(df: Dockerfile, build_args: Mapping[str, str] | None = None) -> list[str]:
    """The images the stages build on that are not earlier stages (nor ``scratch``), each once, in
    file order, with global ARGs (and ``build_args``) expanded as in FROM: the keys of ``base_env``."""
    from .rules import Context

    ctx = Context(df, dict(build_args or {}))
    out: list[str] = []
    for st in df.stages:
        image = ctx.expand_base(st.base.image)
        parent = ctx.stage_index(image)
        if (parent is not None and parent < st.index) or image.lower() == "scratch" or image in out:
            continue
        out.append(image)
    return out


def __getattr__(name: str):
    if name == "RULES":
        from .rules import RULES

        return RULES
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
