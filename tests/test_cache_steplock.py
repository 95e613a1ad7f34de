"""cache/steplock.py: one builder per cache key across processes (the contract in its docstring)."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time

import pytest

from pybuild.cache.steplock import LOCK_DIR, StepLock, StepLockCancelled

KEY = "sha256:" + "ab" * 32

_HOLDER = """
import sys, time
from pybuild.cache.steplock import StepLock
lock = StepLock(sys.argv[1], sys.argv[2])
lock.acquire()
print("held", flush=True)
sys.stdin.readline()          # hold until told (or killed)
lock.release()
"""


def _holder(root):
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(root), KEY], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_free_lock_is_taken_at_once_and_leaves_no_file(tmp_path):
    lock = StepLock(tmp_path, KEY)
    assert lock.acquire(on_wait=lambda pid: pytest.fail("nobody holds it")) is False
    path = tmp_path / LOCK_DIR / KEY.removeprefix("sha256:")
    assert path.read_text() == str(__import__("os").getpid())
    lock.release()
    assert not path.exists()
    lock.release()  # idempotent


def test_waiter_names_the_holder_and_gets_the_lock_when_it_is_released(tmp_path):
    holder = _holder(tmp_path)
    seen: list[int | None] = []
    result: list[bool] = []
    lock = StepLock(tmp_path, KEY)
    t = threading.Thread(target=lambda: result.append(lock.acquire(on_wait=seen.append, poll_s=0.02)))
    t.start()
    deadline = time.monotonic() + 10
    while not seen and time.monotonic() < deadline:
        time.sleep(0.01)
    assert seen == [holder.pid] and t.is_alive()  # still waiting
    holder.communicate("go\n", timeout=10)         # the holder releases (and unlinks its file)
    t.join(10)
    assert result == [True]                        # it waited: the caller looks in the cache again
    path = tmp_path / LOCK_DIR / KEY.removeprefix("sha256:")
    assert path.exists()                           # a new file: the old inode was unlinked
    lock.release()
    assert not path.exists()


def test_a_killed_holder_does_not_block(tmp_path):
    holder = _holder(tmp_path)
    holder.send_signal(signal.SIGKILL)
    holder.wait(10)
    lock = StepLock(tmp_path, KEY)
    assert lock.acquire(on_wait=lambda pid: pytest.fail("the kernel dropped the dead holder's lock")) is False
    lock.release()
    assert not (tmp_path / LOCK_DIR).joinpath(KEY.removeprefix("sha256:")).exists()


def test_waiting_ends_when_cancelled(tmp_path):
    holder = _holder(tmp_path)
    try:
        cancel = threading.Event()
        lock = StepLock(tmp_path, KEY)
        with pytest.raises(StepLockCancelled):
            lock.acquire(on_wait=lambda pid: cancel.set(), cancelled=cancel.is_set, poll_s=0.01)
        assert lock._fd is None  # nothing held, nothing leaked
    finally:
        holder.kill()
        holder.wait(10)
