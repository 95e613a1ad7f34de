"""A container's log: ``containers/<id>/container.log``, docker's json-file format.

One JSON object per line of output, as docker writes it (a chunk that ends mid-line gives a
record without its newline, the rest follows in the next): ``{"log": text, "stream":
"stdout"|"stderr", "time": RFC 3339}``; appended (O_APPEND, one write per chunk), so a reader
sees whole records except possibly a torn last line of a killed writer, which `logs` skips;
`logs --tail N` counts records, i.e. lines.
"""

from __future__ import annotations

import json
import os
import selectors
import threading
from pathlib import Path

from pybuild.fdio import write_all

__all__ = ["LogWriter", "pump"]


class LogWriter:
    """Appends records to the container log; thread-safe."""

    def __init__(self, path: Path):
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)
        self._lock = threading.Lock()

    def write(self, stream: str, data: bytes) -> None:
        from .containers import now_rfc3339

        now = now_rfc3339()
        *whole, rest = data.split(b"\n")  # on "\n" only (as docker): a "\r" redraw stays in its line
        lines = [line + b"\n" for line in whole] + ([rest] if rest else [])
        records = b"".join(
            json.dumps({"log": line.decode("utf-8", "replace"), "stream": stream, "time": now}).encode() + b"\n"
            for line in lines)
        with self._lock:
            os.write(self._fd, records)

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


def pump(streams: dict[int, str], log: LogWriter, passthrough: dict[str, int] | None = None) -> None:
    """Read the pipes ``streams`` (fd -> "stdout"|"stderr") until every one is at EOF, logging
    each chunk and, with ``passthrough`` (stream -> fd), copying it there too (a foreground
    container's output to the terminal; a reader that went away does not stop the logging).
    Closes the fds of ``streams``."""
    sel = selectors.DefaultSelector()
    for fd, name in streams.items():
        sel.register(fd, selectors.EVENT_READ, name)
    open_fds = set(streams)
    dead: set[str] = set()
    while open_fds:
        for key, _ in sel.select():
            data = os.read(key.fd, 65536)
            if not data:
                sel.unregister(key.fd)
                open_fds.discard(key.fd)
                os.close(key.fd)
                continue
            log.write(key.data, data)
            if passthrough is not None and key.data not in dead:
                try:
                    write_all(passthrough[key.data], data)
                except OSError:  # e.g. `pybuild run ... | head`: keep logging, stop copying
                    dead.add(key.data)
    sel.close()
