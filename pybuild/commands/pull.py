"""`pybuild pull NAME[:TAG|@DIGEST]`: fetch an image from a registry into the local store."""

from __future__ import annotations

NAME = "pull"


def add_parser(sub) -> None:
    p = sub.add_parser("pull", help="pull an image from a registry",
                       description="Like docker pull. Example: pybuild pull 127.0.0.1:5000/app:1.0 "
                                   "(busybox means docker.io/library/busybox:latest)")
    p.add_argument("image", help="NAME[:TAG|@DIGEST]")
    p.add_argument("--platform", default="linux/amd64", help="os/arch[/variant] to pick from an index "
                                                             "(default linux/amd64)")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the manifest digest")


def run(args, store_factory) -> int:
    from pybuild.errors import UsageError
    from pybuild.oci.reference import InvalidReference, normalize_reference
    from pybuild.registry.pull import parse_platform, pull

    try:
        ref = normalize_reference(args.image)
    except InvalidReference as exc:
        raise UsageError(str(exc)) from None
    try:
        parse_platform(args.platform)
    except ValueError:
        raise UsageError(f"--platform {args.platform}: expected OS/ARCH[/VARIANT], e.g. linux/amd64") from None
    store = store_factory()
    store.clean_stale()
    result = pull(store, ref, platform=args.platform, progress=(lambda line: None) if args.quiet else _stderr)
    print(result.manifest_digest if args.quiet else f"{result.local_name}: pulled {result.manifest_digest}")
    return 0


def _stderr(line: str) -> None:
    import sys

    print(line, file=sys.stderr, flush=True)
