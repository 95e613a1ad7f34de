"""`pybuild inspect NAME...`: image config + manifest (or a container's record) as a JSON array, like `docker inspect`."""

from __future__ import annotations

NAME = "inspect"


def add_parser(sub) -> None:
    p = sub.add_parser("inspect", help="show image details (config and manifest) as JSON",
                       description="Like docker image inspect. Example: pybuild inspect hello:1.0")
    p.add_argument("images", nargs="+", metavar="IMAGE")


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

    from pybuild.oci.image import InvalidImage
    from pybuild.oci.store import ImageNotFound

    store = store_factory()
    out, errors = [], []
    for name in args.images:
        try:
            obj = describe(store, store.images.resolve(name))
        except ImageNotFound:
            obj = _container(store, name)  # docker inspect: images first, then containers
            if obj is None:
                errors.append(f"ERROR: No such object: {name}")
            else:
                out.append(obj)
            continue
        except InvalidImage as exc:
            errors.append(f"ERROR: {name}: {exc}")
            continue
        if obj["Variant"] is None:
            del obj["Variant"]
        out.append(obj)
    print(json.dumps(out, indent=4))
    for line in errors:
        print(line, file=sys.stderr)
    return 1 if errors else 0
