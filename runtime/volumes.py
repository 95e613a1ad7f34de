"""Named volumes: ``$PYBUILD_ROOT/volumes/<name>/_data``, bind-mounted into containers.

A volume is created on first use.  As docker does, a new volume is seeded with what the
image has at the mount point (files, modes, owners, symlinks); an existing one is used as it
is.  Creation is atomic: the volume is filled in ``volumes/.tmp-<random>`` and renamed into
place under ``volumes/.lock``, so a crash never leaves a half-seeded volume under its name.
Volumes outlive containers; ``remove`` refuses one a container still uses.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import secrets
import shutil
import stat
from pathlib import Path
from typing import Callable, Iterator

from pybuild.errors import PybuildError

__all__ = ["ANONYMOUS_LABEL", "VolumeError", "VolumeStore", "VOLUME_NAME_RE", "seed_from_image"]

VOLUME_NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]+$")  # docker's local volume name rule
ANONYMOUS_LABEL = "com.docker.volume.anonymous"  # docker 23+ marks anonymous volumes with this label
_ANONYMOUS_MARK = "anonymous"  # ``volumes/<name>/anonymous``: an empty file, next to ``_data``


class VolumeError(PybuildError):
    pass


class VolumeStore:
    def __init__(self, root: Path):
        self.base = Path(root) / "volumes"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.base.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.base / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    @staticmethod
    def check_name(name: str) -> None:
        if not VOLUME_NAME_RE.match(name):
            raise VolumeError(f"invalid volume name {name!r}: use letters, digits, _ . - "
                              "(at least 2 characters, starting with a letter or digit)")

    def data(self, name: str) -> Path:
        self.check_name(name)
        return self.base / name / "_data"

    def exists(self, name: str) -> bool:
        return self.data(name).is_dir()

    def ensure(self, name: str, seed: Callable[[Path], None] | None = None, *, anonymous: bool = False) -> Path:
        """The volume's data dir, created if missing (then ``seed(data_dir)`` fills it, e.g.
        with the image's content at the mount point).  Idempotent; safe against concurrent
        callers; a failed seed leaves no volume.  ``anonymous`` marks a volume this call creates
        as anonymous (``-v /path``, an image's VOLUME): only those go with ``volume prune``."""
        data = self.data(name)
        if data.is_dir():
            return data
        with self._locked():
            if data.is_dir():
                return data
            tmp = self.base / f".tmp-{secrets.token_hex(8)}"
            try:
                (tmp / "_data").mkdir(parents=True, mode=0o755)
                os.chmod(tmp, 0o701)
                if anonymous:
                    (tmp / _ANONYMOUS_MARK).touch(0o600)
                if seed is not None:
                    seed(tmp / "_data")
                os.rename(tmp, self.base / name)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        return data

    def is_anonymous(self, name: str) -> bool:
        """Was the volume created anonymous?  Volumes made before the mark existed count as named
        (as docker treats volumes older than its label), so prune without --all keeps them."""
        self.check_name(name)
        return (self.base / name / _ANONYMOUS_MARK).is_file()

    def list(self) -> list[str]:
        try:
            names = os.listdir(self.base)
        except FileNotFoundError:
            return []
        return sorted(n for n in names if VOLUME_NAME_RE.match(n) and (self.base / n / "_data").is_dir())

    def remove(self, name: str, users: list[str]) -> None:
        """Delete volume ``name``; ``users`` are the containers still using it (refused if any)."""
        if not self.exists(name):
            raise VolumeError(f"no such volume: {name}")
        if users:
            raise VolumeError(f"volume {name} is in use by container(s) {', '.join(users)}: remove them first")
        with self._locked():
            doomed = self.base / f".tmp-rm-{secrets.token_hex(8)}"
            os.rename(self.base / name, doomed)
            shutil.rmtree(doomed, ignore_errors=True)

    def clean_stale(self) -> None:
        """Remove tmp dirs of creations/removals a crash interrupted."""
        with self._locked():
            for n in os.listdir(self.base):
                if n.startswith(".tmp-"):
                    shutil.rmtree(self.base / n, ignore_errors=True)


def seed_from_image(lowerdirs: list[Path], target: str, dest: Path) -> None:
    """Copy what the image (its snapshot dirs, top-most first) has at directory ``target`` into
    the existing dir ``dest``: the merged view overlayfs would show (whiteouts and opaque dirs
    applied, symlinks never followed below ``target``), with modes, owners and times.  Nothing
    is copied when the image has no directory there; sockets and fifos are skipped."""
    from pybuild.cache.view import LayeredView

    view = LayeredView(lowerdirs)
    top = view.lookup(target)
    if top is None or not stat.S_ISDIR(top.st.st_mode):
        return
    prefix = top.path.rstrip("/") + "/"
    dirs = [(str(dest), top.st)]
    for entry in view.walk(target):
        rel = entry.path[len(prefix):] if entry.path.startswith(prefix) else entry.path.lstrip("/")
        d = os.path.join(dest, rel)
        st = entry.st
        if stat.S_ISDIR(st.st_mode):
            os.mkdir(d, 0o700)
            dirs.append((d, st))
            continue
        if stat.S_ISLNK(st.st_mode):
            os.symlink(os.readlink(entry.real), d)
        elif stat.S_ISREG(st.st_mode):
            shutil.copyfile(entry.real, d, follow_symlinks=False)
        elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
            os.mknod(d, st.st_mode, st.st_rdev)
        else:
            continue
        _copy_meta(d, st)
    for d, st in reversed(dirs):  # after their contents, so the times stick
        _copy_meta(d, st)


def _copy_meta(path: str, st: os.stat_result) -> None:
    os.chown(path, st.st_uid, st.st_gid, follow_symlinks=False)
    if not stat.S_ISLNK(st.st_mode):
        os.chmod(path, stat.S_IMODE(st.st_mode))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
