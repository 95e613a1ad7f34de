"""Step cache index: an SQLite database at ``root/cache/index.db`` (WAL mode).

Two tables live in it:

* ``records``: step cache key -> :class:`CacheRecord` (the layer descriptor the step produced,
  or none for a step that changed nothing), plus when the record was last used and how often;
* ``context_files``: the content digest of a build-context file, keyed by its path and
  validated by its stat stamp (size, mtime, ctime, inode, device), so an unchanged context is
  not re-read on every build (see :class:`FileStamp`).

Contract:

* Shared safely by concurrent builds, threads and processes: every connection sets a busy
  timeout, writes are short ``BEGIN IMMEDIATE`` transactions, readers never block writers
  (WAL).  Each thread (and each process after a fork) gets its own connection.
* ``put`` is atomic and durable against a crash of the process (a torn write leaves the old
  record); after a power loss the last records may be missing, never half-written.  The blobs
  a record names are committed (fsync'ed) before the record is written, so a record never
  survives its blob by a crash.
* ``get`` reports a miss for a record whose layer blob is gone from the content store.
* Deleted rows leave free pages in the file, which SQLite reuses but never gives back:
  ``pybuild prune`` calls :meth:`CacheIndex.vacuum` (under the GC's exclusive lock) after
  deleting records, so the file shrinks; ``du`` predicts by how much (:meth:`vacuumed_size`).
* Stores made by older versions kept one JSON file per key under ``cache/keys/``.  They are
  imported into the database the first time a store is opened, then the directory is removed:
  importing is cheap (one transaction) and keeps every cached step of an existing store, where
  dropping them would silently force a full rebuild.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable

from pybuild.errors import PybuildError

from .content import ContentStore
from .layers import LayerBlob

__all__ = ["CacheRecord", "CacheIndex", "IndexEntry", "FileStamp", "CacheIndexError", "rfc3339_now",
           "DB_NAME", "SCHEMA_VERSION"]

DB_NAME = Path("cache") / "index.db"
SCHEMA_VERSION = 1
BUSY_TIMEOUT_MS = 60_000  # a build waits this long for another build's write before failing

_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:+=-]{0,200}$")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    key               TEXT PRIMARY KEY,
    layer_digest      TEXT,
    layer_diff_id     TEXT,
    layer_size        INTEGER,
    layer_media_type  TEXT,
    created           TEXT NOT NULL,
    duration_s        REAL NOT NULL,
    description       TEXT NOT NULL DEFAULT '',
    last_used         TEXT,
    use_count         INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS context_files (
    path      TEXT PRIMARY KEY,
    dev       INTEGER NOT NULL,
    ino       INTEGER NOT NULL,
    size      INTEGER NOT NULL,
    mtime_ns  INTEGER NOT NULL,
    ctime_ns  INTEGER NOT NULL,
    digest    TEXT NOT NULL
);
"""


class CacheIndexError(PybuildError):
    """The index database cannot be used (made by a newer pybuild, not a database, ...)."""


def rfc3339_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass
class CacheRecord:
    key: str
    layer: LayerBlob | None
    created: str  # RFC3339
    duration_s: float
    description: str


@dataclass(frozen=True)
class IndexEntry:
    """A record with its bookkeeping: when a build last reused it (None: never) and how often."""

    record: CacheRecord
    last_used: str | None
    use_count: int


@dataclass(frozen=True)
class FileStamp:
    """What identifies one version of a file without reading it.  A cached digest is trusted only
    while all of these are unchanged: rewriting a file in place changes ctime even when size and
    mtime are put back, and replacing it (rename over) changes the inode."""

    path: str  # absolute
    dev: int
    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def of(cls, path: str, st: os.stat_result) -> "FileStamp":
        return cls(path, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _check_key(key: str) -> str:
    if not isinstance(key, str) or not _KEY_RE.match(key) or ".." in key:
        raise ValueError(f"invalid cache key {key!r}")
    return key


def _row_to_record(row: tuple) -> CacheRecord:
    """A ``records`` row (key, layer_*, created, duration_s, description) as a CacheRecord;
    ValueError if its columns are inconsistent (e.g. hand-edited)."""
    key, digest, diff_id, size, media_type, created, duration_s, description = row[:8]
    layer_cols = (digest, diff_id, size, media_type)
    if all(c is None for c in layer_cols):
        layer = None
    elif any(c is None for c in layer_cols) or not isinstance(size, int):
        raise ValueError(f"cache record {key}: incomplete layer descriptor")
    else:
        layer = LayerBlob(digest=digest, diff_id=diff_id, size=size, media_type=media_type)
    if not isinstance(created, str) or not isinstance(duration_s, (int, float)):
        raise ValueError(f"cache record {key}: malformed")
    return CacheRecord(key=key, layer=layer, created=created, duration_s=float(duration_s),
                       description=description or "")


def _legacy_record(obj, key: str) -> CacheRecord:
    """A record from a ``cache/keys/<key>.json`` file of an older store."""
    try:
        layer = obj.get("layer")
        rec = CacheRecord(
            key=obj["key"],
            layer=LayerBlob(digest=layer["digest"], diff_id=layer["diff_id"], size=int(layer["size"]),
                            media_type=layer["media_type"]) if layer is not None else None,
            created=obj["created"],
            duration_s=float(obj["duration_s"]),
            description=obj.get("description", ""),
        )
    except (KeyError, TypeError, AttributeError, ValueError) as e:
        raise ValueError(f"legacy cache record {key}: malformed: {e}") from None
    if rec.key != key:
        raise ValueError(f"legacy cache record {key}: names key {rec.key!r}")
    return rec


_RECORD_COLUMNS = ("key, layer_digest, layer_diff_id, layer_size, layer_media_type, created, duration_s, "
                   "description")


class CacheIndex:
    """The step cache index of one state directory (see the module docstring for the contract)."""

    def __init__(self, root: Path, content: ContentStore | None = None):
        self.root = Path(root)
        self.content = content if content is not None else ContentStore(self.root)
        self.path = self.root / DB_NAME
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[sqlite3.Connection] = []
        self._create_schema()
        self._import_legacy()

    def _create_schema(self) -> None:
        conn = self._conn()
        if conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION:
            return  # the usual case: no write transaction just to open the store
        with self._write(conn):
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise CacheIndexError(f"{self.path}: made by a newer pybuild (schema {version}, "
                                      f"this one knows {SCHEMA_VERSION})")
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    # -- connections ----------------------------------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        """This thread's connection; a new one after a fork (SQLite connections must not cross it)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None and self._local.pid == os.getpid():
            return conn
        try:
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                                   check_same_thread=True)
            conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise CacheIndexError(f"{self.path}: cannot switch to WAL mode (got {mode})")
            # NORMAL is crash-safe in WAL mode; only a power loss may undo the last commits.
            conn.execute("PRAGMA synchronous=NORMAL")
        except sqlite3.DatabaseError as exc:
            raise CacheIndexError(f"cache index {self.path}: {exc} (removing the file resets the build "
                                  "cache; images are not affected)") from None
        self._local.conn, self._local.pid = conn, os.getpid()
        with self._lock:
            self._connections.append(conn)
        return conn

    class _write:
        """``with self._write(conn):`` one short BEGIN IMMEDIATE transaction (commit or rollback)."""

        def __init__(self, conn: sqlite3.Connection):
            self.conn = conn

        def __enter__(self) -> sqlite3.Connection:
            self.conn.execute("BEGIN IMMEDIATE")
            return self.conn

        def __exit__(self, exc_type, exc, tb) -> None:
            if exc_type is None:
                self.conn.execute("COMMIT")
            else:
                self.conn.execute("ROLLBACK")

    def close(self) -> None:
        """Close every connection this object opened (in any thread).  Optional: connections also
        close when the object is collected."""
        with self._lock:
            conns, self._connections = self._connections, []
        for c in conns:
            try:
                c.close()
            except sqlite3.ProgrammingError:
                pass  # closed from another thread already
        self._local = threading.local()

    # -- records --------------------------------------------------------------------------------
    def get(self, key: str) -> CacheRecord | None:
        """The record for ``key``, or None: a missing or malformed record, or one whose layer blob
        is gone from the content store, is a miss.  A hit is counted as a use (``last_used``)."""
        try:
            rec = self.read(key)
        except ValueError:
            return None
        if rec is None:
            return None
        if rec.layer is not None:
            try:
                if not self.content.exists(rec.layer.digest):
                    return None
            except ValueError:
                return None
        self.touch(key)
        return rec

    def touch(self, key: str) -> None:
        """Note that a build reused ``key`` now (for ``du`` and pruning by age); best effort."""
        try:
            with self._write(self._conn()) as c:
                c.execute("UPDATE records SET last_used = ?, use_count = use_count + 1 WHERE key = ?",
                          (rfc3339_now(), key))
        except sqlite3.OperationalError:
            pass  # read-only store or a lock held too long: the use is just not counted

    def put(self, key: str, record: CacheRecord) -> None:
        """Insert or replace the record for ``key``, atomically."""
        _check_key(key)
        if record.key != key:
            raise ValueError(f"record key {record.key!r} does not match {key!r}")
        self.put_many([record])

    def put_many(self, records: Iterable[CacheRecord]) -> None:
        """Insert or replace several records in one transaction (all or none)."""
        rows = []
        for r in records:
            _check_key(r.key)
            layer = r.layer
            rows.append((r.key, layer.digest if layer else None, layer.diff_id if layer else None,
                         layer.size if layer else None, layer.media_type if layer else None,
                         r.created, float(r.duration_s), r.description or ""))
        if not rows:
            return
        with self._write(self._conn()) as c:
            c.executemany(
                f"INSERT INTO records ({_RECORD_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT(key) DO UPDATE SET layer_digest = excluded.layer_digest, "
                "layer_diff_id = excluded.layer_diff_id, layer_size = excluded.layer_size, "
                "layer_media_type = excluded.layer_media_type, created = excluded.created, "
                "duration_s = excluded.duration_s, description = excluded.description", rows)

    def delete(self, key: str) -> None:
        with self._write(self._conn()) as c:
            c.execute("DELETE FROM records WHERE key = ?", (key,))

    def delete_many(self, keys: Iterable[str]) -> None:
        """Delete the records of ``keys`` (absent ones are ignored) in one transaction.  The
        rows' pages become free pages of the file: :meth:`vacuum` gives the space back."""
        rows = [(k,) for k in keys]
        if rows:
            with self._write(self._conn()) as c:
                c.executemany("DELETE FROM records WHERE key = ?", rows)

    def keys(self) -> list[str]:
        """Keys of every record present (readable or not), sorted."""
        return [k for (k,) in self._conn().execute("SELECT key FROM records ORDER BY key")]

    def read(self, key: str) -> CacheRecord | None:
        """The record for ``key`` as stored, without :meth:`get`'s check that its layer blob
        exists.  None if there is no record; ``ValueError`` if the row is malformed."""
        row = self._conn().execute(f"SELECT {_RECORD_COLUMNS} FROM records WHERE key = ?", (key,)).fetchone()
        return None if row is None else _row_to_record(row)

    def entries(self) -> list[IndexEntry | tuple[str, str]]:
        """Every record with its use bookkeeping, sorted by key.  A malformed row comes back as
        ``(key, reason)`` instead, so callers (fsck, du) can report it."""
        out: list[IndexEntry | tuple[str, str]] = []
        for row in self._conn().execute(f"SELECT {_RECORD_COLUMNS}, last_used, use_count FROM records "
                                        "ORDER BY key"):
            try:
                out.append(IndexEntry(_row_to_record(row), row[8], int(row[9] or 0)))
            except ValueError as exc:
                out.append((row[0], str(exc)))
        return out

    def check(self) -> list[str]:
        """Problems SQLite itself finds in the database file (``PRAGMA integrity_check``)."""
        try:
            rows = self._conn().execute("PRAGMA integrity_check").fetchall()
        except sqlite3.DatabaseError as exc:
            return [str(exc)]
        return [r[0] for r in rows if r[0] != "ok"]

    def vacuum(self) -> bool:
        """Give the pages of deleted rows back to the file system: VACUUM rebuilds the database
        without its free pages, then a TRUNCATE checkpoint copies the result from the write-ahead
        log into the file, cuts the file to its new length and empties the log.  Call it with no
        build running (``prune`` holds the GC's exclusive lock): VACUUM waits for other writers,
        and a reader's open transaction keeps the log from being checkpointed (the file then
        shrinks at a later checkpoint).  Returns whether the checkpoint was complete."""
        conn = self._conn()
        try:
            conn.execute("VACUUM")
            busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        except sqlite3.OperationalError as exc:
            raise CacheIndexError(f"cache index {self.path}: vacuum failed: {exc}") from None
        return not busy

    def vacuumed_size(self, *, delete: Iterable[str] = (), forget_files: Iterable[str] = (),
                      clear_file_digests: bool = False) -> int:
        """Bytes the database file would take after deleting the records ``delete`` and the
        digests of ``forget_files`` (every one with ``clear_file_digests``) and a :meth:`vacuum`
        (``du`` shows the difference as reclaimable).  Reads only: the work is done on a copy
        in memory, which VACUUM rebuilds page for page as it would the file."""
        src = self._conn()
        mem = sqlite3.connect(":memory:", isolation_level=None)
        try:
            page_size = src.execute("PRAGMA page_size").fetchone()[0]
            mem.execute(f"PRAGMA page_size = {int(page_size)}")
            src.backup(mem)
            mem.execute("BEGIN")
            mem.executemany("DELETE FROM records WHERE key = ?", ((k,) for k in delete))
            if clear_file_digests:
                mem.execute("DELETE FROM context_files")
            else:
                mem.executemany("DELETE FROM context_files WHERE path = ?", ((p,) for p in forget_files))
            mem.execute("COMMIT")
            mem.execute("VACUUM")
            return mem.execute("PRAGMA page_count").fetchone()[0] * mem.execute("PRAGMA page_size").fetchone()[0]
        finally:
            mem.close()

    def files(self) -> list[Path]:
        """The database's files on disk (the db, its WAL and shared-memory index), for ``du``."""
        return [p for p in (self.path, self.path.with_name(self.path.name + "-wal"),
                            self.path.with_name(self.path.name + "-shm")) if p.exists()]

    # -- context file digests --------------------------------------------------------------------
    def file_digests(self, directory: str) -> dict[str, tuple[FileStamp, str]]:
        """Every cached (stamp, digest) for files under the absolute ``directory``, by path."""
        prefix = directory.rstrip("/") + "/"
        if not _storable(prefix):
            return {}
        upper = prefix[:-1] + chr(ord("/") + 1)  # every path starting with prefix sorts below this
        rows = self._conn().execute(
            "SELECT path, dev, ino, size, mtime_ns, ctime_ns, digest FROM context_files "
            "WHERE path >= ? AND path < ?", (prefix, upper))
        return {r[0]: (FileStamp(*r[:6]), r[6]) for r in rows}

    def put_file_digests(self, items: Iterable[tuple[FileStamp, str]]) -> None:
        """Remember digests of files (one transaction); a path's older entry is replaced."""
        rows = [(s.path, s.dev, s.ino, s.size, s.mtime_ns, s.ctime_ns, d) for s, d in items if _storable(s.path)]
        if not rows:
            return
        with self._write(self._conn()) as c:
            c.executemany("INSERT OR REPLACE INTO context_files (path, dev, ino, size, mtime_ns, ctime_ns, digest) "
                          "VALUES (?, ?, ?, ?, ?, ?, ?)", rows)

    def file_digest_count(self) -> int:
        return self._conn().execute("SELECT count(*) FROM context_files").fetchone()[0]

    def missing_files(self) -> list[str]:
        """Paths with a remembered digest whose file no longer exists (reads only)."""
        gone = []
        for (path,) in self._conn().execute("SELECT path FROM context_files"):
            try:
                os.lstat(path)
            except FileNotFoundError:
                gone.append(path)
            except OSError:
                continue  # unreadable now (permissions, a stale mount): keep, it costs little
        return gone

    def forget_files(self, paths: Iterable[str]) -> int:
        """Drop the remembered digests of ``paths`` (one transaction); returns how many were given."""
        rows = [(p,) for p in paths if _storable(p)]
        if rows:
            with self._write(self._conn()) as c:
                c.executemany("DELETE FROM context_files WHERE path = ?", rows)
        return len(rows)

    def forget_missing_files(self) -> int:
        """Drop remembered digests of files that no longer exist (contexts in deleted temp dirs
        would otherwise pile up); returns how many were dropped."""
        return self.forget_files(self.missing_files())

    def clear_file_digests(self) -> int:
        """Forget every cached context file digest (``prune -a``); returns how many there were."""
        with self._write(self._conn()) as c:
            return c.execute("DELETE FROM context_files").rowcount

    # -- older stores ------------------------------------------------------------------------------
    def _import_legacy(self) -> None:
        """Move ``cache/keys/*.json`` (the pre-SQLite index) into the database, once.  Unreadable
        files are skipped (they were misses before too).  Concurrent openers may both import:
        the inserts do not replace newer records, and removing the directory is idempotent."""
        legacy = self.root / "cache" / "keys"
        if not legacy.is_dir():
            return
        records = []
        for p in sorted(legacy.glob("*.json")):
            key = p.name[: -len(".json")]
            if not _KEY_RE.match(key) or ".." in key:
                continue
            try:
                records.append(_legacy_record(json.loads(p.read_bytes()), key))
            except (OSError, ValueError):
                continue
        rows = [(r.key, r.layer.digest if r.layer else None, r.layer.diff_id if r.layer else None,
                 r.layer.size if r.layer else None, r.layer.media_type if r.layer else None,
                 r.created, r.duration_s, r.description) for r in records]
        with self._write(self._conn()) as c:
            c.executemany(f"INSERT OR IGNORE INTO records ({_RECORD_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                          rows)
        shutil.rmtree(legacy, ignore_errors=True)


def _storable(path: str) -> bool:
    """Whether ``path`` fits the TEXT column: a file name that is not UTF-8 (lone surrogates from
    os.*, PEP 383) does not, so its digest is not remembered and is computed on each build."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
