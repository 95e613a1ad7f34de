"""`pybuild volume ls|create|rm|prune|inspect`: named volumes under ``$PYBUILD_ROOT/volumes``."""

from __future__ import annotations

NAME = "volume"


def add_parser(sub) -> None:
    p = sub.add_parser("volume", help="manage named volumes (ls, create, rm, prune, inspect)",
                       description="Like docker volume. Example: pybuild volume ls")
    vs = p.add_subparsers(dest="volume_command", required=True, parser_class=type(p))
    ls = vs.add_parser("ls", help="list volumes")
    ls.add_argument("-q", "--quiet", action="store_true", help="only names")
    c = vs.add_parser("create", help="create an empty volume")
    c.add_argument("name")
    r = vs.add_parser("rm", help="remove volumes no container uses")
    r.add_argument("names", nargs="+", metavar="VOLUME")
    vs.add_parser("prune", help="remove every volume no container uses").add_argument(
        "-f", "--force", action="store_true", help="accepted for docker compatibility (no prompt is shown)")
    i = vs.add_parser("inspect", help="show volumes as JSON")
    i.add_argument("names", nargs="+", metavar="VOLUME")


def users(containers, name: str) -> list[str]:
    """Names of the containers (any state) that mount volume ``name``."""
    return [c.name for c in containers.list()
            if any(m.get("Type") == "volume" and m.get("Source") == name for m in c.config.get("Mounts") or [])]


def run(args, store_factory) -> int:
    import json
    import sys

    from pybuild.commands._format import table
    from pybuild.commands.run import open_runtime
    from pybuild.runtime.volumes import VolumeError, VolumeStore

    store, containers = open_runtime(store_factory)
    vols = VolumeStore(store.root)
    cmd = args.volume_command
    if cmd == "ls":
        names = vols.list()
        if args.quiet:
            for n in names:
                print(n)
        else:
            print(table([("DRIVER", "VOLUME NAME"), *(("local", n) for n in names)]))
        return 0
    if cmd == "create":
        vols.ensure(args.name)
        print(args.name)
        return 0
    if cmd == "inspect":
        out, failed = [], False
        for n in args.names:
            if not vols.exists(n):
                print(f"ERROR: No such volume: {n}", file=sys.stderr)
                failed = True
                continue
            out.append({"Name": n, "Driver": "local", "Mountpoint": str(vols.data(n)), "Scope": "local",
                        "UsedBy": users(containers, n)})
        print(json.dumps(out, indent=4))
        return 1 if failed else 0
    failed = False
    names = args.names if cmd == "rm" else [n for n in vols.list() if not users(containers, n)]
    for n in names:
        try:
            vols.remove(n, users(containers, n))
        except VolumeError as e:
            print(f"ERROR: {e}", file=sys.stderr)
            failed = True
            continue
        print(n if cmd == "rm" else f"Deleted Volume: {n}")
    return 1 if failed else 0
