"""`pybuild inspect [-f TEMPLATE] [--type image|container] NAME...`: image config + manifest (or a
container's record) as a JSON array, or one line per object from a Go template, like `docker inspect`."""

from __future__ import annotations

NAME = "inspect"


def add_parser(sub) -> None:
    p = sub.add_parser("inspect", help="show image or container details as JSON, or through a Go template",
                       description="Like docker inspect. Examples: pybuild inspect hello:1.0; "
                                   "pybuild inspect -f '{{.Id}}' hello:1.0; "
                                   "pybuild inspect -f '{{.State.Status}} {{.State.ExitCode}}' CONTAINER")
    p.add_argument("-f", "--format", metavar="TEMPLATE",
                   help="a Go template rendered for each object, one line each (as docker's: {{.Config.Env}}, "
                        "{{json .Config}}, {{index .Config.Labels \"k\"}}, {{range}}, {{if}}, join, ...); "
                        "'json': the objects as compact JSON")
    p.add_argument("--type", choices=("image", "container"),
                   help="look NAME up only among images or only among containers (default: images, then containers)")
    p.add_argument("images", nargs="+", metavar="NAME")


def describe(store, manifest_digest: str) -> dict:
    """The inspect object of one image."""
    from pybuild.oci.image import load_image, load_manifest

    img = load_image(store.content, manifest_digest)
    tags, digests = set(), set()
    for e in store.images.entries():  # every tag of this image id (config digest)
        name = (e.get("annotations") or {}).get("org.opencontainers.image.ref.name")
        if not name:
            continue
        try:
            same = e.get("digest") == manifest_digest or \
                load_manifest(store.content, e["digest"])["config"]["digest"] == img.id
        except Exception:
            same = False
        if same:
            tags.add(name)
            digests.add(f"{name.rpartition(':')[0]}@{e['digest']}")
    cfg = img.config
    history = [h for h in cfg.get("history") or [] if isinstance(h, dict)]
    return {
        "Id": img.id,
        "RepoTags": sorted(tags),
        "RepoDigests": sorted(digests),
        "Digest": manifest_digest,
        "Parent": "",
        "Comment": history[-1].get("comment", "") if history else "",
        "Created": cfg.get("created", ""),
        "Author": cfg.get("author", ""),
        "Config": cfg.get("config") or {},
        "Architecture": cfg.get("architecture", ""),
        "Variant": cfg.get("variant", "") or None,
        "Os": cfg.get("os", ""),
        "Size": sum(layer.size for layer in img.layers),
        "RootFS": {"Type": (cfg.get("rootfs") or {}).get("type", "layers"),
                   "Layers": [layer.diff_id for layer in img.layers]},
        "Metadata": {"LastTagTime": ""},
        "Manifest": img.manifest,
    }


def template_view(obj: dict, kind: str):
    """The object a template sees: the inspect JSON with docker's struct types where scripts
    depend on them.  A field docker's struct has but the JSON leaves out reads as its Go zero
    value (``{{.Config.User}}`` is "" and ``{{.Config.Entrypoint}}`` ``[]`` for an image without
    them, ``{{.State.Health}}`` ``<nil>``); Labels are ``map[string]string`` (``index`` of a missing
    label is ""); string lists are ``[]string``.  ``{{json ...}}`` still shows the JSON as is."""
    from pybuild.commands._gotemplate import GoMap, GoNil, GoSlice, GoStruct

    def strings(v):
        return GoSlice(v) if isinstance(v, list) and all(isinstance(x, str) for x in v) else v

    def typed(d: dict, slices=(), maps=()) -> dict:
        d = dict(d)
        for k in slices:
            if k in d:
                d[k] = strings(d[k])
        for k, elem in maps:
            if isinstance(d.get(k), dict):
                d[k] = GoMap(d[k], elem)
        return d

    slices = ("Env", "Cmd", "Entrypoint", "OnBuild", "Shell")
    view = dict(obj)
    if kind == "image":
        config = typed(obj.get("Config") or {}, slices, (("Labels", "string"), ("ExposedPorts", "struct"),
                                                         ("Volumes", "struct")))
        view["Config"] = GoStruct(config, {  # the OCI image config's fields (docker's ImageConfig)
            "User": "", "ExposedPorts": GoMap(None, "struct"), "Env": GoSlice(None), "Entrypoint": GoSlice(None),
            "Cmd": GoSlice(None), "Volumes": GoMap(None, "struct"), "WorkingDir": "", "Labels": GoMap(None),
            "StopSignal": "", "ArgsEscaped": False, "Healthcheck": GoNil("*container.HealthConfig"),
            "OnBuild": GoSlice(None), "Shell": GoSlice(None)})
        view = typed(view, ("RepoTags", "RepoDigests"))
        if isinstance(obj.get("RootFS"), dict):
            view["RootFS"] = typed(obj["RootFS"], ("Layers",))
        return GoStruct(view, {"Variant": "", "Parent": "", "Comment": "", "Author": ""})
    view = typed(view, ("Args",))
    for key, zeros in (("Config", {"Labels": GoMap({}), "Entrypoint": GoSlice(None), "Domainname": "",
                                   "StopTimeout": GoNil("*int")}),
                       ("State", {"Health": GoNil("*container.Health")}),
                       ("HostConfig", {"PidsLimit": GoNil("*int64")})):
        if isinstance(obj.get(key), dict):
            view[key] = GoStruct(typed(obj[key], slices, (("Labels", "string"),)), zeros)
    return GoStruct(view, {})


def _container(store, name: str) -> dict | None:
    from pybuild.runtime.containers import ContainerNotFound, ContainerStore
    from pybuild.runtime.inspect import describe_container

    try:
        return describe_container(ContainerStore(store.root).get(name))
    except ContainerNotFound:
        return None


def run(args, store_factory) -> int:
    import json
    import sys

    from pybuild.commands._gotemplate import GoTemplate, TemplateExecError
    from pybuild.oci.image import InvalidImage
    from pybuild.oci.store import ImageNotFound

    fmt = args.format
    template = GoTemplate(fmt, "--format", missing_key_error=True) if fmt and fmt != "json" else None  # a bad one: UsageError, no output
    store = store_factory()
    out, lines, errors = [], [], []  # errors in the order of the names, as docker's
    for name in args.images:
        obj = kind = None
        if args.type != "container":
            try:
                obj, kind = describe(store, store.images.resolve(name)), "image"
            except ImageNotFound:
                pass
            except InvalidImage as exc:
                errors.append(f"ERROR: {name}: {exc}")
                continue
            else:
                if obj["Variant"] is None:
                    del obj["Variant"]
        if obj is None and args.type != "image":
            obj, kind = _container(store, name), "container"  # docker inspect: images first, then containers
        if obj is None:
            errors.append(f"ERROR: No such {args.type or 'object'}: {name}")
            continue
        out.append(obj)
        if template is not None:
            try:
                lines.append(template.execute(template_view(obj, kind)) + "\n")
            except TemplateExecError as exc:
                errors.append(f"ERROR: {name}: {exc}")
    if template is not None:
        text = "".join(lines) or "\n"  # docker: an empty line when no object printed
        sys.stdout.flush()
        stream = getattr(sys.stdout, "buffer", None)
        if stream is not None:
            stream.write(text.encode("utf-8", "surrogateescape"))  # bytes a template made (truncate) as they are
            stream.flush()
        else:
            sys.stdout.write(text)
    elif fmt == "json":
        print(json.dumps(out, separators=(",", ":"), ensure_ascii=False))
    else:
        print(json.dumps(out, indent=4))
    for line in errors:
        print(line, file=sys.stderr)
    return 1 if errors else 0
