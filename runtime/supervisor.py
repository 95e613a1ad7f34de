"""The per-container process of `run -d`: ``python -m pybuild.runtime.supervisor ROOT ID LOCK_FD READY_FD``.

Started by `pybuild run -d`, which has already made the record and holds its running.lock
(fd LOCK_FD, inherited: the lock now belongs to both, and stays held as long as this process
lives).  The supervisor detaches (new session, then a second fork so it is nobody's child
but init's), runs the container with ``launch.execute`` and writes its output to
``container.log`` (see ``logs``).  It reports on READY_FD one line, ``ok`` once the
container's command is started or ``error <message>`` when it could not start, then closes it.
When the container has exited and its state is written, it removes the record if it was
``--rm``, and exits.  If the supervisor is killed, the container dies with it (the sandbox's
init has PDEATHSIG) and the next pybuild command settles the record.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path

__all__ = ["main"]


class _Ready:
    """The READY_FD line: written once (the first report wins), then the fd is closed."""

    def __init__(self, fd: int):
        self.fd = fd
        self._lock = threading.Lock()

    def report(self, text: str) -> None:
        with self._lock:
            if self.fd < 0:
                return
            try:
                os.write(self.fd, (text.replace("\n", " ") + "\n").encode())
            except OSError:
                pass
            os.close(self.fd)
            self.fd = -1


def supervise(root: Path, cid: str, ready: _Ready) -> int:
    from pybuild.errors import PybuildError
    from pybuild.store import Store

    from . import launch
    from .containers import ContainerStore
    from .logs import LogWriter, pump
    from .tty import Pty

    store = Store.open(root)
    containers = ContainerStore(root)
    c = containers.load(cid)
    if c is None:
        ready.report(f"error container {cid} vanished")
        return 125
    log = LogWriter(c.log_path)
    lowerdirs = [Path(p) for p in c.config["LowerDirs"]]
    done = threading.Event()
    pty = None
    pumper = None
    devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    try:
        if c.config.get("Tty"):
            pty = Pty()
            pty.start(None, lambda data: log.write("stdout", data), raw=False)
            stdio = (pty.slave, pty.slave, pty.slave)
            to_close = []
        else:
            out_r, out_w = os.pipe2(os.O_CLOEXEC)
            err_r, err_w = os.pipe2(os.O_CLOEXEC)
            pumper = threading.Thread(target=pump, args=({out_r: "stdout", err_r: "stderr"}, log), daemon=True)
            pumper.start()
            stdio = (devnull, out_w, err_w)
            to_close = [out_w, err_w]

        def watch() -> None:
            if launch.wait_started(os.getpid(), done=done.is_set) is not None:
                ready.report("ok")

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        try:
            status = launch.execute(store, c, lowerdirs, stdin=stdio[0], stdout=stdio[1], stderr=stdio[2])
            code = status.code
        except PybuildError as e:
            log.write("stderr", f"pybuild: {e}\n".encode())
            done.set()
            watcher.join()
            ready.report(f"error {e}")
            code = 125
        finally:
            done.set()
            for fd in to_close:
                os.close(fd)
        watcher.join()
        ready.report("ok")  # exited before the watcher saw it start: it did run
        if pty is not None:
            pty.finish()
        if pumper is not None:
            pumper.join()
    finally:
        log.close()
        os.close(devnull)
    if c.config.get("AutoRemove"):
        launch.remove(store, containers, c, force=False)  # exited: our own lock does not stop it
    return code


def main(argv: list[str]) -> int:
    root, cid, lock_fd, ready_fd = Path(argv[1]), argv[2], int(argv[3]), int(argv[4])
    os.setsid()
    if os.fork() > 0:  # the second fork: the supervisor is reparented to init at once
        os._exit(0)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)
    os.chdir("/")
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    ready = _Ready(ready_fd)
    try:
        code = supervise(root, cid, ready)
    except BaseException as e:  # noqa: BLE001 - report, then let the lock go
        ready.report(f"error supervisor: {e!r}")
        code = 125
    finally:
        os.close(lock_fd)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv))
