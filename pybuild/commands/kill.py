"""`pybuild kill [-s SIG] CONTAINER...`: send a signal (default SIGKILL) to running containers."""

from __future__ import annotations

NAME = "kill"


def add_parser(sub) -> None:
    p = sub.add_parser("kill", help="send a signal to running containers (default SIGKILL)",
                       description="Like docker kill. Example: pybuild kill -s HUP web")
    p.add_argument("-s", "--signal", default="KILL", help="signal name or number (default KILL)")
    p.add_argument("containers", nargs="+", metavar="CONTAINER")


def run(args, store_factory) -> int:
    import sys

    from pybuild.commands.run import open_runtime
    from pybuild.errors import PybuildError
    from pybuild.runtime import launch
    from pybuild.runtime.options import parse_signal

    _, containers = open_runtime(store_factory)
    sig = parse_signal(args.signal, "-s")
    failed = False
    for ref in args.containers:
        try:
            launch.send_signal(containers.get(ref), sig)
        except PybuildError as e:
            print(f"ERROR: {e}", file=sys.stderr)
            failed = True
            continue
        print(ref)
    return 1 if failed else 0
