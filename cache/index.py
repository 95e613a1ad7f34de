"""Step cache index: ``root/cache/keys/<key>.json`` -> CacheRecord.

Records are written atomically (temp file + fsync + rename + dir fsync), so a
torn write leaves the previous record.  A record whose layer blob is missing
from the content store is reported as a miss.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from pybuild.atomicfile import write_atomic

from .content import ContentStore
from .layers import LayerBlob

__all__ = ["CacheRecord", "CacheIndex", "rfc3339_now"]

_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:+=-]{0,200}$")


def rfc3339_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass
class CacheRecord:
    key: str
    layer: LayerBlob | None
    created: str  # RFC3339
    duration_s: float
    description: str


def _check_key(key: str) -> str:
    if not isinstance(key, str) or not _KEY_RE.match(key) or ".." in key:
        raise ValueError(f"invalid cache key {key!r}")
    return key


class CacheIndex:
    def __init__(self, root: Path, content: ContentStore | None = None):
        self.root = Path(root)
        self.content = content if content is not None else ContentStore(self.root)
        self._dir = self.root / "cache" / "keys"
        self._dir.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self._dir / f"{_check_key(key)}.json"

    def get(self, key: str) -> CacheRecord | None:
        """The record for ``key``, or None: a missing, unreadable or mismatched record, or one
        whose layer blob is gone from the content store, is a miss."""
        try:
            rec = self.read(key)
        except ValueError:
            return None  # unreadable record: treat as a miss
        if rec is None:
            return None
        if rec.layer is not None:
            try:
                if not self.content.exists(rec.layer.digest):
                    return None
            except ValueError:
                return None
        return rec

    def put(self, key: str, record: CacheRecord) -> None:
        final = self._path(key)
        if record.key != key:
            raise ValueError(f"record key {record.key!r} does not match {key!r}")
        obj = {
            "key": record.key,
            "layer": None if record.layer is None else {
                "digest": record.layer.digest,
                "diff_id": record.layer.diff_id,
                "size": record.layer.size,
                "media_type": record.layer.media_type,
            },
            "created": record.created,
            "duration_s": record.duration_s,
            "description": record.description,
        }
        data = json.dumps(obj, indent=1, sort_keys=True).encode() + b"\n"
        write_atomic(final, data)

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    # -- added for fsck / gc ------------------------------------------------------------
    def keys(self) -> list[str]:
        """Keys of every record file present (readable or not), sorted."""
        out = []
        for p in self._dir.iterdir():
            if p.name.endswith(".json") and not p.name.startswith("."):
                key = p.name[: -len(".json")]
                if _KEY_RE.match(key) and ".." not in key:
                    out.append(key)
        return sorted(out)

    def read(self, key: str) -> CacheRecord | None:
        """The record for ``key`` as stored, without :meth:`get`'s check that its layer blob
        exists.  None if there is no record; ``ValueError`` if the file is unreadable."""
        try:
            with open(self._path(key), "rb") as f:
                obj = json.load(f)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:  # torn or garbage JSON
            raise ValueError(f"cache record {key}: unreadable: {e}") from None
        try:
            layer = obj.get("layer")
            rec = CacheRecord(
                key=obj["key"],
                layer=LayerBlob(
                    digest=layer["digest"], diff_id=layer["diff_id"],
                    size=int(layer["size"]), media_type=layer["media_type"],
                ) if layer is not None else None,
                created=obj["created"],
                duration_s=float(obj["duration_s"]),
                description=obj.get("description", ""),
            )
        except (KeyError, TypeError, AttributeError, ValueError) as e:
            raise ValueError(f"cache record {key}: malformed: {e}") from None
        if rec.key != key:
            raise ValueError(f"cache record {key}: names key {rec.key!r}")
        return rec
