"""The build context as a read-only view, with `.dockerignore` applied.

A `ContextView` is a one-layer `LayeredView` over the context directory in
which excluded paths do not exist: COPY cannot read them, their contents never
reach a cache key, and a COPY naming one is told which pattern excluded it.
"""

from __future__ import annotations

from pathlib import Path

from pybuild.builder.dockerignore import DockerIgnore
from pybuild.cache.view import Entry, LayeredView


def find_ignore_file(context: Path, dockerfile: Path) -> Path | None:
    """`<Dockerfile>.dockerignore` beside the Dockerfile wins over the context's `.dockerignore`, as in BuildKit."""
    specific = dockerfile.with_name(dockerfile.name + ".dockerignore")
    if specific.is_file():
        return specific
    general = context / ".dockerignore"
    return general if general.is_file() else None


class ContextView(LayeredView):
    def __init__(self, root: Path, ignore: DockerIgnore | None = None, ignore_file: str = ".dockerignore"):
        super().__init__([root])
        self.ignore = ignore or DockerIgnore.empty()
        self.ignore_file = ignore_file

    def _hidden(self, parts: list[str] | tuple[str, ...]) -> bool:
        return bool(parts) and self.ignore.excluded("/".join(parts))

    def lookup(self, path: str, follow_final: bool = True) -> Entry | None:
        entry = super().lookup(path, follow_final)
        if entry is None or self._hidden(entry.path.strip("/").split("/")):
            return None
        return entry

    def listdir(self, path: str) -> list[str]:
        parts = self.resolve(path)
        names = []
        for name in super().listdir(path):
            child = "/".join([*parts, name])
            if self.ignore.excluded(child) and not self.ignore.may_contain_included(child):
                continue
            names.append(name)
        return names

    def why_missing(self, path: str) -> str | None:
        """Which .dockerignore line hides `path`, if one does."""
        parts = [p for p in path.split("/") if p not in ("", ".")]
        pattern = self.ignore.excluding_pattern("/".join(parts)) if parts else None
        if pattern is None:
            return None
        return f"it is excluded by {self.ignore_file} line {pattern.line}: {pattern}"
