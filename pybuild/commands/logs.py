"""`pybuild logs [-f] [-t] [-n N] CONTAINER`: a container's output, as `docker logs`.

stdout records go to stdout and stderr records to stderr, in the order they were written.
"""

from __future__ import annotations

NAME = "logs"


def add_parser(sub) -> None:
    p = sub.add_parser("logs", help="show a container's output",
                       description="Like docker logs. Example: pybuild logs -f web")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing until the container exits")
    p.add_argument("-t", "--timestamps", action="store_true", help="prefix each chunk with its time")
    p.add_argument("-n", "--tail", default="all", type=_tail_count, metavar="N",
                   help="only the last N records (lines, as written) of the log, then -f's new ones (default all)")
    p.add_argument("container")


def _tail_count(text: str) -> int | None:
    import argparse

    if text == "all" or (text.startswith("-") and text[1:].isdigit()):  # docker: a negative count is all
        return None
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: a number of lines or all")
    return int(text)


def _tail_offset(f, n: int) -> int:
    """Where the last ``n`` records of the log begin (one JSON record per line), read backwards
    in blocks: a long log is not read whole for a few lines."""
    import os

    end = f.seek(0, os.SEEK_END)
    pos, seen, block = end, 0, 65536
    while pos > 0:
        start = max(0, pos - block)
        f.seek(start)
        data = f.read(pos - start)
        i = len(data)
        while True:
            i = data.rfind(b"\n", 0, i)
            if i < 0:
                break
            if start + i + 1 < end:  # a newline that ends a record before the last one read
                seen += 1
                if seen == n:
                    return start + i + 1
        pos = start
    return 0


def _emit(line: bytes, timestamps: bool) -> None:
    import json
    import sys

    try:
        rec = json.loads(line)
        text, stream = rec["log"], rec.get("stream", "stdout")
    except (ValueError, KeyError, TypeError):
        return  # a torn last line of a killed supervisor
    out = sys.stderr if stream == "stderr" else sys.stdout
    out.write((rec.get("time", "") + " " if timestamps else "") + text)
    out.flush()


def run(args, store_factory) -> int:
    import time

    from pybuild.commands.run import open_runtime

    _, containers = open_runtime(store_factory)
    c = containers.get(args.container)
    try:
        f = open(c.log_path, "rb")
    except FileNotFoundError:  # it has not written anything yet
        return 0
    with f:
        if args.tail is not None:
            f.seek(_tail_offset(f, args.tail) if args.tail > 0 else f.seek(0, 2))
        pending = b""
        while True:
            chunk = f.read(65536)
            if chunk:
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    _emit(line, args.timestamps)
                continue
            if not args.follow or not c.supervised():
                if args.follow:  # the holder is gone: read what it wrote last
                    rest = f.read()
                    if rest:
                        pending += rest
                        continue
                break
            time.sleep(0.05)  # follow: poll for appended lines (the file has no other signal)
    return 0
