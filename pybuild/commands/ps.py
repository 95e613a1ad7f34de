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
    from pybuild.runtime.inspect import published_ports

    _, containers = open_runtime(store_factory)
    rows = []
    for c in reversed(containers.list()):  # newest first, as docker
        st = c.state()
        if not args.all and st.get("Status") != "running":
            continue
        cmd = command_text(c.config.get("Args") or [], not args.no_trunc)
        rows.append((c.id if args.no_trunc else c.id[:12], c.config.get("Image", ""), cmd,
                     ago(c.config.get("Created")), status_text(st), ports_text(published_ports(st)),
                     c.name))
    if args.quiet:
        for r in rows:
            print(r[0])
        return 0
    print(table([("CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "PORTS", "NAMES"), *rows]))
    return 0


def ports_text(ports: list[dict]) -> str:
    """docker ps's PORTS (the client's DisplayablePorts) from API ports ``{"IP", "PrivatePort",
    "PublicPort", "Type"}``: sorted by container port, host IP, host port and protocol; ports
    published under their own number (or not at all) grouped into runs, ``0.0.0.0:8000-8001->
    8000-8001/tcp``; any other mapping alone, after those, ``127.0.0.1:8080->80/tcp``."""
    groups: dict[str, list[int]] = {}  # key "IP/proto" (or "proto") -> [first, last], in creation order
    result, mappings = [], []

    def form(key: str, first: int, last: int) -> str:
        ip, _, proto = key.rpartition("/")
        ports = str(first) if first == last else f"{first}-{last}"
        return f"{ip}:{ports}->{ports}/{proto}" if ip else f"{ports}/{proto}"

    for p in sorted(ports, key=lambda p: (p["PrivatePort"], p.get("IP", ""), p.get("PublicPort", 0), p["Type"])):
        cur, key = p["PrivatePort"], p["Type"]
        if p.get("IP"):
            if p["PublicPort"] != cur:
                mappings.append(f"{p['IP']}:{p['PublicPort']}->{cur}/{p['Type']}")
                continue
            key = f"{p['IP']}/{p['Type']}"
        g = groups.get(key)
        if g is None:
            groups[key] = [cur, cur]
        elif cur == g[1] + 1:
            g[1] = cur
        else:  # a gap: the run so far is done, a new one starts (docker's order)
            result.append(form(key, *g))
            groups[key] = [cur, cur]
    result += [form(key, *g) for key, g in groups.items()]
    return ", ".join(result + mappings)


def command_text(argv: list[str], trunc: bool) -> str:
    """docker ps's COMMAND: the daemon joins the path and its arguments, wrapping an argument that
    holds a blank in single quotes (`sh -c 'exit 3'`); the client cuts that to 20 characters
    (19 and "…") unless --no-trunc, then quotes it as Go's strconv.Quote does."""
    import json

    cmd = " ".join(argv[:1] + [f"'{a}'" if " " in a else a for a in argv[1:]])
    if trunc and len(cmd) > 20:
        cmd = cmd[:19] + "…"
    return json.dumps(cmd, ensure_ascii=False)
