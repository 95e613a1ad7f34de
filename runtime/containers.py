"""Container records: ``$PYBUILD_ROOT/containers/<id>/`` and the name registry.

One directory per container::

    config.json    what to run (written once, before the record becomes visible)
    state.json     Status created|running|exited, Pid (of the process holding the run), ExitCode,
                   OOMKilled, StartedAt, FinishedAt, Error; replaced atomically under ``lock``
    running.lock   flock held (exclusively) by the process that runs the container, from before
                   the record appears until its final state is written: a record whose lock is
                   free while its state says created/running belongs to a killed pybuild
    lock           flock serialising state changes and removal
    upper/ work/   the overlay upper and work dirs (the container's writable layer)
    container.log  the output of detached containers: one JSON object per line,
                   {"log": text, "stream": "stdout"|"stderr", "time": RFC 3339}

Names live in ``containers/names/<name>`` (a file holding the id), claimed with O_EXCL so two
`run --name` never both get one.  A record appears atomically: it is written in
``containers/.tmp-<id>`` and renamed into place with its running.lock already held.
``clean_stale`` (called by every runtime command) settles records of killed pybuild processes:
state "exited" with an unknown status, or removed entirely when the container was ``--rm``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from pybuild.errors import PybuildError

__all__ = ["Container", "ContainerStore", "ContainerNotFound", "NameInUse", "now_rfc3339",
           "NAME_RE", "generate_name"]

NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")  # docker's container name rule
_ID_RE = re.compile(r"^[0-9a-f]{64}$")
STALE_EXIT_CODE = 255  # docker's code when the runtime lost a container's status


class ContainerNotFound(PybuildError):
    """No container has this name, id or id prefix."""


class NameInUse(PybuildError):
    """``--name`` is already taken by another container."""


def _replace(path: Path, obj: dict) -> None:
    """Replace ``path`` by a rename: readers see the old or the new content, never a mix.  No
    fsync: a container's record is runtime state (a record torn by a power loss is settled or
    dropped by ``clean_stale``), and `run --rm` writes it several times per container."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
    os.replace(tmp, path)


def now_rfc3339() -> str:
    from datetime import datetime, timezone

    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


_ADJECTIVES = ("brave", "calm", "eager", "fond", "gentle", "happy", "keen", "lucid", "merry", "nimble",
               "proud", "quiet", "sharp", "swift", "tender", "vivid", "witty", "zen")
_NOUNS = ("babbage", "curie", "dijkstra", "euler", "feynman", "gauss", "hopper", "knuth", "lamport",
          "lovelace", "noether", "pike", "ritchie", "shannon", "thompson", "turing", "wirth", "yonath")


def generate_name() -> str:
    """A docker-style ``adjective_scientist`` name (uniqueness is checked when it is claimed)."""
    return f"{secrets.choice(_ADJECTIVES)}_{secrets.choice(_NOUNS)}"


@dataclass
class Container:
    id: str
    dir: Path
    config: dict

    @property
    def name(self) -> str:
        return self.config.get("Name", "")

    @property
    def upper(self) -> Path:
        return self.dir / "upper"

    @property
    def work(self) -> Path:
        return self.dir / "work"

    @property
    def log_path(self) -> Path:
        return self.dir / "container.log"

    @property
    def running_lock(self) -> Path:
        return self.dir / "running.lock"

    def state(self) -> dict:
        """The last recorded state; an unreadable file reads as an empty state."""
        try:
            with open(self.dir / "state.json", "rb") as f:
                st = json.load(f)
            return st if isinstance(st, dict) else {}
        except (OSError, ValueError):
            return {}

    def supervised(self) -> bool:
        """Whether a live process holds this container's run (its running.lock is held)."""
        try:
            fd = os.open(self.running_lock, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return False
        except BlockingIOError:
            return True
        finally:
            os.close(fd)

    def wait_unsupervised(self) -> None:
        """Block until no process holds the run any more (its final state is then written)."""
        try:
            fd = os.open(self.running_lock, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """The record's lock: state changes and removal happen under it."""
        fd = os.open(self.dir / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def set_state(self, **fields) -> dict:
        """Merge ``fields`` into state.json atomically (readers see the old or the new state)."""
        with self.locked():
            st = self.state()
            st.update(fields)
            _replace(self.dir / "state.json", st)
            return st


class ContainerStore:
    """The containers of one state directory."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.base = self.root / "containers"
        self.names = self.base / "names"

    # -- create -----------------------------------------------------------------------------
    def create(self, config: dict, name: str | None) -> tuple[Container, int]:
        """Make a record for ``config`` (state "created") and return it with the fd holding its
        running.lock (exclusively).  The holder owns the run: it must write the final state and
        then close the fd (pass it to a supervisor to hand over ownership).  ``name`` None picks
        a free generated name; a missing ``Hostname`` becomes the short id.  Raises NameInUse.  Nothing is left behind on failure."""
        self.names.mkdir(parents=True, exist_ok=True)
        cid = secrets.token_hex(32)
        tmp = self.base / f".tmp-{cid}"
        tmp.mkdir(mode=0o711)
        lock_fd = -1
        try:
            lock_fd = os.open(tmp / "running.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            (tmp / "upper").mkdir(mode=0o755)
            (tmp / "work").mkdir(mode=0o700)
            final = self.base / cid
            chosen = self._claim_name(name, cid)
            try:
                config = dict(config, Id=cid, Name=chosen, Created=now_rfc3339(),
                              Hostname=config.get("Hostname") or cid[:12])
                _replace(tmp / "config.json", config)
                _replace(tmp / "state.json", {"Status": "created"})
                os.rename(tmp, final)
            except BaseException:
                (self.names / chosen).unlink(missing_ok=True)
                raise
        except BaseException:
            if lock_fd >= 0:
                os.close(lock_fd)
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return Container(cid, final, config), lock_fd

    def _claim_name(self, name: str | None, cid: str) -> str:
        if name is not None:
            if not NAME_RE.match(name):
                raise PybuildError(f"--name {name!r}: invalid container name (letters, digits, _ . -; "
                                   "first a letter or digit)")
            if not self._try_claim(name, cid):
                other = self._read_name(name)
                raise NameInUse(f'the container name "{name}" is already in use by container '
                                f'"{other or "?"}": remove that container or choose another name')
            return name
        for i in range(64):
            candidate = generate_name() + (f"_{i}" if i >= 8 else "")
            if self._try_claim(candidate, cid):
                return candidate
        raise PybuildError("could not find a free container name")

    def _try_claim(self, name: str, cid: str) -> bool:
        try:
            fd = os.open(self.names / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        except FileExistsError:
            other = self._read_name(name)
            if other is not None and self._exists(other):
                return False
            (self.names / name).unlink(missing_ok=True)  # left by a crash: its container is gone
            return self._try_claim_once(name, cid)
        with os.fdopen(fd, "w") as f:
            f.write(cid)
        return True

    def _try_claim_once(self, name: str, cid: str) -> bool:
        try:
            fd = os.open(self.names / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            f.write(cid)
        return True

    def _exists(self, cid: str) -> bool:
        """The record exists, or is being made (its tmp dir is there)."""
        return (self.base / cid).is_dir() or (self.base / f".tmp-{cid}").is_dir()

    def _read_name(self, name: str) -> str | None:
        try:
            cid = (self.names / name).read_text().strip()
        except OSError:
            return None
        return cid if _ID_RE.match(cid) else None

    # -- look up ----------------------------------------------------------------------------
    def load(self, cid: str) -> Container | None:
        d = self.base / cid
        try:
            with open(d / "config.json", "rb") as f:
                config = json.load(f)
        except (OSError, ValueError):
            return None
        return Container(cid, d, config)

    def list(self) -> list[Container]:
        """Every container, oldest first."""
        out = []
        try:
            names = os.listdir(self.base)
        except FileNotFoundError:
            return out
        for n in names:
            if _ID_RE.match(n):
                c = self.load(n)
                if c is not None:
                    out.append(c)
        return sorted(out, key=lambda c: (c.config.get("Created", ""), c.id))

    def get(self, ref: str) -> Container:
        """By name, full id or unique id prefix (docker's rules).  Raises ContainerNotFound."""
        cid = self._read_name(ref) if NAME_RE.match(ref) else None
        if cid is not None:
            c = self.load(cid)
            if c is not None:
                return c
        if re.fullmatch(r"[0-9a-f]{1,64}", ref):
            matches = [c for c in self.list() if c.id.startswith(ref)]
            if len(matches) == 1:
                return matches[0]
            if len(matches) > 1:
                raise ContainerNotFound(f"container id prefix {ref!r} is ambiguous ({len(matches)} containers)")
        raise ContainerNotFound(f"No such container: {ref}")

    # -- remove -----------------------------------------------------------------------------
    def remove(self, c: Container) -> None:
        """Delete the record, its writable layer and its name.  The caller made sure nothing
        runs it any more.  Idempotent; a crash half-way leaves a dir ``clean_stale`` removes."""
        with contextlib.suppress(OSError):
            if self._read_name(c.name) == c.id:
                (self.names / c.name).unlink()
        doomed = self.base / f".tmp-{c.id}"
        try:
            os.rename(c.dir, doomed)
        except FileNotFoundError:
            return
        shutil.rmtree(doomed, ignore_errors=True)

    # -- crash recovery ----------------------------------------------------------------------
    def clean_stale(self) -> list[Container]:
        """Settle what killed pybuild processes left: half-made or half-removed dirs are
        removed; a created/running record without a live holder is marked exited with an
        unknown status (or removed when it was ``--rm``).  Returns the containers whose holder
        died, so the caller can release their other resources (network endpoints)."""
        settled = []
        try:
            entries = os.listdir(self.base)
        except FileNotFoundError:
            return settled
        for n in entries:
            d = self.base / n
            if n.startswith(".tmp-") or (_ID_RE.match(n) and self.load(n) is None):
                if not _lock_held(d / "running.lock"):  # half made, half removed, or torn
                    shutil.rmtree(d, ignore_errors=True)
        for c in self.list():
            st = c.state()
            if st.get("Status") not in ("created", "running") or c.supervised():
                continue
            with c.locked():
                st = c.state()
                if st.get("Status") not in ("created", "running") or c.supervised():
                    continue
            settled.append(c)
            if c.config.get("AutoRemove"):
                self.remove(c)
            else:
                c.set_state(Status="exited", ExitCode=STALE_EXIT_CODE, Pid=0, FinishedAt=now_rfc3339(),
                            Error="the pybuild process running this container was killed; exit status unknown")
        for n in os.listdir(self.names) if self.names.is_dir() else []:
            cid = self._read_name(n)
            if cid is None or not self._exists(cid):
                (self.names / n).unlink(missing_ok=True)
        return settled


def _lock_held(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
