"""`pybuild history [--no-trunc] IMAGE`: one row per history entry, newest first, like docker."""

from __future__ import annotations

from pybuild.commands._format import ago, ellipsis, human_size, not_found, table

NAME = "history"


def add_parser(sub) -> None:
    p = sub.add_parser("history", help="show the history of an image",
                       description="Like docker history. Example: pybuild history hello:1.0")
    p.add_argument("--no-trunc", action="store_true", help="don't truncate output")
    p.add_argument("-q", "--quiet", action="store_true", help="only show image ids")
    p.add_argument("image", metavar="IMAGE")


def rows_for(img, *, no_trunc: bool = False) -> list[tuple[str, str, str, str, str]]:
    """(IMAGE, CREATED, CREATED BY, SIZE, COMMENT) rows, newest first.  Layer sizes (the stored,
    compressed size, as `images` shows) are matched in order to non-empty history entries."""
    layers = list(img.manifest.get("layers") or [])
    history = [h for h in (img.config.get("history") or []) if isinstance(h, dict)]
    if not history:  # configs without history: one anonymous row per layer
        history = [{"created": img.config.get("created")} for _ in layers] or [{"created": img.config.get("created")}]
    rows = []
    li = 0
    for h in history:
        size = 0
        if not h.get("empty_layer"):
            if li < len(layers):
                size = int(layers[li].get("size") or 0)
            li += 1
        created_by = " ".join(str(h.get("created_by") or "").split()) if not no_trunc else str(h.get("created_by") or "")
        if not no_trunc:
            created_by = ellipsis(created_by, 45)
        rows.append(["<missing>", ago(h.get("created")), created_by, human_size(size), str(h.get("comment") or "")])
    rows.reverse()
    image_id = img.id if no_trunc else img.id.split(":", 1)[1][:12]
    rows[0][0] = image_id
    return [tuple(r) for r in rows]


def run(args, store_factory) -> int:
    from pybuild.errors import PybuildError
    from pybuild.oci.image import InvalidImage
    from pybuild.oci.store import ImageNotFound

    store = store_factory()
    try:
        img = store.images.image(args.image)
    except ImageNotFound:
        raise PybuildError(not_found(args.image)) from None
    except InvalidImage as exc:
        raise PybuildError(f"{args.image}: {exc}") from None
    rows = rows_for(img, no_trunc=args.no_trunc)
    if args.quiet:
        for r in rows:
            print(r[0])
        return 0
    print(table([("IMAGE", "CREATED", "CREATED BY", "SIZE", "COMMENT"), *rows]))
    return 0
