"""`pybuild exec [-i] [-t] [-e K=V] [-w DIR] [-u USER] CONTAINER CMD...`: run a command in a
running container, in its namespaces and cgroups, with the same privilege policy (docker exec).

Exit status: the command's; 125 when it could not be set up; 126/127 when it cannot be run /
is not found.
"""

from __future__ import annotations

import argparse

NAME = "exec"


def add_parser(sub) -> None:
    p = sub.add_parser("exec", help="run a command in a running container",
                       description="Like docker exec. Example: pybuild exec -it web sh")
    p.add_argument("-i", "--interactive", action="store_true", help="keep stdin attached")
    p.add_argument("-t", "--tty", action="store_true", help="allocate a pseudo-terminal")
    p.add_argument("-e", "--env", action="append", default=[], metavar="K=V", help="set an environment variable")
    p.add_argument("-w", "--workdir", help="working directory (default: the container's)")
    p.add_argument("-u", "--user", help="user (default: the container's)")
    p.add_argument("container")
    p.add_argument("cmd", nargs=argparse.REMAINDER)


def run(args, store_factory) -> int:
    import os
    import sys

    from pybuild.commands.run import open_runtime
    from pybuild.errors import PybuildError, UsageError
    from pybuild.runtime import launch
    from pybuild.runtime.options import parse_env
    from pybuild.sandbox.enter import EnterError, ExecSpec, enter

    if not args.cmd:
        raise UsageError("exec: a command is required: pybuild exec CONTAINER CMD...")
    _, containers = open_runtime(store_factory)
    c = containers.get(args.container)
    pid = launch.running_init(c)
    env = parse_env([f"{k}={v}" for k, v in (c.config.get("Env") or {}).items()], args.env, dict(os.environ))
    spec = ExecSpec(args=list(args.cmd), env=env, cwd=args.workdir or c.config.get("WorkingDir") or "/",
                    user=args.user or c.config.get("User") or None, tty=args.tty)
    devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    pty = None
    try:
        if args.tty:
            from pybuild.runtime.tty import Pty

            from pybuild.runtime.tty import PtyError

            try:
                # in the container's devpts, as docker does: `tty` inside names /dev/pts/N
                pty = Pty(ptmx=f"/proc/{pid}/root/dev/pts/ptmx")
            except PtyError as e:
                raise PybuildError(f"exec -t: {e.strerror}") from None
            stdio = (pty.slave, pty.slave, pty.slave)
        else:
            stdio = (0 if args.interactive else devnull, 1, 2)
        try:
            if pty is None:
                return enter(pid, spec, stdin=stdio[0], stdout=stdio[1], stderr=stdio[2])
            return _with_pty(pid, spec, pty, args.interactive)
        except EnterError as e:
            raise PybuildError(str(e)) from None
    except PybuildError as e:
        print(f"ERROR: {e}", file=sys.stderr)
        return 125
    finally:
        if pty is not None:
            pty.finish()
        os.close(devnull)


def _with_pty(pid, spec, pty, interactive: bool) -> int:
    import os
    import sys

    from pybuild.sandbox.enter import enter

    out = sys.stdout.buffer

    def sink(data: bytes) -> None:
        out.write(data)
        out.flush()

    # the relay thread starts after enter() has forked: the child is a single-threaded copy
    return enter(pid, spec, stdin=pty.slave, stdout=pty.slave, stderr=pty.slave,
                 after_fork=lambda: pty.start(0 if interactive else None, sink,
                                              raw=interactive and os.isatty(0)))
