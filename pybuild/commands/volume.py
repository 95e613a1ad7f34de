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
    pr = vs.add_parser("prune", help="remove anonymous volumes no container uses (-a: named ones too)",
                       description="Like docker volume prune (23+): removes the anonymous volumes (-v /path, an "
                                   "image's VOLUME) no container uses; with -a, unused named volumes too. "
                                   "Asks first unless -f.")
    pr.add_argument("-a", "--all", action="store_true", help="also remove unused named volumes")
    pr.add_argument("-f", "--force", action="store_true", help="do not prompt for confirmation")
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
    from pybuild.runtime.volumes import ANONYMOUS_LABEL, VolumeError, VolumeStore

    cmd = args.volume_command
    if cmd == "prune" and not args.force:
        from .prune import confirm

        what = "all local volumes" if args.all else "anonymous local volumes"
        if not confirm(f"WARNING! This will remove {what} not used by at least one container."):
            return 0
    store, containers = open_runtime(store_factory)
    vols = VolumeStore(store.root)
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
                        "Labels": {ANONYMOUS_LABEL: ""} if vols.is_anonymous(n) else {},
                        "UsedBy": users(containers, n)})
        print(json.dumps(out, indent=4))
        return 1 if failed else 0
    failed = False
    # prune: docker 23+ removes only anonymous volumes unless --all (named ones hold data on purpose)
    names = args.names if cmd == "rm" else [n for n in vols.list() if (args.all or vols.is_anonymous(n))
                                            and not users(containers, n)]
    for n in names:
        try:
            vols.remove(n, users(containers, n))
        except VolumeError as e:
            print(f"ERROR: {e}", file=sys.stderr)
            failed = True
            continue
        print(n if cmd == "rm" else f"Deleted Volume: {n}")
    return 1 if failed else 0
