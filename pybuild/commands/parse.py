"""`pybuild parse [--json] [FILE|-]`: print the Dockerfile parser's node view.

With ``--json`` one JSON object per instruction per line, with BuildKit's node keys (``cmd``,
``sub_cmd``, ``json``, ``flags``, ``value``, ``original``, ``start_line``, ``end_line``,
``heredocs``); without it a readable line per instruction.  Nothing is expanded.
"""

from __future__ import annotations

NAME = "parse"


def add_parser(sub) -> None:
    p = sub.add_parser("parse", help="print how a Dockerfile parses (BuildKit node view)",
                       description="Print the parser's view of a Dockerfile, one instruction per line, "
                                   "before any variable expansion. Example: pybuild parse --json Dockerfile")
    p.add_argument("--json", action="store_true", help="one JSON object per instruction per line")
    p.add_argument("file", nargs="?", default="Dockerfile", help="Dockerfile path, - for stdin (default ./Dockerfile)")


def _readable(node: dict) -> str:
    import json

    lines = f"{node['start_line']}" if node["start_line"] == node["end_line"] else \
        f"{node['start_line']}-{node['end_line']}"
    head = node["cmd"] + (f" {node['sub_cmd']}" if node["sub_cmd"] else "")
    parts = [f"{lines}:", head]
    parts += node["flags"]
    parts.append(("json " if node["json"] else "") + json.dumps(node["value"], ensure_ascii=False))
    for doc in node["heredocs"]:
        tags = [t for t, on in (("noexpand", not doc["expand"]), ("chomp", doc["chomp"])) if on]
        parts.append(f"<<{doc['name']}" + (f"({','.join(tags)})" if tags else "")
                     + f" {len(doc['content'].splitlines())} line(s)")
    return " ".join(parts)


def run(args, store_factory) -> int:
    import json
    import sys

    from pybuild.grammar import DockerfileError, parse
    from pybuild.grammar.nodes import to_nodes

    name = args.file
    try:
        if name == "-":
            text, filename = sys.stdin.read(), "<stdin>"
        else:
            with open(name, encoding="utf-8") as fh:
                text, filename = fh.read(), name
    except (OSError, UnicodeDecodeError) as exc:
        print(f"ERROR: {name}: {exc.strerror if isinstance(exc, OSError) else exc}", file=sys.stderr)
        return 1
    try:
        nodes = to_nodes(parse(text, filename))
    except DockerfileError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    out = sys.stdout
    try:
        for node in nodes:
            out.write((json.dumps(node, ensure_ascii=False) if args.json else _readable(node)) + "\n")
        out.flush()
    except BrokenPipeError:  # `pybuild parse | head`: the reader went away, not an error
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0
