"""`pybuild ps [-a] [-q]`: list containers, as `docker ps`."""

from __future__ import annotations

NAME = "ps"


def add_parser(sub) -> None:
    p = sub.add_parser("ps", help="list containers (running ones; -a: all)",
                       description="Like docker ps. Example: pybuild ps -a")
    p.add_argument("-a", "--all", action="store_true", help="also stopped containers")
    p.add_argument("-q", "--quiet", action="store_true", help="only container ids")
    p.add_argument("--no-trunc", action="store_true", help="full ids and commands")


def status_text(state: dict) -> str:
    """docker's STATUS column: "Up 3 seconds", "Exited (0) 2 minutes ago", "Created"."""
    from pybuild.commands._format import ago

    status = state.get("Status")
    if status == "running":
        return "Up " + ago(state.get("StartedAt")).removesuffix(" ago")
    if status == "exited":
        code = state.get("ExitCode")
        unknown = state.get("Error", "").startswith("the pybuild process running this container was killed")
        return f"Exited ({'unknown' if unknown else code}) {ago(state.get('FinishedAt'))}"
    return "Created"


def run(args, store_factory) -> int:
    from pybuild.commands._format import ago, table
    from pybuild.commands.run import open_runtime

    _, containers = open_runtime(store_factory)
    rows = []
    for c in reversed(containers.list()):  # newest first, as docker
        st = c.state()
        if not args.all and st.get("Status") != "running":
            continue
        cmd = command_text(c.config.get("Args") or [], not args.no_trunc)
        rows.append((c.id if args.no_trunc else c.id[:12], c.config.get("Image", ""), cmd,
                     ago(c.config.get("Created")), status_text(st), ", ".join(c.config.get("Ports") or []),
                     c.name))
    if args.quiet:
        for r in rows:
            print(r[0])
        return 0
    print(table([("CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "PORTS", "NAMES"), *rows]))
    return 0


def command_text(argv: list[str], trunc: bool) -> str:
    """docker ps's COMMAND: the daemon joins the path and its arguments, wrapping an argument that
    holds a blank in single quotes (`sh -c 'exit 3'`); the client cuts that to 20 characters
    (19 and "…") unless --no-trunc, then quotes it as Go's strconv.Quote does."""
    import json

    cmd = " ".join(argv[:1] + [f"'{a}'" if " " in a else a for a in argv[1:]])
    if trunc and len(cmd) > 20:
        cmd = cmd[:19] + "…"
    return json.dumps(cmd, ensure_ascii=False)
