"""The `pybuild` command line: thin argument handling over the builder, the stores and the sandbox.

`pybuild -t NAME PATH` means `pybuild build -t NAME PATH`. Exit status: 0 on
success, 1 when a build or command fails, 2 on usage errors; `run` returns the
container's status, or 125 when pybuild itself fails (as docker does).
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import signal
import tempfile
import shutil
import sys
from pathlib import Path

from pybuild import __version__
from pybuild.atomicfile import atomic_write, write_atomic
from pybuild.errors import PybuildError, UsageError

from pybuild.commands import discover as _discover_commands

PLUGINS = {mod.NAME: mod for mod in _discover_commands()}
COMMANDS = ("build", "images", "import", "load", "save", "run", "help", *PLUGINS)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # usage errors: one line, exit 2
        raise UsageError(f"{self.prog}: {message}")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="pybuild", description="Build OCI images from Dockerfiles, without a daemon.",
                epilog="`pybuild -t NAME PATH` is short for `pybuild build -t NAME PATH`.")
    p.add_argument("--version", action="version", version=f"pybuild {__version__}")
    p.add_argument("--root", help="state directory (default $PYBUILD_ROOT, /var/lib/pybuild for root)")
    sub = p.add_subparsers(dest="command", parser_class=_Parser)

    b = sub.add_parser("build", help="build an image from a Dockerfile",
                       description="Build an image from a Dockerfile. Example: pybuild build -t app:1.0 .")
    b.add_argument("context", help="build context directory")
    b.add_argument("-f", "--file", help="Dockerfile path (default: PATH/Dockerfile)")
    b.add_argument("-t", "--tag", action="append", default=[], help="name:tag for the image (repeatable)")
    b.add_argument("--build-arg", action="append", default=[], metavar="K=V",
                   help="set a build argument (K alone takes its value from the environment)")
    b.add_argument("--target", help="build this stage and what it needs, not the last one")
    b.add_argument("--no-cache", action="store_true", help="run every step, ignoring the cache")
    b.add_argument("--network", choices=("none", "host"), default="none",
                   help="network for RUN steps (default none)")
    b.add_argument("-q", "--quiet", action="store_true", help="print only the image id")
    b.add_argument("--allow", action="append", default=[], choices=("security.insecure",),
                   help="grant an entitlement: security.insecure lets RUN --security=insecure run privileged")
    _add_resource_flags(b, "each RUN step")
    b.add_argument("--progress", choices=("auto", "tty", "plain", "rawjson"), default="auto",
                   help="progress output: auto (tty on a terminal, plain otherwise; $PYBUILD_PROGRESS), "
                        "tty, plain, rawjson (one JSON event per line)")
    b.add_argument("--cache-report", choices=("text", "json"), default=None,
                   help="after the build, print which steps hit the cache and why others missed "
                        "(text on stderr, json on stdout)")
    b.add_argument("--compression", choices=("gzip", "zstd", "none"), default="gzip",
                   help="layer compression (default gzip)")
    b.add_argument("-o", "--output", metavar="SPEC",
                   help="also write the result: type=oci|docker,dest=FILE[,name=REF] (archives), "
                        "type=tar,dest=FILE (flattened filesystem), type=local,dest=DIR; a bare PATH means "
                        "type=local,dest=PATH; type=image (the default) only stores and tags it")
    b.add_argument("--iidfile", metavar="FILE", help="write the image id (config digest) to FILE")
    b.add_argument("--metadata-file", metavar="FILE",
                   help="write JSON with the image's manifest and config digests to FILE")

    i = sub.add_parser("images", help="list images in the local store")
    i.add_argument("-q", "--quiet", action="store_true", help="only image ids")
    i.add_argument("--digests", action="store_true", help="show manifest digests")

    im = sub.add_parser("import", help="make a one-layer image from a rootfs directory or tarball",
                        description="Like docker import. Example: pybuild import ./rootfs busybox:latest")
    im.add_argument("source", help="directory, tar or tar.gz file, or - for a tar on stdin")
    im.add_argument("reference", help="NAME[:TAG]")
    im.add_argument("-c", "--change", action="append", default=[],
                    help="Dockerfile instruction applied to the config: CMD, ENTRYPOINT, ENV, WORKDIR, USER")

    ld = sub.add_parser("load", help="load images from an OCI or docker archive (docker/podman save, skopeo)",
                        description="Example: pybuild load -i hello.tar")
    ld.add_argument("-i", "--input", required=True, help="tarball to read (- for stdin)")

    s = sub.add_parser("save", help="write images to an OCI image-layout or docker-archive tarball")
    s.add_argument("-o", "--output", required=True, help="tarball to write")
    s.add_argument("--format", choices=("oci", "docker"), default="oci",
                   help="oci (image layout, default) or docker (docker save / docker load format)")
    s.add_argument("images", nargs="+", help="NAME[:TAG]")

    r = sub.add_parser("run", help="run a command in a new container from an image",
                       description="Example: pybuild run hello:1.0 sh -c 'echo hi'")
    r.add_argument("-e", "--env", action="append", default=[], metavar="K=V", help="set an environment variable")
    r.add_argument("-w", "--workdir", help="working directory inside the container")
    r.add_argument("-u", "--user", help="user (name, uid, uid:gid)")
    r.add_argument("--entrypoint", help="override the image's entrypoint")
    r.add_argument("--network", choices=("none", "host"), default="none", help="network (default none)")
    r.add_argument("--hostname", default=None, help="container host name")
    _add_resource_flags(r, "the container")
    r.add_argument("image")
    r.add_argument("cmd", nargs=argparse.REMAINDER)

    for mod in PLUGINS.values():
        mod.add_parser(sub)

    h = sub.add_parser("help", help="show this help, or a command's: pybuild help build")
    h.add_argument("topic", nargs="?", help="a command")
    return p


def _add_resource_flags(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("-m", "--memory", type=_memory_size, metavar="SIZE",
                   help=f"memory limit for {what} (bytes, or with k/m/g: 256m)")
    p.add_argument("--cpus", type=_positive_float, metavar="N", help=f"CPU limit for {what} (e.g. 1.5)")
    p.add_argument("--pids-limit", type=_positive_int, metavar="N",
                   help=f"process limit for {what} (pybuild's own init counts as 2)")


MIN_MEMORY = 6 << 20  # the kernel cannot run a container in less


def _memory_size(text: str) -> int:
    units = {"b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    t = text.strip().lower()
    number, unit = (t[:-1], t[-1]) if t and t[-1] in units else (t, "b")
    try:
        value = int(float(number) * units[unit])
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid size {text!r} (e.g. 256m, 1g, 1048576)") from None
    if value < MIN_MEMORY:
        raise argparse.ArgumentTypeError(f"invalid size {text!r}: the minimum is 6m")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0
    if not value >= 0.01:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: expected a number of CPUs, at least 0.01")
    return value


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) == 0:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: expected a positive whole number")
    return int(text)


def _resources(args):
    from pybuild.sandbox import Resources

    if args.memory is None and args.cpus is None and args.pids_limit is None:
        return None
    return Resources(memory=args.memory, cpus=args.cpus, pids=args.pids_limit)


def _normalise_argv(argv: list[str]) -> list[str]:
    """Insert `build` when the first non-option word is not a command (`pybuild -t x .`)."""
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--root":
            i += 2
            continue
        if a.startswith("--root="):
            i += 1
            continue
        if a in ("-h", "--help", "--version"):
            return argv
        if a in COMMANDS:
            return argv
        if not a.startswith("-") and not os.path.exists(a):
            near = difflib.get_close_matches(a, COMMANDS, n=1, cutoff=0.6)
            if near:
                raise UsageError(f"unknown command {a!r} (did you mean {near[0]}?)")
        return argv[:i] + ["build"] + argv[i:]
    return argv


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    try:
        args = parser.parse_args(_normalise_argv(argv))
        if args.command == "help" and args.topic:
            parser.parse_args([args.topic, "--help"])  # prints the command's help and exits 0
        if args.command in (None, "help"):
            parser.print_help()
            return 0
        builtin = {"build": cmd_build, "images": cmd_images, "import": cmd_import, "load": cmd_load,
                   "save": cmd_save, "run": cmd_run}
        if args.command in builtin:
            handler = builtin[args.command]
        else:
            plugin = PLUGINS[args.command]
            handler = lambda a: plugin.run(a, lambda: _store(a))  # noqa: E731
        if args.command != "run":  # run forwards SIGTERM to the container instead
            signal.signal(signal.SIGTERM, _terminate)
        return handler(args)
    except UsageError as exc:
        print(f"pybuild: {exc}" if not str(exc).startswith("pybuild") else str(exc), file=sys.stderr)
        return 2
    except PybuildError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 125 if getattr(args, "command", None) == "run" else exc.exit_code
    except KeyboardInterrupt:
        print("ERROR: interrupted: running steps were stopped, nothing was tagged", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `pybuild history x | head`: the reader left; stop quietly, as docker does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except Terminated:
        print("ERROR: terminated: running steps were stopped, nothing was tagged", file=sys.stderr)
        return 143


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so cleanup runs as it does for Ctrl-C."""


def _terminate(signum, frame):
    raise Terminated()


def _store(args):
    from pybuild.store import Store

    return Store.open(Path(args.root) if args.root else None)


# -- build ------------------------------------------------------------------------------------------
def _build_args(items: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        if "=" in item:
            k, _, v = item.partition("=")
        elif item in os.environ:
            k, v = item, os.environ[item]
        else:
            continue  # docker ignores `--build-arg K` when K is not in the environment
        if not k:
            raise UsageError(f"--build-arg {item!r}: expected KEY=VALUE")
        out[k] = v
    return out


def cmd_build(args) -> int:
    from pybuild.builder.solver import BuildOptions, StepFailed, build
    from pybuild.grammar import DockerfileError, parse
    from pybuild.oci.reference import InvalidReference, parse_reference
    from pybuild.progress import make_reporter

    context = Path(args.context)
    if not context.is_dir():
        raise UsageError(f"build context {args.context!r} is not a directory")
    dockerfile_path = Path(args.file) if args.file else context / "Dockerfile"
    try:
        data = dockerfile_path.read_bytes()
    except OSError as exc:
        raise PybuildError(f"cannot read Dockerfile {dockerfile_path}: {exc.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise PybuildError(f"{dockerfile_path}:{line}: not valid UTF-8 (byte 0x{data[exc.start]:02x})") from None
    for tag in args.tag:
        try:
            parse_reference(tag)
        except InvalidReference as exc:
            raise UsageError(f"-t {tag}: {exc}") from None
    try:
        dockerfile = parse(text, str(dockerfile_path))
    except DockerfileError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    output = _output_spec(args.output, args.tag) if args.output else None
    ignore, ignore_file = _dockerignore(context, dockerfile_path)
    sde = os.environ.get("SOURCE_DATE_EPOCH")
    options = BuildOptions(context=context.resolve(), dockerfile=dockerfile, tags=args.tag, ignore=ignore,
                           ignore_file=ignore_file,
                           build_args=_build_args(args.build_arg), target=args.target,
                           no_cache=args.no_cache, network=args.network, resources=_resources(args),
                           allow=frozenset(args.allow), compression=args.compression,
                           source_date_epoch=int(sde) if sde and sde.isdigit() else None)
    store = _store(args)
    store.clean_stale()
    reporter = make_reporter(args.progress, sys.stderr, quiet=args.quiet)
    try:
        with reporter:  # close() ends a live display before anything else is printed
            record = build(store, reporter, options)
    except StepFailed as exc:
        _print_cache_report(args, reporter)
        print(f"ERROR: {exc}", file=sys.stderr)
        if exc.log_path:
            print(f"full output of the step: {exc.log_path}", file=sys.stderr)
        return 1
    _print_cache_report(args, reporter)
    image_id = _image_id(store, record.manifest.digest)
    if output is not None:
        _write_output(store, record.manifest.digest, output)
    if args.iidfile:
        write_atomic(args.iidfile, image_id.encode())
    if args.metadata_file:
        meta = {"containerimage.digest": record.manifest.digest, "containerimage.config.digest": image_id,
                "image.name": ",".join(args.tag)}
        write_atomic(args.metadata_file, json.dumps(meta, indent=2, sort_keys=True).encode() + b"\n")
    if args.quiet:
        print(image_id)
    else:
        print(f"writing image {image_id} done", file=sys.stderr)
        for tag in args.tag:
            print(f"naming to {tag} done", file=sys.stderr)
    return 0


OUTPUT_TYPES = ("image", "oci", "docker", "tar", "local")


def _output_spec(text: str, tags: list[str]) -> dict:
    """Parse --output like buildx: `type=oci,dest=out.tar,name=app:1`, or a bare path (type=local)."""
    from pybuild.oci.reference import InvalidReference, parse_reference

    if "=" not in text:
        spec = {"type": "local", "dest": text}
    else:
        spec = {}
        for part in text.split(","):
            key, sep, value = part.partition("=")
            if not sep or not value:
                raise UsageError(f"--output {text}: expected key=value pairs, got {part!r}")
            spec[key.strip()] = value.strip()
    kind = spec.setdefault("type", "image")
    if kind not in OUTPUT_TYPES:
        raise UsageError(f"--output {text}: unknown type {kind!r} (one of {', '.join(OUTPUT_TYPES)})")
    unknown = set(spec) - {"type", "dest", "name"}
    if unknown:
        raise UsageError(f"--output {text}: unknown key {sorted(unknown)[0]!r}")
    if kind != "image" and "dest" not in spec:
        raise UsageError(f"--output {text}: type={kind} needs dest=")
    if kind in ("oci", "docker"):
        name = spec.get("name") or (tags[0] if tags else None)
        if not name:
            raise UsageError(f"--output {text}: an archive needs a name: add name=REF or -t")
        try:
            spec["ref"] = parse_reference(name)
        except InvalidReference as exc:
            raise UsageError(f"--output {text}: {exc}") from None
    if kind in ("oci", "docker", "tar") and not Path(spec["dest"]).parent.is_dir():
        raise UsageError(f"--output {text}: directory {str(Path(spec['dest']).parent)!r} does not exist")
    return spec


def _write_output(store, manifest_digest: str, spec: dict) -> None:
    from pybuild.cache.gc import build_lease
    from pybuild.cache.layers import unpack_tar_stream
    from pybuild.commands.export import export_image
    from pybuild.oci.archive import save_oci_archive
    from pybuild.oci.docker_archive import save_docker_archive

    kind, dest = spec["type"], spec.get("dest")
    if kind == "oci":
        with build_lease(store.root):
            save_oci_archive(store.content, [(spec["ref"], manifest_digest)], Path(dest))
    elif kind == "docker":
        with build_lease(store.root):
            save_docker_archive(store.content, [(spec["ref"], manifest_digest)], Path(dest))
    elif kind == "tar":
        with atomic_write(dest) as f:
            export_image(store, manifest_digest, f)
    elif kind == "local":
        target = Path(dest)
        if target.exists() and any(target.iterdir()):
            raise PybuildError(f"--output type=local,dest={dest}: the directory is not empty")
        with tempfile.TemporaryFile(dir=store.root / "tmp") as flat:
            export_image(store, manifest_digest, flat)
            flat.seek(0)
            unpack_tar_stream(flat, target)


def _print_cache_report(args, reporter) -> None:
    from pybuild.progress import cache_report_json, render_cache_report

    if args.cache_report == "json":
        print(json.dumps(cache_report_json(reporter.summary), indent=2))
    elif args.cache_report == "text":
        sys.stderr.write(render_cache_report(reporter.summary))


def _dockerignore(context: Path, dockerfile: Path):
    from pybuild.builder.context import find_ignore_file
    from pybuild.builder.dockerignore import DockerIgnore

    path = find_ignore_file(context, dockerfile)
    if path is None:
        return None, ".dockerignore"
    try:
        return DockerIgnore.parse(path.read_text(encoding="utf-8", errors="replace")), str(path)
    except ValueError as exc:  # "line N: reason"
        raise PybuildError(f"{path}:{str(exc).removeprefix('line ')}") from None


def _image_id(store, manifest_digest: str) -> str:
    from pybuild.oci.image import load_manifest

    return load_manifest(store.content, manifest_digest)["config"]["digest"]


# -- images / import / save -------------------------------------------------------------------------
def cmd_images(args) -> int:
    from pybuild.commands._format import ago, human_size, table

    store = _store(args)
    rows = []
    for ref, manifest_digest in store.images.list():
        img = store.images.image(str(ref))
        size = sum(layer.size for layer in img.layers)
        row = [ref.name, ref.tag, img.id.split(":", 1)[1][:12], ago(img.config.get("created")), human_size(size)]
        if args.digests:
            row.insert(2, manifest_digest)
        rows.append(tuple(row))
    if args.quiet:
        for r in rows:
            print(r[3 if args.digests else 2])
        return 0
    header = ("REPOSITORY", "TAG", "DIGEST", "IMAGE ID", "CREATED", "SIZE") if args.digests else (
        "REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE")
    print(table([header, *rows]))
    return 0


def _changes(items: list[str]) -> dict:
    """--change "CMD [..]" and friends, parsed by the Dockerfile grammar, mapped to config fields."""
    from pybuild.grammar import DockerfileError, ast, expand_word, parse

    if not items:
        return {}
    try:
        df = parse("FROM scratch\n" + "\n".join(items) + "\n", "--change")
    except DockerfileError as exc:
        raise UsageError(str(exc)) from None
    out: dict = {}
    for ins in df.stages[0].instructions:
        if isinstance(ins, (ast.Cmd, ast.Entrypoint)):
            value = list(ins.command.args) if isinstance(ins.command, ast.ExecForm) else ["/bin/sh", "-c",
                                                                                          ins.command.text]
            out["Cmd" if isinstance(ins, ast.Cmd) else "Entrypoint"] = value
        elif isinstance(ins, ast.Env):
            env = out.setdefault("Env", [])
            env.extend(f"{k}={expand_word(v, {})}" for k, v in ins.pairs)
        elif isinstance(ins, ast.Workdir):
            out["WorkingDir"] = ins.path
        elif isinstance(ins, ast.User):
            out["User"] = ins.user
        else:
            raise UsageError(f"--change: {ins.original.split()[0]} is not supported "
                             "(use CMD, ENTRYPOINT, ENV, WORKDIR or USER)")
    return out


def _input_source(arg: str, command: str, *, directory_ok: bool):
    """`-` is standard input; anything else must be an existing file (or directory, for import)."""
    if arg == "-":
        return sys.stdin.buffer
    path = Path(arg)
    if not (path.exists() if directory_ok else path.is_file()):
        raise PybuildError(f"{command}: {arg}: no such file" + (" or directory" if directory_ok else ""))
    return path


def cmd_import(args) -> int:
    from pybuild.cache.gc import build_lease
    from pybuild.cache.layers import LayerError
    from pybuild.oci.archive import import_rootfs
    from pybuild.oci.reference import InvalidReference, parse_reference

    try:
        ref = parse_reference(args.reference)
    except InvalidReference as exc:
        raise UsageError(str(exc)) from None
    changes = _changes(args.change)
    store = _store(args)
    source = _input_source(args.source, "import", directory_ok=True)
    try:
        with build_lease(store.root):  # blobs are written before the tag: keep GC away until then
            digest = import_rootfs(source, ref, store.content, store.images, changes=changes)
    except LayerError as exc:
        raise PybuildError(f"import {args.source}: {exc}") from None
    print(_image_id(store, digest))
    return 0


def cmd_load(args) -> int:
    from pybuild.cache.gc import build_lease
    from pybuild.cache.content import DigestMismatch
    from pybuild.cache.layers import LayerError
    from pybuild.oci.archive import ArchiveError
    from pybuild.oci.docker_archive import load_any

    store = _store(args)
    source = _input_source(args.input, "load", directory_ok=False)
    try:
        with build_lease(store.root):
            loaded = load_any(source, store.content, store.images)
    except (ArchiveError, DigestMismatch, LayerError, ValueError, OSError) as exc:
        raise PybuildError(f"load {args.input}: {exc}") from None
    for ref, digest in loaded:
        print(f"Loaded image: {ref}" if ref else f"Loaded image ID: {_image_id(store, digest)}")
    return 0


def cmd_save(args) -> int:
    from pybuild.cache.gc import build_lease
    from pybuild.oci.archive import save_oci_archive
    from pybuild.oci.docker_archive import save_docker_archive
    from pybuild.oci.reference import parse_reference
    from pybuild.oci.store import ImageNotFound

    store = _store(args)
    images = []
    for name in args.images:
        try:
            images.append((parse_reference(name), store.images.resolve(name)))
        except (ImageNotFound, ValueError) as exc:
            raise PybuildError(str(exc).strip('"')) from None
    out = Path(args.output)
    if not out.parent.is_dir():
        raise PybuildError(f"save -o {args.output}: directory {str(out.parent)!r} does not exist")
    save = save_docker_archive if args.format == "docker" else save_oci_archive
    with build_lease(store.root):
        save(store.content, images, out)
    return 0


# -- run --------------------------------------------------------------------------------------------
def cmd_run(args) -> int:
    from pybuild.cache.gc import build_lease
    from pybuild.oci.store import ImageNotFound

    store = _store(args)
    try:
        img = store.images.image(args.image)
    except ImageNotFound as exc:
        raise PybuildError(str(exc).strip('"')) from None
    c = img.config.get("config") or {}
    entrypoint = [args.entrypoint] if args.entrypoint else list(c.get("Entrypoint") or [])
    cmd = list(args.cmd) if args.cmd else ([] if args.entrypoint else list(c.get("Cmd") or []))
    argv = entrypoint + cmd
    if not argv:
        raise PybuildError(f"{args.image}: no command given and the image has no CMD or ENTRYPOINT")
    env: dict[str, str] = {}
    for item in c.get("Env") or []:
        k, _, v = item.partition("=")
        env[k] = v
    for item in args.env:
        if "=" in item:
            k, _, v = item.partition("=")
            env[k] = v
        elif item in os.environ:
            env[item] = os.environ[item]
    env.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    store.clean_stale()
    with build_lease(store.root):  # the image's snapshots are lowerdirs while the container lives
        return _run_container(args, store, img, argv, env, c)


def _run_container(args, store, img, argv, env, c) -> int:
    from pybuild.sandbox.runner import ProcessSpec, RootfsSpec, SandboxError, run

    lowers = store.snapshots.lowerdirs(img.layers)
    work = store.snapshots.new_work_dir()
    try:
        (work / "upper").mkdir()
        (work / "work").mkdir()
        spec = ProcessSpec(args=argv, env=env, cwd=args.workdir or c.get("WorkingDir") or "/",
                           user=args.user or c.get("User") or None,
                           hostname=args.hostname or img.id.split(":", 1)[1][:12], network=args.network,
                           resources=_resources(args))
        try:
            status = run(spec, RootfsSpec(lowers, work / "upper", work / "work"))
        except SandboxError as exc:
            raise PybuildError(str(exc)) from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if status.oom_killed:
        print(f"pybuild: container killed: out of memory, limit {args.memory / (1 << 20):g} MiB"
              if args.memory else "pybuild: container killed: out of memory", file=sys.stderr)
    return status.code


if __name__ == "__main__":
    sys.exit(main())
