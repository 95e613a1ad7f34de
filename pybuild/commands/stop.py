"""`pybuild stop [-t N] [-s SIG] CONTAINER...`: the stop signal, then SIGKILL after the timeout."""

from __future__ import annotations

NAME = "stop"


def add_parser(sub) -> None:
    p = sub.add_parser("stop", help="stop running containers (stop signal, then SIGKILL)",
                       description="Like docker stop. Example: pybuild stop -t 3 web")
    p.add_argument("-t", "--time", type=int, default=None, metavar="SECONDS",
                   help="seconds to wait before SIGKILL (default: the container's --stop-timeout, 10)")
    p.add_argument("-s", "--signal", default=None, help="signal to send (default: the container's stop signal)")
    p.add_argument("containers", nargs="+", metavar="CONTAINER")


def run(args, store_factory) -> int:
    import sys

    from pybuild.commands.run import open_runtime
    from pybuild.errors import PybuildError
    from pybuild.runtime import launch
    from pybuild.runtime.options import parse_signal

    _, containers = open_runtime(store_factory)
    failed = False
    for ref in args.containers:
        try:
            c = containers.get(ref)
            sig = parse_signal(args.signal, "-s") if args.signal else int(c.config.get("StopSignal") or 15)
            timeout = args.time if args.time is not None else c.config.get("StopTimeout", 10)
            launch.stop(c, sig, float("inf") if timeout is not None and timeout < 0 else float(timeout))
        except PybuildError as e:
            print(f"ERROR: {e}", file=sys.stderr)
            failed = True
            continue
        print(ref)
    return 1 if failed else 0
