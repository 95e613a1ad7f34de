"""The pseudo-terminal of `run -t` / `exec -t`: a pty pair, a relay thread, the window size.

The container gets the slave as stdin/stdout/stderr (and as its controlling terminal, see
``ProcessSpec.tty``); pybuild copies its own stdin to the master (when ``-i``) and the master
to its stdout (or to a sink, for detached containers).  With ``-i`` on a terminal the host
terminal is put in raw mode, so Ctrl-C travels as a byte and the container's line discipline
turns it into SIGINT for the container's foreground process group.  SIGWINCH on the host
copies the host terminal's size to the pty (the kernel then signals the container).
"""

from __future__ import annotations

import errno
import fcntl
import os
import select
import signal
import stat
import struct
import termios
import threading
import tty as _tty
from typing import Callable

from pybuild.fdio import write_all

__all__ = ["Pty", "PtyError"]

_TIOCGPTN = 0x80045430     # _IOR('T', 0x30, unsigned int): the slave's number
_TIOCSPTLCK = 0x40045431   # _IOW('T', 0x31, int): lock/unlock the slave
_TIOCGPTPEER = 0x5441      # _IO('T', 0x41): open the slave through the master (Linux 4.13)
_PTMX_RDEV = os.makedev(5, 2)


class PtyError(OSError):
    """A container's devpts did not give a pty."""


def _open_in_devpts(ptmx: str) -> tuple[int, int]:
    """A pty pair from the devpts instance whose ``ptmx`` node this is (a container's).

    The path is the container's (``/proc/PID/root/dev/pts/ptmx``): whatever it resolves to is
    checked to be a ptmx node before use, and the slave is opened through the master
    (TIOCGPTPEER), never by a path the container could swap."""
    try:
        master = os.open(ptmx, os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as e:
        raise PtyError(e.errno, f"opening the container's {os.path.basename(ptmx)}: {e.strerror}") from None
    try:
        st = os.fstat(master)
        if not stat.S_ISCHR(st.st_mode) or st.st_rdev != _PTMX_RDEV:
            raise PtyError(errno.ENOTTY, "the container's /dev/pts/ptmx is not a pty multiplexer")
        os.set_blocking(master, True)
        fcntl.ioctl(master, _TIOCSPTLCK, struct.pack("i", 0))
        slave = fcntl.ioctl(master, _TIOCGPTPEER, os.O_RDWR | os.O_NOCTTY)
        return master, slave
    except BaseException:
        os.close(master)
        raise


class Pty:
    """A pty pair and its relay.  Use: ``p = Pty(); p.start(...); <run with p.slave>;
    p.close_slave(); p.finish()``.  ``finish`` drains the container's output, restores the
    host terminal and closes everything; it is idempotent."""

    def __init__(self, ptmx: str | None = None) -> None:
        """``ptmx``: a container's /dev/pts/ptmx (as /proc/PID/root/...), so the slave is a pts
        of the container's own devpts (``tty`` inside names it); None: the host's."""
        if ptmx is None:
            self.master, self.slave = os.openpty()
        else:
            self.master, self.slave = _open_in_devpts(ptmx)
        os.set_inheritable(self.master, False)
        self._thread: threading.Thread | None = None
        self._saved_attrs = None
        self._host_in: int | None = None
        self._old_winch = None
        self._stop_r, self._stop_w = os.pipe2(os.O_CLOEXEC)

    def start(self, stdin: int | None, sink: Callable[[bytes], None], *, raw: bool) -> None:
        """Relay ``stdin`` (None: no input) to the container and its output to ``sink``."""
        self._host_in = stdin
        if stdin is not None and os.isatty(stdin):
            self.copy_size(stdin)
            if raw:
                self._saved_attrs = termios.tcgetattr(stdin)
                _tty.setraw(stdin)
        elif os.isatty(1):
            self.copy_size(1)
        if threading.current_thread() is threading.main_thread():
            src = stdin if stdin is not None and os.isatty(stdin) else (1 if os.isatty(1) else None)
            if src is not None:
                self._old_winch = signal.signal(signal.SIGWINCH, lambda *_: self.copy_size(src))
        self._thread = threading.Thread(target=self._relay, args=(stdin, sink), daemon=True)
        self._thread.start()

    def copy_size(self, from_fd: int) -> None:
        try:
            size = fcntl.ioctl(from_fd, termios.TIOCGWINSZ, b"\0" * 8)
            fcntl.ioctl(self.master, termios.TIOCSWINSZ, size)
        except OSError:
            pass

    def _relay(self, stdin: int | None, sink: Callable[[bytes], None]) -> None:
        fds = [self.master, self._stop_r] + ([stdin] if stdin is not None else [])
        while True:
            try:
                ready, _, _ = select.select(fds, [], [])
            except InterruptedError:
                continue
            if self.master in ready:
                try:
                    data = os.read(self.master, 65536)
                except OSError as e:
                    if e.errno == errno.EIO:  # every slave fd is closed: the container is done
                        return
                    raise
                if not data:
                    return
                sink(data)
                continue  # drain output before looking at the stop pipe
            if stdin is not None and stdin in ready:
                data = os.read(stdin, 65536)
                if not data:  # EOF on our input: send the terminal's EOF character
                    fds.remove(stdin)
                    try:
                        os.write(self.master, bytes([termios.tcgetattr(self.master)[6][termios.VEOF]]))
                    except OSError:
                        pass
                    continue
                write_all(self.master, data)
            if self._stop_r in ready:
                return

    def close_slave(self) -> None:
        if self.slave >= 0:
            os.close(self.slave)
            self.slave = -1

    def finish(self) -> None:
        self.close_slave()
        if self._thread is not None:
            self._thread.join(timeout=5)  # EIO once the container's copies of the slave are closed
            if self._thread.is_alive():  # a daemon that forked off still holds the slave
                os.write(self._stop_w, b"x")
                self._thread.join()
            self._thread = None
        if self._saved_attrs is not None and self._host_in is not None:
            termios.tcsetattr(self._host_in, termios.TCSADRAIN, self._saved_attrs)
            self._saved_attrs = None
        if self._old_winch is not None:
            signal.signal(signal.SIGWINCH, self._old_winch)
            self._old_winch = None
        for fd in (self.master, self._stop_r, self._stop_w):
            try:
                os.close(fd)
            except OSError:
                pass
        self.master = self._stop_r = self._stop_w = -1
