"""The one loop that writes a whole buffer to a file descriptor.

``os.write`` may take less than it is given (pipes, terminals, a signal mid-write); every
writer of raw fds (layer files, context tars, container logs and ttys, archives to stdout)
goes through :func:`write_all` instead of its own loop.
"""

from __future__ import annotations

import os


def write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    """Write all of ``data`` to ``fd`` (no copy of what is left after a short write)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
