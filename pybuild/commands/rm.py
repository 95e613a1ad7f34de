"""`pybuild rm [-f] [-v] CONTAINER...`: remove containers (their writable layer, record, name)."""

from __future__ import annotations

NAME = "rm"


def add_parser(sub) -> None:
    p = sub.add_parser("rm", help="remove containers",
                       description="Like docker rm. Example: pybuild rm -f web")
    p.add_argument("-f", "--force", action="store_true", help="kill a running container first")
    p.add_argument("-v", "--volumes", action="store_true",
                   help="accepted for docker compatibility: anonymous volumes are always removed with their container")
    p.add_argument("containers", nargs="+", metavar="CONTAINER")


def run(args, store_factory) -> int:
    import sys

    from pybuild.commands.run import open_runtime
    from pybuild.errors import PybuildError
    from pybuild.runtime import launch

    store, containers = open_runtime(store_factory)
    failed = False
    for ref in args.containers:
        try:
            launch.remove(store, containers, containers.get(ref), force=args.force)
        except PybuildError as e:
            print(f"ERROR: {e}", file=sys.stderr)
            failed = True
            continue
        print(ref)
    return 1 if failed else 0
