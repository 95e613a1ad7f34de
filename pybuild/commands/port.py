"""`pybuild port CONTAINER [PRIVATE_PORT[/PROTO]]`: the host ports a running container publishes, as `docker port`."""

from __future__ import annotations

NAME = "port"


def add_parser(sub) -> None:
    p = sub.add_parser("port", help="list a container's published ports (the host port of each)",
                       description="Like docker port. Example: pybuild port web 80/tcp")
    p.add_argument("container", metavar="CONTAINER")
    p.add_argument("private_port", nargs="?", metavar="PRIVATE_PORT[/PROTO]",
                   help="only this container port (protocol default tcp): print its host addresses")


def _natural_key(text: str) -> list:
    """docker sorts the lines with sortorder.NaturalLess: runs of digits compare as numbers."""
    import re

    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.findall(r"\d+|\D+", text)]


def run(args, store_factory) -> int:
    from pybuild.commands.run import open_runtime
    from pybuild.errors import PybuildError
    from pybuild.runtime.inspect import ports_map, published_ports

    _, containers = open_runtime(store_factory)
    ports = ports_map(published_ports(containers.get(args.container).state()))
    if args.private_port is not None:
        port, _, proto = args.private_port.partition("/")
        if not port.isdigit() or int(port) > 65535:
            raise PybuildError(f"invalid port ({port})")
        bindings = ports.get(f"{int(port)}/{proto or 'tcp'}")
        if not bindings:
            raise PybuildError(f"No public port '{args.private_port}' published for {args.container}")
        out = [f"{b['HostIp']}:{b['HostPort']}" for b in bindings]
    else:
        out = [f"{key} -> {b['HostIp']}:{b['HostPort']}" for key, bindings in ports.items() for b in bindings]
    for line in sorted(out, key=_natural_key):
        print(line)
    return 0
