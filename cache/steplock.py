"""One builder at a time per cache key, across pybuild processes on one store.

Two builds of the same Dockerfile started together (two CI jobs on one runner) would
both miss the cache for a step and both run it; with a RUN whose output is not
reproducible they would then write different layers under one key, and the later
steps of one build would be the other's records, stacked on a layer they were not built on.
A build that misses takes this lock for the step's key, looks in the cache again once
it holds it, and runs the step only if nobody filled the key meanwhile: the second
build waits, then reuses the first build's result, as BuildKit's daemon merges
identical vertices of concurrent builds.

Contract:
  * ``StepLock(root, key)`` is an exclusive flock(2) on ``root/locks/steps/<key hex>``,
    held by one open file description: two threads of one process exclude each other
    too (the solver has its own per-key lock before this one, so they never ask twice).
  * The file holds the holder's pid (for "waiting for pid N" messages) and is unlinked
    by the holder while it still holds the lock, so lock files do not pile up; a waiter
    that then gets the lock on the unlinked inode sees that the path no longer names it
    and tries again (the usual unlink-under-flock protocol).
  * A killed holder's lock dies with it (the kernel drops flock locks); its file is left
    behind, empty of meaning, and the next taker of that key removes it.
  * Waiting polls (``poll_s``) so that ``cancelled()`` can end it: a build stopped with
    Ctrl-C does not stay blocked behind another process's step.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path
from typing import Callable

LOCK_DIR = Path("locks") / "steps"


class StepLockCancelled(Exception):
    """``cancelled()`` became true while waiting for the lock."""


class StepLock:
    def __init__(self, root: Path | str, key: str):
        self.path = Path(root) / LOCK_DIR / key.removeprefix("sha256:")
        self._fd: int | None = None

    def acquire(self, *, on_wait: Callable[[int | None], None] | None = None,
                cancelled: Callable[[], bool] = lambda: False, poll_s: float = 0.1) -> bool:
        """Take the lock; True when another process held it first (its result may be in the cache
        now). ``on_wait(pid)`` is called once, when the lock is found held (pid of the holder,
        None if it cannot be read)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        waited = False
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                while True:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if not waited:
                            waited = True
                            if on_wait is not None:
                                on_wait(_read_pid(fd))
                        if cancelled():
                            raise StepLockCancelled(f"stopped waiting for {self.path}")
                        time.sleep(poll_s)
                if _same_file(fd, self.path):
                    os.ftruncate(fd, 0)
                    os.pwrite(fd, str(os.getpid()).encode(), 0)
                    self._fd = fd
                    return waited
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)  # the holder unlinked it while we waited: lock the new file instead

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            if _same_file(fd, self.path):
                os.unlink(self.path)  # still holding it: nobody can take this inode after us
        finally:
            os.close(fd)


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (held.st_dev, held.st_ino)


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode().strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None
