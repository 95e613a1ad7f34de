"""`pybuild export [-o FILE] IMAGE`: an image's flattened filesystem as one tar, like
`docker export` (which takes a container; pybuild has no long-lived containers, so it takes
an image).

The layers are not re-applied by hand: the image's snapshot dirs (unpacked by the safe
extractor, in overlay form) are merged with `LayeredView`, which resolves whiteouts and opaque
directories exactly as overlayfs would, and the merged tree is walked in sorted order into a
deterministic PAX tar (numeric owners, file mtimes, xattrs except overlay's own, hard links
between visible names kept as links).  Nothing is mounted and nothing is written to the
store except the snapshot cache.
"""

from __future__ import annotations

NAME = "export"

_CHUNK = 1 << 20


def add_parser(sub) -> None:
    p = sub.add_parser("export", help="export an image's filesystem as a tar archive",
                       description="Like docker export, for an image. Example: pybuild export -o rootfs.tar hello:1.0")
    p.add_argument("-o", "--output", help="write to a file instead of STDOUT (- means STDOUT)")
    p.add_argument("image", metavar="IMAGE", help="NAME[:TAG], image id (prefix) or digest")


def _xattrs(path) -> dict[str, str]:
    """PAX records for the xattrs a flattened image keeps (overlayfs' own markers dropped)."""
    from pybuild.cache.layers import OVERLAY_XATTR_PREFIXES, read_xattrs

    return {"SCHILY.xattr." + n: v.decode("utf-8", "surrogateescape")
            for n, v in sorted(read_xattrs(path).items()) if not n.startswith(OVERLAY_XATTR_PREFIXES)}


def write_flat_tar(layer_dirs, fileobj) -> None:
    """Write the merged view of ``layer_dirs`` (snapshot dirs, top-most first) to ``fileobj``
    as an uncompressed tar: directories before their contents, names sorted bytewise."""
    import os
    import stat
    import tarfile

    from pybuild.cache.view import LayeredView

    view = LayeredView(layer_dirs)
    inodes: dict[tuple[int, int], str] = {}
    with tarfile.open(fileobj=fileobj, mode="w|", format=tarfile.PAX_FORMAT,
                      encoding="utf-8", errors="surrogateescape") as tar:
        for entry in view.walk("/"):  # symlinks are entries as they are, never followed
            real, st = entry.real, entry.st
            arc = entry.path[1:]
            ti = tarfile.TarInfo(arc)
            ti.mode = stat.S_IMODE(st.st_mode)
            ti.uid, ti.gid = st.st_uid, st.st_gid
            ti.uname = ti.gname = ""
            ti.mtime = st.st_mtime_ns // 1_000_000_000
            ti.pax_headers = _xattrs(real)
            mode = st.st_mode
            data = None
            if stat.S_ISDIR(mode):
                ti.type = tarfile.DIRTYPE
            elif stat.S_ISSOCK(mode):
                continue
            elif st.st_nlink > 1 and (st.st_dev, st.st_ino) in inodes:
                ti.type = tarfile.LNKTYPE
                ti.linkname = inodes[(st.st_dev, st.st_ino)]
            elif stat.S_ISREG(mode):
                ti.type = tarfile.REGTYPE
                ti.size = st.st_size
                data = real
            elif stat.S_ISLNK(mode):
                ti.type = tarfile.SYMTYPE
                ti.linkname = os.readlink(real)
            elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
                ti.type = tarfile.CHRTYPE if stat.S_ISCHR(mode) else tarfile.BLKTYPE
                ti.devmajor, ti.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
            elif stat.S_ISFIFO(mode):
                ti.type = tarfile.FIFOTYPE
            else:  # pragma: no cover
                continue
            if st.st_nlink > 1 and not stat.S_ISDIR(mode) and ti.type != tarfile.LNKTYPE:
                inodes[(st.st_dev, st.st_ino)] = arc
            if data is None:
                tar.addfile(ti)
            else:
                fd = os.open(data, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
                with os.fdopen(fd, "rb") as f:
                    tar.addfile(ti, f)


def export_image(store, image: str, fileobj) -> None:
    """Flatten ``image`` (anything ``ImageStore.resolve`` takes) from ``store`` into ``fileobj``."""
    from pybuild.cache.gc import build_lease

    with build_lease(store.root):  # no prune may remove the snapshots while we read them
        img = store.images.image(image)
        write_flat_tar(store.snapshots.lowerdirs(img.layers), fileobj)


def run(args, store_factory) -> int:
    import sys
    from pathlib import Path

    from pybuild.atomicfile import atomic_write
    from pybuild.cache.layers import LayerError
    from pybuild.commands._format import not_found
    from pybuild.errors import PybuildError
    from pybuild.oci.image import InvalidImage
    from pybuild.oci.store import ImageNotFound

    output = None if args.output in (None, "-") else args.output  # `-o -` is stdout, as docker's
    if output is None and sys.stdout.isatty():
        raise PybuildError("cowardly refusing to write a tar archive to a terminal; use -o FILE or redirect")
    store = store_factory()
    try:
        if output:
            out = Path(output)
            out.parent.mkdir(parents=True, exist_ok=True)
            with atomic_write(out) as f:
                export_image(store, args.image, f)
        else:
            sys.stdout.flush()
            export_image(store, args.image, sys.stdout.buffer)
            sys.stdout.buffer.flush()
    except ImageNotFound:
        raise PybuildError(not_found(args.image)) from None
    except (InvalidImage, LayerError) as exc:  # a corrupt or missing blob: main's one line with the fsck hint
        raise PybuildError(f"export {args.image}: {exc}") from None
    except BrokenPipeError:
        return 1
    return 0
