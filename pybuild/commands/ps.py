"""`pybuild ps [-a] [-q] [--no-trunc] [-f KEY=VALUE] [--format T]`: list containers, as `docker ps`."""

from __future__ import annotations

NAME = "ps"


def add_parser(sub) -> None:
    p = sub.add_parser("ps", help="list containers (running ones; -a: all)",
                       description="Like docker ps. Example: pybuild ps -a")
    p.add_argument("-a", "--all", action="store_true", help="also stopped containers")
    p.add_argument("-q", "--quiet", action="store_true", help="only container ids")
    p.add_argument("--no-trunc", action="store_true", help="full ids and commands")
    p.add_argument("-f", "--filter", action="append", default=[], metavar="KEY=VALUE",
                   help="id=PREFIX, name=REGEX, status=created|running|exited, exited=CODE, ancestor=IMAGE "
                        "(status and exited look at stopped containers without -a, as docker)")
    p.add_argument("--format", metavar="TEMPLATE",
                   help="Go template over the fields {{.ID}} {{.Image}} {{.Command}} {{.CreatedAt}} {{.RunningFor}} "
                        "{{.Ports}} {{.State}} {{.Status}} {{.Names}} {{.Mounts}} {{.Networks}}, {{json .}}; "
                        "'table ...' for columns")


FIELDS = {"ID": "CONTAINER ID", "Image": "IMAGE", "Command": "COMMAND", "CreatedAt": "CREATED AT",
          "RunningFor": "CREATED", "Ports": "PORTS", "State": "STATE", "Status": "STATUS", "Names": "NAMES",
          "Mounts": "MOUNTS", "Networks": "NETWORKS"}
STATUSES = ("created", "restarting", "running", "removing", "paused", "exited", "dead")


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


def _matcher(filters: dict[str, list[str]], store):
    """Predicate on (container, state) for the --filter values (one key's values: any; keys: all)."""
    import re

    from pybuild.errors import UsageError

    for v in filters.get("status", []):
        if v not in STATUSES:
            raise UsageError(f"--filter status={v}: invalid filter value (one of {', '.join(STATUSES)})")
    codes = set()
    for v in filters.get("exited", []):
        if not v.lstrip("-").isdigit():
            raise UsageError(f"--filter exited={v}: invalid filter value (an exit code)")
        codes.add(int(v))
    ancestors = []  # (text as given, the image id it resolves to or None)
    for v in filters.get("ancestor", []):
        try:
            from pybuild.oci.image import load_image

            ancestors.append((v, load_image(store.content, store.images.resolve(v)).id))
        except Exception:
            ancestors.append((v, None))

    def name_match(pattern: str, name: str) -> bool:
        try:
            return re.search(pattern, name) is not None
        except re.error:
            return pattern in name

    def match(c, st: dict) -> bool:
        if "id" in filters and not any(c.id.startswith(v) for v in filters["id"]):
            return False
        if "name" in filters and not any(name_match(v, c.name) for v in filters["name"]):
            return False
        if "status" in filters and st.get("Status", "created") not in filters["status"]:
            return False
        if codes and (st.get("Status") != "exited" or st.get("ExitCode") not in codes):
            return False
        if ancestors and not any(c.config.get("Image") == text or (image_id and c.config.get("ImageId") == image_id)
                                 for text, image_id in ancestors):
            return False
        return True
    return match


def run(args, store_factory) -> int:
    from pybuild.commands._filters import parse_filters
    from pybuild.commands._format import Template, ago, created_at, table
    from pybuild.commands.run import open_runtime
    from pybuild.runtime.inspect import published_ports

    filters = parse_filters(args.filter, ("id", "name", "status", "exited", "ancestor"), "ps")
    template = Template(args.format, FIELDS) if args.format else None
    store, containers = open_runtime(store_factory)
    match = _matcher(filters, store)
    every = args.all or "status" in filters or "exited" in filters  # as docker: these look at stopped ones
    rows = []
    for c in reversed(containers.list()):  # newest first, as docker
        st = c.state()
        if not every and st.get("Status") != "running":
            continue
        if not match(c, st):
            continue
        mounts = [m.get("Name") or m.get("Source") or m.get("Destination", "") for m in c.config.get("Mounts") or []]
        image = c.config.get("Image", "")
        if image.startswith("sha256:") and not args.no_trunc:  # run by image id: docker shows it short
            image = image[7:19]
        rows.append({"ID": c.id if args.no_trunc else c.id[:12], "Image": image,
                     "Command": command_text(c.config.get("Args") or [], not args.no_trunc),
                     "CreatedAt": created_at(c.config.get("Created")), "RunningFor": ago(c.config.get("Created")),
                     "Ports": ports_text(published_ports(st)), "State": st.get("Status", "created"),
                     "Status": status_text(st), "Names": c.name, "Mounts": ",".join(mounts),
                     "Networks": c.config.get("Network", "")})
    if args.quiet:
        for r in rows:
            print(r["ID"])
        return 0
    if template is not None:
        for line in template.lines(rows):
            print(line)
        return 0
    columns = ("ID", "Image", "Command", "RunningFor", "Status", "Ports", "Names")
    print(table([("CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "PORTS", "NAMES"),
                 *(tuple(r[k] for k in columns) for r in rows)]))
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
