"""Why a step missed the cache: compare it with the last build of the same step.

"The same step" is the same instruction text on the same parent (same parent
cache key). When such a step was built before with another definition, the
difference is the reason: which copied files changed, which environment
variables (build args, ENV) changed, or which other part of the step. The
record of the last build lives in `$PYBUILD_ROOT/cache/last/`, one small JSON
file per step, replaced atomically; losing it only makes reasons vaguer.
Environment values (build args may be tokens) are kept only as digests: enough
to say *which* variable changed, never what it was.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from pybuild.atomicfile import write_atomic

_FIELD_NAMES = {"args": "the command", "user": "the user", "cwd": "the working directory",
                "network": "the network mode", "dest": "the destination", "owner": "the owner",
                "chmod": "the mode", "from": "the source stage or image", "sources": "the sources",
                "path": "the path", "stdin": "the heredoc script"}


def _listed(names: list[str], limit: int = 3) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def describe_difference(old: dict[str, Any], new: dict[str, Any],
                        old_files: dict[str, str] | None, new_files: dict[str, str] | None) -> str:
    """A one-line reason, naming the first things that differ. Pure."""
    if old_files is not None and new_files is not None and old_files != new_files:
        changed = sorted(p for p in new_files.keys() & old_files.keys() if new_files[p] != old_files[p])
        added = sorted(new_files.keys() - old_files.keys())
        removed = sorted(old_files.keys() - new_files.keys())
        parts = []
        if changed:
            parts.append(f"changed: {_listed(changed)}")
        if added:
            parts.append(f"added: {_listed(added)}")
        if removed:
            parts.append(f"removed: {_listed(removed)}")
        return "copied files " + "; ".join(parts)
    if old.get("env") != new.get("env"):
        before = dict(item.split("=", 1) for item in old.get("env") or [])
        after = dict(item.split("=", 1) for item in new.get("env") or [])
        names = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
        return f"environment changed (build args or ENV): {_listed(names)}"
    fields = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k) and k not in ("env", "content"))
    if fields:
        return "changed: " + ", ".join(_FIELD_NAMES.get(f, f) for f in fields)
    if old.get("content") != new.get("content"):
        return "copied content changed"
    return SAME_INPUTS


SAME_INPUTS = "same inputs as its last build, but that result is no longer cached (pruned or removed)"


def _redacted(definition: dict) -> dict:
    """The definition with each environment value replaced by its digest."""
    env = definition.get("env")
    if not env:
        return definition
    hashed = []
    for item in env:
        name, _, value = item.partition("=")
        hashed.append(f"{name}=sha256:{hashlib.sha256(value.encode()).hexdigest()}")
    return {**definition, "env": hashed}


class MissExplainer:
    def __init__(self, root: Path):
        self.dir = Path(root) / "cache" / "last"

    def _path(self, parent_key: str, instruction: str) -> Path:
        h = hashlib.sha256(f"{parent_key}\0{instruction}".encode()).hexdigest()
        return self.dir / f"{h}.json"

    def explain(self, parent_key: str, instruction: str, definition: dict,
                files: dict[str, str] | None) -> str | None:
        """The reason this step differs from its last build, or None when it was never built here."""
        try:
            last = json.loads(self._path(parent_key, instruction).read_text())
        except (OSError, ValueError):
            return None
        reason = describe_difference(last.get("definition") or {}, _redacted(definition), last.get("files"), files)
        if reason == SAME_INPUTS and last.get("failed"):
            return "same inputs as its last attempt, which failed or was stopped"
        return reason

    def remember(self, parent_key: str, instruction: str, definition: dict, files: dict[str, str] | None,
                 *, failed: bool = False) -> None:
        """Record the inputs of this step's last run here (``failed``: it did not produce a result)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        data = json.dumps({"definition": _redacted(definition), "files": files, "failed": failed},
                          sort_keys=True).encode()
        write_atomic(self._path(parent_key, instruction), data)
