"""The build context as a read-only view, with `.dockerignore` applied.

A `ContextView` is a one-layer `LayeredView` over the context directory in
which excluded paths do not exist: COPY cannot read them, their contents never
reach a cache key, and a COPY naming one is told which pattern excluded it.
"""

from __future__ import annotations

import stat
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

    def _hidden(self, rel: str, is_dir: bool) -> bool:
        """Excluded, and (for a directory) no exception pattern can bring back anything inside it:
        an excluded directory with re-included files stays, holding only those files."""
        if not rel or not self.ignore.excluded(rel):
            return False
        return not (is_dir and self.ignore.may_contain_included(rel))

    def lookup(self, path: str, follow_final: bool = True) -> Entry | None:
        entry = super().lookup(path, follow_final)
        if entry is None or self._hidden(entry.path.strip("/"), stat.S_ISDIR(entry.st.st_mode)):
            return None
        return entry

    def listdir(self, path: str) -> list[str]:
        parts = self.resolve(path)
        names = []
        for name in super().listdir(path):
            hit = self._lookup_raw([*parts, name])
            if hit is not None and self._hidden("/".join([*parts, name]), stat.S_ISDIR(hit[1].st_mode)):
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
