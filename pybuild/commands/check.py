"""`pybuild check [-f Dockerfile] [PATH]`: lint a Dockerfile like `docker build --check`.

Prints one `FILE:LINE:COL: Rule: message` line per warning (sorted by line), then a summary.
Exit status: 0 with only warnings, 1 when `# check=error=true` and any warning (or the Dockerfile
does not parse), 2 on a usage error (no such file).

The linter is pure; this command does its I/O: it reads the Dockerfile and, when the state
directory already holds an image store, the configs of the base images found there, so that
UndefinedVar knows their ENV (an image that is not in the store is assumed to set only PATH).
Nothing is pulled and no state directory is created.
"""

from __future__ import annotations

NAME = "check"


def add_parser(sub) -> None:
    p = sub.add_parser("check", help="report lint warnings for a Dockerfile (like docker build --check)",
                       description="Lint a Dockerfile with BuildKit's rules. Example: pybuild check -f Dockerfile .")
    p.add_argument("context", nargs="?", default=".", metavar="PATH", help="build context directory (default .)")
    p.add_argument("-f", "--file", help="Dockerfile path (default: PATH/Dockerfile)")
    p.add_argument("--build-arg", action="append", default=[], metavar="K=V",
                   help="a build argument (K alone takes its value from the environment)")


def run(args, store_factory) -> int:
    import os
    import sys
    from pathlib import Path

    from pybuild.errors import UsageError
    from pybuild.grammar import DockerfileError, parse
    from pybuild.grammar.lint import check_config, lint

    from pybuild.cli import _default_dockerfile  # `dockerfile` when only that is there, as the build

    path = Path(args.file) if args.file else _default_dockerfile(Path(args.context))
    if not path.is_file():
        raise UsageError(f"check: Dockerfile {str(path)!r} not found")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"check: cannot read Dockerfile {str(path)!r}: {exc}") from None

    build_args: dict[str, str] = {}
    for item in args.build_arg:
        key, sep, value = item.partition("=")
        if not sep:
            if item not in os.environ:
                continue
            value = os.environ[item]
        if not key:
            raise UsageError(f"--build-arg {item!r}: expected KEY=VALUE")
        build_args[key] = value

    try:
        dockerfile = parse(text, str(path))
        config = check_config(dockerfile, build_args)
        warnings = lint(dockerfile, build_args, _base_image_env(args, dockerfile, build_args, store_factory))
    except DockerfileError as exc:
        print(str(exc), file=sys.stderr)
        return 1

    for w in warnings:
        print(w.format())
    error = _build_error(args, dockerfile, build_args, store_factory)
    if error is not None:  # what the build would fail on before running a step (BuildKit's check fails too)
        print(f"ERROR: {error}", file=sys.stderr)
        return 1
    if not warnings:
        print("Check complete, no warnings found.")
        return 0
    n = len(warnings)
    print(f"{n} warning{'s' if n != 1 else ''} found")
    if config.error:
        rules = ", ".join(sorted({w.rule for w in warnings}))
        print(f"ERROR: lint violation found for rules: {rules}", file=sys.stderr)
        return 1
    return 0


def _build_error(args, dockerfile, build_args: dict[str, str], store_factory):
    """The BuildError the build would stop on before running anything: the build plan's (a stage
    read before it is defined, an empty FROM, ...), or a `COPY --from` / `RUN --mount from=`
    naming neither an earlier stage nor an image in the local store (the build does not pull
    those). None when there is none."""
    from pybuild.builder.mounts import MountSpecError, mount_location, parse_mount
    from pybuild.builder.plan import flag_location, plan, stage_index
    from pybuild.errors import BuildError
    from pybuild.grammar import ast

    try:  # entitlements are the build's options, not the Dockerfile's: none is missing here
        built = plan(dockerfile, build_args, allow=frozenset({"security.insecure"}))
    except BuildError as exc:
        return exc
    refs = []  # (name, error) of each source that is not an earlier stage, in the stages built
    for stage in (p.stage for p in built.stages):
        for ins in stage.instructions:
            if isinstance(ins, ast.Copy) and ins.from_stage:
                if stage_index(ins.from_stage, dockerfile.stages, stage.index) is None:
                    refs.append((ins.from_stage, BuildError(
                        f"COPY --from={ins.from_stage}: no stage or local image of that name",
                        flag_location(ins, "from"))))
            elif isinstance(ins, ast.Run):
                for text in ins.mounts:
                    try:
                        src = parse_mount(text).from_
                    except MountSpecError:
                        continue  # plan() reported it
                    if src and "$" not in src and stage_index(src, dockerfile.stages, stage.index) is None:
                        refs.append((src, BuildError(f"RUN --mount from={src}: no stage or local image of that name",
                                                     mount_location(ins, text, "from"))))
    if not refs:
        return None
    store = _open_store(args, store_factory)
    for name, error in refs:
        if store is None:
            return error
        try:
            store.images.image(name)
        except Exception:  # not here, a bad reference, or an unreadable entry: the build fails on it
            return error
    return None


def _open_store(args, store_factory):
    """The local store, or None when the state directory holds none (opening one would create it)."""
    import os
    from pathlib import Path

    if getattr(args, "root", None):
        root = Path(args.root)
    elif os.environ.get("PYBUILD_ROOT"):
        root = Path(os.environ["PYBUILD_ROOT"]).expanduser()
    else:
        from pybuild.store import default_root

        root = default_root()
    if not (root / "index.json").is_file():
        return None
    return store_factory()


def _base_image_env(args, dockerfile, build_args: dict[str, str], store_factory) -> dict[str, dict[str, str]]:
    """ENV of each external base image present in the local store, keyed as the linter names it."""
    import os
    from pathlib import Path

    from pybuild.grammar.lint import external_base_images

    refs = external_base_images(dockerfile, build_args)
    if not refs:
        return {}
    if getattr(args, "root", None):
        root = Path(args.root)
    elif os.environ.get("PYBUILD_ROOT"):
        root = Path(os.environ["PYBUILD_ROOT"]).expanduser()
    else:  # the config file and per-user defaults (importing the store costs start-up time)
        from pybuild.store import default_root

        root = default_root()
    if not (root / "index.json").is_file():
        return {}  # no store yet: opening one would create it
    return base_image_env(store_factory(), refs)


def base_image_env(store, refs: list[str]) -> dict[str, dict[str, str]]:
    """ENV of each image of ``refs`` (as the linter's ``external_base_images`` names them) that
    ``store`` holds; the others are left out (the linter assumes PATH only)."""
    from pybuild.oci.store import ImageNotFound, ImageStoreError

    out: dict[str, dict[str, str]] = {}
    for ref in refs:
        try:
            config = store.images.image(ref).config
        except (ImageNotFound, ImageStoreError, ValueError):  # not here, a bad reference, or an unreadable entry
            continue
        env: dict[str, str] = {}
        for item in (config.get("config") or {}).get("Env") or ():
            key, _, value = str(item).partition("=")
            env[key] = value
        out[ref] = env
    return out
