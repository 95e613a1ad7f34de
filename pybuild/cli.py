"""The `pybuild` command line: thin argument handling over the builder, the stores and the sandbox.

`pybuild -t NAME PATH` means `pybuild build -t NAME PATH`. Exit status: 0 on
success, 1 when a build or command fails, 2 on usage errors; `run` returns the
container's status, or 125 when pybuild itself fails (as docker does).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import contextlib
import tempfile
import shutil
import sys
from pathlib import Path

from pybuild import __version__
from pybuild.atomicfile import atomic_write, write_atomic
from pybuild.errors import PybuildError, UsageError

from pybuild.commands import command_names as _command_names, load as _load_command

PLUGIN_NAMES = _command_names()  # module names, read without importing them (run: commands/run.py)
COMMANDS = ("build", "images", "import", "load", "save", "help", *PLUGIN_NAMES)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # usage errors: one line, exit 2
        raise UsageError(f"{self.prog}: {message}")


def _parser(only: str | None = None) -> argparse.ArgumentParser:
    """The command line parser; with `only`, just that command's subparser (what one run needs: each
    subparser costs ~1 ms of argparse and gettext work, ~25 ms for all of them on every start)."""
    def wanted(name: str) -> bool:
        return only is None or only == name

    p = _Parser(prog="pybuild", description="Build OCI images from Dockerfiles, without a daemon.",
                epilog="`pybuild -t NAME PATH` is short for `pybuild build -t NAME PATH`.")
    p.add_argument("--version", action="version", version=f"pybuild {__version__}")
    p.add_argument("--root", help="state directory (default $PYBUILD_ROOT, /var/lib/pybuild for root)")
    sub = p.add_subparsers(dest="command", parser_class=_Parser)

    if wanted("build"):
        b = sub.add_parser("build", help="build an image from a Dockerfile",
                           description="Build an image from a Dockerfile. Example: pybuild build -t app:1.0 .")
        b.add_argument("context", metavar="PATH | URL | -",
                       help="build context: a directory; - for a context tar (or a lone Dockerfile) on stdin; or a URL: "
                            "a git repository (REPO.git, git://, ssh://, git@HOST:PATH, file://; #REF:SUBDIR picks a "
                            "branch, tag or commit and the context directory in it) or an http(s) tar (a plain file "
                            "there is the Dockerfile, with an empty context)")
        b.add_argument("-f", "--file", help="Dockerfile path (default: PATH/Dockerfile, else PATH/dockerfile; "
                            "- reads it from stdin; with a context tar on stdin or a URL context, a path inside "
                            "that context)")
        b.add_argument("-t", "--tag", action="append", default=[], help="name:tag for the image (repeatable)")
        b.add_argument("--build-arg", action="append", default=[], metavar="K=V",
                       help="set a build argument (K alone takes its value from the environment)")
        b.add_argument("--target", help="build this stage and what it needs, not the last one")
        b.add_argument("--label", action="append", default=[], metavar="K=V", help="set a label on the image (repeatable; K alone: an empty value)")
        b.add_argument("--platform", metavar="OS/ARCH", help="target platform; only this host's (linux/amd64) can be built")
        b.add_argument("-j", "--jobs", type=_positive_int, default=0, metavar="N",
                       help="steps executing at once (default: twice the number of CPUs, at least 4)")
        b.add_argument("--no-cache", action="store_true", help="run every step, ignoring the cache")
        b.add_argument("--no-cache-filter", action="append", default=[], metavar="STAGE",
                       help="run the steps of these stages, ignoring the cache (repeatable or comma-separated)")
        b.add_argument("--cache-from", action="append", default=[], metavar="type=local,src=DIR|type=registry,ref=REF",
                       help="also take cached steps (and cache mounts) from what --cache-to wrote (repeatable); "
                            "a source that cannot be read is a warning")
        b.add_argument("--cache-to", metavar="type=local,dest=DIR|type=registry,ref=REF[,mode=min|max][,mounts=true]",
                       help="export this build's cache records and layers to DIR (an OCI layout) or REF (an OCI "
                            "artifact); mode=min (default) the final image's steps, mode=max every step of every "
                            "built stage; mounts=true also the RUN --mount=type=cache contents")
        b.add_argument("--network", choices=("none", "host"), default="none",
                       help="network for RUN steps (default none)")
        add_userns_flag(b, "RUN steps")
        b.add_argument("-q", "--quiet", action="store_true", help="print only the image id")
        add_host_flag(b, "every RUN step (in RUN cache keys, as BuildKit)")
        b.add_argument("--load", action="store_true",
                       help="as buildx: the image goes to the local store (pybuild's default output; "
                            "cannot be combined with an --output of another type)")
        b.add_argument("--provenance", nargs="?", const="true", metavar="false", help="accepted only as false/0: pybuild makes no attestations")
        b.add_argument("--sbom", nargs="?", const="true", metavar="false", help="accepted only as false/0: pybuild makes no attestations")
        b.add_argument("--check", dest="call", action="store_const", const="check",
                       help="only lint the Dockerfile, as pybuild check (buildx --call=check)")
        b.add_argument("--call", choices=("build", "check"), default="build",
                       help="build (default) or check: only lint the Dockerfile, as pybuild check")
        b.add_argument("--allow", action="append", default=[], choices=("security.insecure",),
                       help="grant an entitlement: security.insecure lets RUN --security=insecure run privileged")
        _add_resource_flags(b, "each RUN step")
        b.add_argument("--progress", choices=("auto", "tty", "plain", "rawjson"), default=None,
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
                            "type=local,dest=PATH; type=image (the default) only stores and tags it "
                            "(name=REF[,push=true] also names and pushes it); type=registry,name=REF pushes it")
        b.add_argument("--pull", dest="pull", action="store_const", const="always", default="missing",
                       help="--pull: refresh FROM images from their registry; --pull=missing (default) pulls only "
                            "those not in the local store; --pull=never never pulls")
        b.add_argument("--pull-policy", dest="pull", help=argparse.SUPPRESS)  # `--pull=X`, see _pull_policy_flags
        b.add_argument("--push", action="store_true", help="push every -t name to its registry after the build")
        b.add_argument("--iidfile", metavar="FILE", help="write the image id (config digest) to FILE")
        b.add_argument("--metadata-file", metavar="FILE",
                       help="write JSON with the image's manifest and config digests to FILE")
        b.add_argument("--secret", action="append", default=[], metavar="id=ID[,src=FILE|,env=VAR]",
                       help="a secret for RUN --mount=type=secret (also type=file|env,src=...); never stored")
        b.add_argument("--ssh", action="append", default=[], metavar="ID[=SOCKET|KEY[,KEY...]]",
                       help="an ssh agent for RUN --mount=type=ssh: `default` is $SSH_AUTH_SOCK; key files "
                            "get a private ssh-agent for the build")

    if wanted("images"):
        i = sub.add_parser("images", help="list images in the local store",
                           description="Like docker images. Examples: pybuild images busybox; pybuild images "
                                       "-q --filter dangling=true; pybuild images --format '{{.Repository}}:{{.Tag}}'")
        i.add_argument("reference", nargs="?", metavar="REPOSITORY[:TAG]",
                       help="only images whose name matches (Go path.Match patterns: 'app*', 'app:1.*')")
        i.add_argument("-q", "--quiet", action="store_true", help="only image ids")
        i.add_argument("--digests", action="store_true", help="show manifest digests")
        i.add_argument("--no-trunc", action="store_true", help="full image ids")
        i.add_argument("-f", "--filter", action="append", default=[], metavar="KEY=VALUE",
                       help="dangling=true|false, reference=PATTERN, label=KEY[=VALUE], before=IMAGE, since=IMAGE")
        i.add_argument("--format", metavar="TEMPLATE",
                       help="Go template over the fields {{.Repository}} {{.Tag}} {{.Digest}} {{.ID}} {{.CreatedSince}} "
                            "{{.CreatedAt}} {{.Size}}, {{json .}}; 'table ...' for columns")

    if wanted("import"):
        im = sub.add_parser("import", help="make a one-layer image from a rootfs directory or tarball",
                            description="Like docker import. Example: pybuild import ./rootfs busybox:latest")
        im.add_argument("source", help="directory, tar or tar.gz file, or - for a tar on stdin")
        im.add_argument("reference", help="NAME[:TAG]")
        im.add_argument("-m", "--message", help="the history comment (default: 'imported from SOURCE')")
        im.add_argument("-c", "--change", action="append", default=[],
                        help="Dockerfile instruction applied to the config (repeatable): CMD, ENTRYPOINT, ENV, EXPOSE, "
                             "LABEL, STOPSIGNAL, USER, VOLUME, WORKDIR")

    if wanted("load"):
        ld = sub.add_parser("load", help="load images from an OCI or docker archive (docker/podman save, skopeo)",
                            description="Example: pybuild load -i hello.tar")
        ld.add_argument("-i", "--input", help="tarball to read (default, or -: stdin)")

    if wanted("save"):
        s = sub.add_parser("save", help="write images to an OCI image-layout or docker-archive tarball")
        s.add_argument("-o", "--output", help="tarball to write (default, or -: stdout, which must not be a terminal)")
        s.add_argument("--format", choices=("oci", "docker"), default="oci",
                       help="oci (image layout, default) or docker (docker save / docker load format)")
        s.add_argument("images", nargs="+", help="NAME[:TAG]")

    for name in PLUGIN_NAMES:
        if wanted(name):
            _load_command(name).add_parser(sub)

    h = sub.add_parser("help", help="show this help, or a command's: pybuild help build")
    h.add_argument("topic", nargs="?", help="a command")
    return p


def add_userns_flag(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--userns", choices=("host", "auto"), default="host",
                   help=f"user namespace for {what}: host (default) or auto (own namespace, root's range "
                        "in /etc/subuid+/etc/subgid, else host ids 100000-165535; same results)")


def userns_idmap(mode: str):
    """The IdMap for ``--userns=MODE`` (None for host); a bad /etc/subuid is a usage error."""
    if mode == "host":
        return None
    from pybuild.sandbox.idmap import IdMapError, default_idmap

    try:
        return default_idmap()
    except IdMapError as e:
        raise UsageError(f"--userns={mode}: {e}") from None


def _add_resource_flags(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("-m", "--memory", type=_memory_size, metavar="SIZE",
                   help=f"memory limit for {what} (bytes, or with k/m/g: 256m)")
    p.add_argument("--cpus", type=_positive_float, metavar="N", help=f"CPU limit for {what} (e.g. 1.5)")
    p.add_argument("--pids-limit", type=_positive_int, metavar="N",
                   help=f"process limit for {what} (pybuild's own init counts as 2)")


HOST_GATEWAY = "host-gateway"


def add_host_flag(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--add-host", action="append", default=[], type=_extra_host, metavar="HOST:IP",
                   help=f"add HOST with address IP to the /etc/hosts of {what} (HOST:IP or HOST=IP, repeatable; "
                        f"IP may be {HOST_GATEWAY})")


def _extra_host(text: str) -> tuple[str, str]:
    """docker's --add-host value: ``HOST:IP`` (split at the first ``:``, so ``h:::1`` is IPv6) or
    ``HOST=IP``; IP an address or ``host-gateway``."""
    import ipaddress

    sep = "=" if "=" in text else ":"
    name, found, addr = text.partition(sep)
    addr = addr.strip("[]")  # docker accepts [::1]
    if not found or not name or any(c.isspace() or c in "#\0" for c in name):
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: HOST:IP or HOST=IP")
    if addr != HOST_GATEWAY:
        try:
            ipaddress.ip_address(addr)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid value {text!r}: {addr!r} is not an IP address") from None
    return name, addr


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
        if not a.startswith("-") and not os.path.exists(a) and not _looks_like_url(a):
            import difflib  # only for this message: keeps it out of every command's start-up

            near = difflib.get_close_matches(a, COMMANDS, n=1, cutoff=0.6)
            if near:
                raise UsageError(f"unknown command {a!r} (did you mean {near[0]}?)")
            # neither a command nor a context `build` could use: say both, not "not a directory"
            raise UsageError(f"unknown command or build context {a!r} (commands: {', '.join(sorted(COMMANDS))}; "
                             "a context must be an existing directory, - or a URL)")
        return argv[:i] + ["build"] + argv[i:]
    return argv


def _command_word(argv: list[str]) -> str | None:
    """The subcommand `argv` (already normalised) runs; None when help or the version is asked for
    before one, so that the parser is built whole."""
    i = 0
    while i < len(argv):
        a = argv[i]
        if a in COMMANDS:
            return a
        if a in ("-h", "--help", "--version"):
            return None
        i += 2 if a == "--root" else 1
    return None


def _looks_like_url(word: str) -> bool:
    from pybuild.builder.url_context import is_url_context

    return is_url_context(word)


def _pull_policy_flags(argv: list[str]) -> list[str]:
    """`--pull=never` -> `--pull-policy=never` (argparse cannot have `--pull` both bare and with a
    value without swallowing the next word); stops at `run` and `--`, whose words are a command's."""
    out = []
    for i, a in enumerate(argv):
        if a in ("run", "--"):
            return out + argv[i:]
        out.append("--pull-policy=" + a[len("--pull="):] if a.startswith("--pull=") else a)
    return out


def main(argv: list[str] | None = None) -> int:
    argv = _pull_policy_flags(list(sys.argv[1:] if argv is None else argv))
    args = None
    command = None
    try:
        argv = _normalise_argv(argv)
        command = _command_word(argv)
        parser = _parser(only=None if command in (None, "help") else command)
        args = parser.parse_args(argv)
        if args.command == "help" and args.topic:
            parser.parse_args([args.topic, "--help"])  # prints the command's help and exits 0
        if args.command in (None, "help"):
            parser.print_help()
            return 0
        builtin = {"build": cmd_build, "images": cmd_images, "import": cmd_import, "load": cmd_load,
                   "save": cmd_save}
        if args.command in builtin:
            handler = builtin[args.command]
        else:
            plugin = _load_command(args.command)
            handler = lambda a: plugin.run(a, lambda: _store(a))  # noqa: E731
        if args.command != "run":  # run forwards SIGTERM to the container instead
            signal.signal(signal.SIGTERM, _terminate)
        return handler(args)
    except UsageError as exc:
        print(f"pybuild: {exc}" if not str(exc).startswith("pybuild") else str(exc), file=sys.stderr)
        return 125 if command == "run" else 2  # docker run: 125 for its own errors, flags included
    except PybuildError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 125 if getattr(args, "command", None) == "run" else exc.exit_code
    except KeyboardInterrupt:
        # the build's words only for a build; other commands stop quietly (`logs -f`, a prompt), as docker's
        if getattr(args, "command", None) == "build":
            print("ERROR: interrupted: running steps were stopped, nothing was tagged", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `pybuild history x | head`: the reader left; stop quietly, as docker does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except Terminated:
        if getattr(args, "command", None) == "build":
            print("ERROR: terminated: running steps were stopped, nothing was tagged", file=sys.stderr)
        return 143
    except Exception as exc:  # a damaged store (a corrupt or missing blob): one line, no traceback;
        # last, as BrokenPipeError is an Exception too
        message = store_damage(exc)
        if message is None:
            raise
        print(f"ERROR: {message}", file=sys.stderr)
        return 125 if getattr(args, "command", None) == "run" else 1


FSCK_HINT = "run `pybuild fsck --repair`"


def store_damage(exc: BaseException) -> str | None:
    """The one-line message for an error that means the store's own content is damaged (a blob
    whose content no longer matches its digest, or one an image needs that is gone), naming the
    blob and the repair; None for any other error.  Everyday commands let these reach `main`.
    (Blobs that come in, by pull or load, are checked where they are written and reported there.)"""
    content = sys.modules.get("pybuild.cache.content")  # not loaded: the error cannot be one of its
    if content is None:
        return None
    if isinstance(exc, content.DigestMismatch):
        return f"{exc}; {FSCK_HINT}"
    if isinstance(exc, content.BlobNotFound):
        return f"blob {exc.args[0] if exc.args else '?'} is missing from the store; {FSCK_HINT}"
    return None


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


def _secrets(items: list[str]) -> dict:
    """--secret values, read now: id -> mounts.Secret (whose repr never shows the bytes)."""
    from pybuild.builder.mounts import MountSpecError, load_secret, parse_secret_flag

    out = {}
    for item in items:
        try:
            source = parse_secret_flag(item, os.environ)
            out[source.id] = load_secret(source, os.environ)
        except MountSpecError as exc:
            raise UsageError(f"--secret {item}: {exc}") from None
    return out


def _ssh_sources(items: list[str], agents) -> dict[str, str]:
    """--ssh values: id -> agent socket; key files are loaded into a private agent of `agents`."""
    from pybuild.builder.mounts import MountSpecError, parse_ssh_flag

    for item in items:
        try:
            ssh_id, paths = parse_ssh_flag(item, os.environ)
            agents.add(ssh_id, paths)
        except MountSpecError as exc:
            raise UsageError(f"--ssh {item}: {exc}" if not str(exc).startswith("--ssh") else str(exc)) from None
    return dict(agents.sockets)


def cmd_build(args) -> int:
    """`pybuild build`; with rawjson progress, a failure before the steps run (a flag, the context,
    the Dockerfile) ends the stream with a `build.error` event too, as one of a step does."""
    try:
        return _cmd_build(args)
    except PybuildError as exc:
        reporter = _early_reporter(args)
        if reporter is None:
            raise  # main prints it as ever
        reporter.build_error(str(exc), None, None, getattr(exc, "location", None))
        return exc.exit_code


def _early_reporter(args):
    """rawjson's reporter for a build failing before (or, as a --push, after) its steps, so that
    the event stream still ends in `build.error`; None for the other modes (their text errors are
    printed as ever) and when the mode cannot be read (a bad config file: that error stays text)."""
    try:
        mode = _progress_mode(args.progress)
    except PybuildError:
        return None
    if mode == "auto":  # as make_reporter resolves it
        mode = os.environ.get("PYBUILD_PROGRESS", "").strip().lower()
    if mode != "rawjson":
        return None
    from pybuild.ui.rawjson import RawJSONReporter

    return RawJSONReporter(sys.stderr, quiet=args.quiet)


def _dockerfile_failure(args, exc, text: str, dockerfile_name: str) -> int:
    """A Dockerfile that does not parse (or an invalid `# check=` directive), before any step:
    `ERROR: FILE:LINE:COL: message`, the line and a caret, or rawjson's `build.error` event
    (the message, BuildKit's excerpt and where) as a failed step's."""
    from pybuild.progress import dockerfile_excerpt

    reporter = _early_reporter(args)
    if reporter is None:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 1
    location = f"{exc.filename}:{exc.line}:{exc.col}"
    reporter.build_error(exc.headline, None, dockerfile_excerpt(text, dockerfile_name, location), location)
    return 1


def _cmd_build(args) -> int:
    _check_platform(args.platform)
    _buildx_compat_flags(args)
    if args.call == "check":
        return _build_check(args)
    labels = _labels(args.label)
    if args.context == "-" and args.file == "-":
        raise UsageError("-f - and a context of - cannot both read stdin")
    if _looks_like_url(args.context):
        from pybuild.builder.url_context import check_url

        check_url(args.context)  # a malformed URL is a usage error, before anything is fetched
    # A stdin or URL context lives in this directory, removed after the build (also on error,
    # Ctrl-C, SIGTERM). It is a work dir of the store (tmp/<pid>-<start>-<rand>), so what a
    # SIGKILLed build leaves is swept by the next build's clean_stale, not left in /tmp.
    with _archive_stdout(args), _context_dir(args) as tmp:
        stdin_dockerfile = None
        if _looks_like_url(args.context):
            return _build_url_context(args, labels, Path(tmp))
        if args.context == "-":
            args.context, stdin_dockerfile = _context_from_stdin(Path(tmp))
            if stdin_dockerfile is not None and not args.file:
                args.file = "-"
            elif stdin_dockerfile is None:
                args.file = _dockerfile_in_context(Path(args.context), args.file, "stdin context", "in the tar",
                                                   "add one at its top level, or name it with -f PATH-IN-TAR")
                return _build(args, labels, None, tar_context=Path(args.context))
        return _build(args, labels, stdin_dockerfile)


@contextlib.contextmanager
def _context_dir(args):
    from pybuild.store import default_root

    from pybuild.cache.snapshots import new_owned_dir

    tmp_root = (Path(args.root) if args.root else default_root()) / "tmp"
    tmp_root.mkdir(parents=True, exist_ok=True)
    d = new_owned_dir(tmp_root)
    try:
        yield str(d)
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _build_url_context(args, labels: dict[str, str], tmp: Path) -> int:
    """`pybuild build URL`: a git repository checked out, or an http(s) tar unpacked, into ``tmp``
    (see builder/url_context.py); then the build, as for a context tar on stdin."""
    from pybuild.builder.url_context import fetch_context, keep_git_dir, redact

    url, shown = args.context, redact(args.context)
    fetched = fetch_context(url, tmp, keep_git=keep_git_dir(_build_args(args.build_arg)))
    where = f"build context {shown}"
    if fetched.dockerfile is not None:  # the URL is the Dockerfile; the context is empty
        if args.file == "-":
            raise UsageError(f"-f -: {where} is itself a Dockerfile; give the Dockerfile only once")
        if args.file:
            raise PybuildError(f"{where}: -f {args.file}: the URL is a single Dockerfile, not a tar, "
                               "so there is no file to name")
        args.context, args.file = str(fetched.directory), "-"
        return _build(args, labels, fetched.dockerfile, tar_context=fetched.directory, label=where)
    args.context = str(fetched.directory)
    if args.file != "-":
        if fetched.kind == "git":
            subdir = url.partition("#")[2].partition(":")[2].strip("/")
            inside = f"in {subdir}/ of the repository" if subdir else "in the repository"
            hint = "name it with -f PATH, relative to the context"
        else:
            inside, hint = "in the tar", "add one at its top level, or name it with -f PATH-IN-TAR"
        args.file = _dockerfile_in_context(fetched.directory, args.file, where, inside, hint)
    return _build(args, labels, None, tar_context=fetched.directory, label=where)


def _dockerfile_in_context(context: Path, name: str | None, where: str, inside: str, hint: str) -> str:
    """The Dockerfile of a context read from stdin or a URL: ``-f NAME`` is a path inside that
    context, as docker has it (default ``Dockerfile``).  Errors say ``where`` and ``inside`` (the
    tar, the repository), never the temporary directory."""
    import posixpath

    rel = posixpath.normpath(name.lstrip("/")) if name else _default_dockerfile(context).name
    path = context / rel
    # a symlink out of the context (a repository can hold one) is no Dockerfile of it
    if rel.startswith("../") or rel == ".." or not path.resolve().is_relative_to(context.resolve()) \
            or not path.is_file():
        if name is None:
            raise PybuildError(f"{where}: no Dockerfile {inside} ({hint})")
        raise PybuildError(f"{where}: -f {name}: no such file {inside}")
    return str(path)


def _build_hosts(items: list[tuple[str, str]]) -> dict[str, str]:
    for name, addr in items:
        if addr == HOST_GATEWAY:  # docker's daemon maps it to its bridge's gateway: builds have none
            raise UsageError(f"--add-host {name}:{addr}: RUN steps have no bridge network, so no gateway; "
                             "give the address")
    return dict(items)


def _buildx_compat_flags(args) -> None:
    """Flags buildx CI scripts pass that ask nothing of pybuild, checked so that none is silently
    ignored: --provenance/--sbom only as false (no attestations are made: a request for one is
    an error, as buildx's docker driver gives), --load only with the image output it means."""
    for flag in ("provenance", "sbom"):
        value = getattr(args, flag)
        if value is not None and value.strip().lower() not in ("false", "0", "mode=disabled"):
            raise UsageError(f"--{flag}={value}: pybuild makes no attestations (use --{flag}=false)")
    if args.load and args.output:
        kind = _output_spec(args.output, args.tag)["type"]
        if kind != "image":
            raise UsageError(f"--load: conflicts with --output type={kind} (--load means type=image, the local store)")


def _build_check(args) -> int:
    """`build --check` / `--call=check`: lint only, exactly as `pybuild check` (no step runs)."""
    from pybuild.commands import check

    if args.context == "-" or _looks_like_url(args.context):
        raise UsageError(f"--call=check: needs a directory context (got {args.context!r}); use pybuild check -f FILE")
    return check.run(argparse.Namespace(context=args.context, file=args.file, build_arg=args.build_arg,
                                        root=args.root), lambda: _store(args))


def _default_dockerfile(context: Path) -> Path:
    """The Dockerfile of ``context`` when -f is not given: ``Dockerfile``, else ``dockerfile`` when
    only that lowercase name is there, as docker's CLI (build/context.go getDockerfileRelPath) and
    BuildKit's dockerui frontend (ReadEntrypoint, "dockerfile is also supported casing") fall back."""
    path = context / "Dockerfile"
    if not os.path.lexists(path) and os.path.lexists(context / "dockerfile"):
        return context / "dockerfile"
    return path


def check_platform_syntax(platform: str) -> None:
    """``OS/ARCH[/VARIANT]`` (each part letters, digits, ``_`` ``.`` ``-``), else a UsageError naming it."""
    import re

    if not re.fullmatch(r"[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)?", platform):
        raise UsageError(f"--platform {platform}: expected OS/ARCH[/VARIANT], e.g. linux/amd64")


def _check_platform(platform: str | None) -> None:
    """Builds run natively: linux/amd64 (with an optional variant) or nothing else."""
    if platform is None:
        return
    check_platform_syntax(platform)
    parts = platform.lower().split("/")
    if parts[:2] != ["linux", "amd64"]:
        raise UsageError(f"--platform {platform}: only linux/amd64 can be built on this host "
                         "(no emulation is set up)")


def _config_jobs() -> int:
    from pybuild.config import settings

    return settings().jobs or 0


def _labels(items: list[str]) -> dict[str, str]:
    """``--label K=V``; ``--label K`` is ``K`` with an empty value, as docker has it."""
    out = {}
    for item in items:
        k, _, v = item.partition("=")
        if not k:
            raise UsageError(f"--label {item!r}: expected KEY=VALUE or KEY")
        out[k] = v
    return out


def _progress_mode(flag: str | None) -> str:
    """--progress, else $PYBUILD_PROGRESS (read by make_reporter for auto), else the config file."""
    from pybuild.config import settings

    if flag is not None:
        return flag
    if os.environ.get("PYBUILD_PROGRESS") or settings().progress is None:
        return "auto"
    return settings().progress


def _context_from_stdin(dest: Path) -> tuple[str, bytes | None]:
    """`pybuild build -`: stdin is a context tar (plain or compressed), or just a Dockerfile.

    A tar is unpacked by ``unpack_context_tar`` (nothing followed on the host; symlinks kept
    with any target; members escaping the directory or going through a link, and device
    files, are refused).  Otherwise stdin is the Dockerfile and the context is empty,
    as `docker build - < Dockerfile` does.  Returns the context dir and, when stdin held only
    a Dockerfile, its bytes.
    """
    from pybuild.builder.url_context import NotUsableTar, unpack_context_tar

    spooled = dest / "stdin"
    with open(spooled, "wb") as f:
        shutil.copyfileobj(sys.stdin.buffer, f, 1 << 20)
    context = dest / "context"
    context.mkdir()
    try:
        if unpack_context_tar(spooled, context):  # the same unpacking as a URL context's tar
            return str(context), None
    except NotUsableTar as exc:
        raise UsageError(f"build context from stdin: not a usable tar: {exc}") from None
    return str(context), spooled.read_bytes()


def _build(args, labels: dict[str, str], stdin_dockerfile: bytes | None, tar_context: Path | None = None,
           label: str = "stdin context") -> int:
    """The build; ``tar_context``: the context is that temporary directory (a stdin tar, a URL's
    tar or checkout), and messages name its files by their paths in it, after ``label``."""
    from pybuild.builder.mounts import SshAgents
    from pybuild.builder.solver import BuildOptions, StepFailed, build
    from pybuild.grammar import DockerfileError, parse
    from pybuild.oci.reference import InvalidReference, parse_reference
    from pybuild.progress import dockerfile_excerpt, make_reporter

    context = Path(args.context)
    if not context.is_dir():
        raise UsageError(f"build context {args.context!r} is not a directory")
    if args.file == "-":
        data = sys.stdin.buffer.read() if stdin_dockerfile is None else stdin_dockerfile
        dockerfile_path = context / "Dockerfile"  # for the .dockerignore lookup
    else:
        dockerfile_path = Path(args.file) if args.file else _default_dockerfile(context)
        try:
            data = dockerfile_path.read_bytes()
        except OSError as exc:
            raise PybuildError(f"cannot read Dockerfile {dockerfile_path}: {exc.strerror}") from None
    dockerfile_name = "Dockerfile" if args.file == "-" else str(dockerfile_path)  # buildx's name for stdin
    if tar_context is not None:
        dockerfile_name = str(dockerfile_path.relative_to(tar_context))
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        line_start = data.rfind(b"\n", 0, exc.start) + 1  # the line's text before the bad byte is valid UTF-8
        col = len(data[line_start: exc.start].decode("utf-8-sig" if line_start == 0 else "utf-8")) + 1
        where = f"{label}: {dockerfile_name}" if tar_context is not None else str(dockerfile_path)
        err = PybuildError(f"{where}:{line}:{col}: not valid UTF-8 (byte 0x{data[exc.start]:02x})")
        err.location = f"{dockerfile_name}:{line}:{col}"  # rawjson's build.error fields
        raise err from None
    for tag in args.tag:
        try:
            parse_reference(tag)
        except InvalidReference as exc:
            raise UsageError(f"-t {tag}: {exc}") from None
    try:
        dockerfile = parse(text, dockerfile_name)
    except DockerfileError as exc:  # FILE:LINE:COL: message, then the line and a caret
        return _dockerfile_failure(args, exc, text, dockerfile_name)
    output = _output_spec(args.output, args.tag) if args.output else None
    if output is not None and output.get("dest") == "-":
        output["stdout"] = getattr(args, "archive_stdout", None)  # the real stdout (fd 1 is stderr now)
    for flag, path in (("--iidfile", args.iidfile), ("--metadata-file", args.metadata_file)):
        if path:
            _check_output_file(flag, path)  # before the build: a bad path must not fail it after tagging
    if args.pull not in ("always", "missing", "never"):
        raise UsageError(f"--pull={args.pull}: expected --pull, --pull=always, --pull=missing or --pull=never")
    if args.push and not args.tag:
        raise UsageError("--push needs at least one -t NAME to push to")
    ignore, ignore_file = _dockerignore(context, dockerfile_path, tar_context, label)
    # As for BuildKit, SOURCE_DATE_EPOCH comes from --build-arg, else from the environment.
    sde = _build_args(args.build_arg).get("SOURCE_DATE_EPOCH", os.environ.get("SOURCE_DATE_EPOCH"))
    if sde is not None and sde != "" and not sde.isdigit():
        raise UsageError(f"SOURCE_DATE_EPOCH={sde!r}: expected a whole number of seconds since 1970")
    # as buildx, an archive or directory --output replaces the local store: -t then only names
    # the image inside an oci/docker archive, nothing is tagged here
    local_tags = args.tag if output is None or output["type"] in ("image", "registry") else []
    options = BuildOptions(context=context.resolve(), dockerfile=dockerfile, tags=local_tags, ignore=ignore,
                           ignore_file=ignore_file, remember_context_digests=tar_context is None,
                           build_args=_build_args(args.build_arg), target=args.target,
                           no_cache=args.no_cache, network=args.network, resources=_resources(args),
                           userns=userns_idmap(args.userns),
                           allow=frozenset(args.allow), compression=args.compression,
                           jobs=args.jobs or _config_jobs(), labels=labels, **_cache_options(args, dockerfile),
                           secrets=_secrets(args.secret), pull=args.pull, extra_hosts=_build_hosts(args.add_host),
                           keep_untagged=output is None or output["type"] == "image",
                           source_date_epoch=int(sde) if sde and sde.isdigit() else None)
    store = _store(args)
    store.clean_stale()
    try:
        lint_config, warnings = _lint(dockerfile, options.build_args, store)
    except DockerfileError as exc:  # an invalid `# check=` directive
        return _dockerfile_failure(args, exc, text, dockerfile_name)
    if lint_config.error and warnings:  # `# check=error=true`: BuildKit fails before any step
        violation = f"lint violation found for rules: {', '.join(sorted({w.rule for w in warnings}))}"
        if (early := _early_reporter(args)) is not None:
            early.build_lint([(w.rule, w.message, w.span.start_line) for w in warnings])
            early.build_error(violation)
            return 1
        for w in warnings:
            print(w.format(), file=sys.stderr)
        print(f"ERROR: {violation}", file=sys.stderr)
        return 1
    reporter = make_reporter(_progress_mode(args.progress), sys.stderr, quiet=args.quiet)
    try:
        with reporter, SshAgents() as agents:  # close() ends a live display; agents are killed after
            options.ssh = _ssh_sources(args.ssh, agents)
            record = build(store, reporter, options)
    except StepFailed as exc:
        _print_cache_report(args, reporter)
        reporter.build_error(str(exc), str(exc.log_path) if exc.log_path else None,
                             dockerfile_excerpt(text, dockerfile_name, exc.location), exc.location)
        return 1
    except PybuildError as exc:  # e.g. a COPY source that is not there: same channel as a failed RUN
        location = getattr(exc, "location", None)
        reporter.build_error(str(exc), None, dockerfile_excerpt(text, dockerfile_name, location), location)
        return exc.exit_code
    _print_cache_report(args, reporter)
    image_id = _image_id(store, record.manifest.digest)
    if output is not None:
        _write_output(store, record.manifest.digest, output)
    if args.push:
        _push(store, record.manifest.digest, args.tag)
    if args.iidfile:
        write_atomic(args.iidfile, image_id.encode())
    if args.metadata_file:
        meta = {"containerimage.digest": record.manifest.digest, "containerimage.config.digest": image_id,
                "image.name": ",".join(args.tag)}
        write_atomic(args.metadata_file, json.dumps(meta, indent=2, sort_keys=True).encode() + b"\n")
    if args.quiet:  # stdout carries the archive of `-o -`: the id goes to stderr then, as buildx's
        print(image_id, file=sys.stderr if output is not None and output.get("dest") == "-" else sys.stdout)
    else:
        reporter.build_written(image_id, record.manifest.digest, local_tags)
    # as BuildKit, the Dockerfile's lint warnings close the output (read again now that the base
    # images are in the store: UndefinedVar knows their ENV)
    _, warnings = _lint(dockerfile, options.build_args, store)
    if warnings:
        reporter.build_lint([(w.rule, w.message, w.span.start_line) for w in warnings])
    return 0


def _lint(dockerfile, build_args: dict[str, str], store):
    """(check config, lint warnings) of the Dockerfile, with the ENV of the base images the store
    holds; raises DockerfileError for an invalid `# check=` directive."""
    from pybuild.commands.check import base_image_env
    from pybuild.grammar.lint import check_config, external_base_images, lint

    config = check_config(dockerfile, build_args)
    return config, lint(dockerfile, build_args, base_image_env(store, external_base_images(dockerfile, build_args)))


def _check_output_file(flag: str, path: str) -> None:
    """UsageError unless a file can be written atomically at ``path`` (a temp file in its
    directory, then a rename: tried here, before the build, and removed at once)."""
    target = Path(path)
    if target.is_dir():
        raise UsageError(f"{flag} {path}: is a directory")
    parent = target.parent
    if not parent.is_dir():
        raise UsageError(f"{flag} {path}: directory {str(parent)!r} does not exist")
    try:
        fd, probe = tempfile.mkstemp(dir=parent, prefix=f".{target.name}.", suffix=".probe")
    except OSError as exc:
        raise UsageError(f"{flag} {path}: cannot write in {str(parent)!r}: {exc.strerror}") from None
    os.close(fd)
    os.unlink(probe)


def _cache_options(args, dockerfile) -> dict:
    """--no-cache-filter, --cache-from and --cache-to as BuildOptions fields (UsageError if bad)."""
    from pybuild.cache.transfer import parse_cache_from, parse_cache_to

    stages = {s.name.lower(): s.name for s in dockerfile.stages if s.name}
    names = [n.strip().lower() for item in args.no_cache_filter for n in item.split(",") if n.strip()]
    for name in names:
        if name not in stages:
            raise UsageError(f"--no-cache-filter {name}: no stage of that name in the Dockerfile "
                             f"(stages: {', '.join(stages.values()) or 'none named'})")
    try:
        return {"no_cache_filter": frozenset(names),
                "cache_from": tuple(parse_cache_from(text) for text in args.cache_from),
                "cache_to": parse_cache_to(args.cache_to) if args.cache_to else None}
    except ValueError as exc:
        raise UsageError(str(exc)) from None


OUTPUT_TYPES = ("image", "oci", "docker", "tar", "local", "registry")


def _output_spec(text: str, tags: list[str]) -> dict:
    """Parse --output like buildx: `type=oci,dest=out.tar,name=app:1`, a bare path (type=local), or
    `-` (type=tar,dest=-). `dest=-` streams an archive to stdout (never a terminal); for type=local
    it means a tar of the directory there, as buildx. Destinations are checked here, before the build."""
    from pybuild.oci.reference import InvalidReference, parse_reference

    if "=" not in text:
        spec = {"type": "tar", "dest": "-"} if text == "-" else {"type": "local", "dest": text}
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
    unknown = set(spec) - {"type", "dest", "name", "push"}
    if unknown:
        raise UsageError(f"--output {text}: unknown key {sorted(unknown)[0]!r}")
    if kind in ("image", "registry"):
        return _image_output_spec(text, spec, tags)
    if "push" in spec:
        raise UsageError(f"--output {text}: push= applies to type=image or type=registry")
    if "dest" not in spec:
        raise UsageError(f"--output {text}: type={kind} needs dest=")
    if kind == "local" and spec["dest"] == "-":
        spec["type"] = kind = "tar"  # buildx: the directory's files as a tar on stdout
    if kind in ("oci", "docker"):
        # unnamed is valid (buildx): index.json without a ref.name annotation, RepoTags []
        name = spec.get("name") or (tags[0] if tags else None)
        try:
            spec["ref"] = parse_reference(name) if name else None
        except InvalidReference as exc:
            raise UsageError(f"--output {text}: {exc}") from None
    dest = Path(spec["dest"])
    if spec["dest"] == "-":
        if sys.stdout.isatty():  # as `save` (docker's words): an archive never goes to a terminal
            raise PybuildError(f"--output {text}: cowardly refusing to write a {kind} archive to a terminal. "
                               "Use dest=FILE or redirect")
    elif kind == "local":  # an existing directory is written into (files replaced, others left), as buildx
        if dest.exists() and not dest.is_dir():
            raise UsageError(f"--output {text}: {spec['dest']!r} exists and is not a directory")
        ancestor = next((p for p in dest.absolute().parents if p.exists()), None)
        if ancestor is not None and not ancestor.is_dir():
            raise UsageError(f"--output {text}: {str(ancestor)!r} is not a directory")
    elif dest.is_dir():
        raise UsageError(f"--output {text}: {spec['dest']!r} is a directory")
    elif not dest.parent.is_dir():
        raise UsageError(f"--output {text}: directory {str(dest.parent)!r} does not exist")
    return spec


@contextlib.contextmanager
def _archive_stdout(args):
    """For a build whose --output streams to stdout (`-o -`, `dest=-`): check the spec first (a
    terminal is refused before anything runs), then, for the whole build, point fd 1 at stderr so
    the archive is all stdout carries (-q's image id, --cache-report json, anything a helper
    prints go to stderr); `args.archive_stdout` is the real stdout's fd meanwhile, else None."""
    args.archive_stdout = None
    spec = _output_spec(args.output, args.tag) if args.output else None
    if spec is None or spec.get("dest") != "-":
        yield
        return
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    args.archive_stdout = saved
    try:
        yield
    finally:
        with contextlib.suppress(OSError, ValueError):
            sys.stdout.flush()  # what was printed meanwhile goes to stderr, not after the archive
        os.dup2(saved, 1)
        os.close(saved)


def _image_output_spec(text: str, spec: dict, tags: list[str]) -> dict:
    """type=image[,name=REF[,push=true]] and type=registry,name=REF (push implied), as buildx."""
    from pybuild.oci.reference import InvalidReference, normalize_reference

    push = spec.get("push", "true" if spec["type"] == "registry" else "false").lower()
    if push not in ("true", "false"):
        raise UsageError(f"--output {text}: push= must be true or false")
    if "dest" in spec:
        raise UsageError(f"--output {text}: type={spec['type']} takes name=, not dest=")
    names = [n for n in spec.get("name", "").split(";") if n] or list(tags)
    if spec["type"] == "registry" and not names:
        raise UsageError(f"--output {text}: type=registry needs name=REF (or -t)")
    for name in names:
        try:
            normalize_reference(name)
        except InvalidReference as exc:
            raise UsageError(f"--output {text}: {exc}") from None
    spec["names"] = names
    spec["push"] = push == "true"
    return spec


def _push(store, manifest_digest: str, names: list[str]) -> None:
    """Push the built image under each name (a registry reference); the local tags are not needed."""
    from pybuild.registry.push import push

    for name in names:
        result = push(store, manifest_digest, name)
        s = result.stats
        print(f"pushed {result.reference}: digest: {result.digest} ({s.uploaded} blobs uploaded, "
              f"{s.skipped} already there, {s.mounted} mounted)", file=sys.stderr)


def _write_output(store, manifest_digest: str, spec: dict) -> None:
    from pybuild.cache.gc import build_lease
    from pybuild.cache.layers import unpack_tar_stream
    from pybuild.commands.export import export_image
    from pybuild.oci.archive import save_oci_archive
    from pybuild.oci.docker_archive import save_docker_archive

    kind, dest = spec["type"], spec.get("dest")
    if kind in ("image", "registry"):
        from pybuild.cache.content import BlobInfo

        if kind == "image":
            for name in spec["names"]:
                store.images.tag(name, BlobInfo(manifest_digest, store.content.size(manifest_digest)))
        if spec["push"]:
            _push(store, manifest_digest, spec["names"])
    elif dest == "-":  # type=tar|oci|docker to stdout: made whole in the store's tmp/, then copied
        # out, so a failure (a corrupt blob) writes nothing to stdout
        (store.root / "tmp").mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=store.root / "tmp", prefix="output-") as tmp:
            archive = Path(tmp) / "archive.tar"
            if kind == "tar":
                with open(archive, "wb") as f:
                    export_image(store, manifest_digest, f)
            else:
                save = save_oci_archive if kind == "oci" else save_docker_archive
                with build_lease(store.root):
                    save(store.content, [(spec["ref"], manifest_digest)], archive)
            fd = spec.get("stdout")
            if fd is None:
                sys.stdout.flush()
                fd = sys.stdout.fileno()
            from pybuild.fdio import write_all

            with open(archive, "rb") as src:
                while chunk := src.read(1 << 20):
                    write_all(fd, chunk)
    elif kind == "oci":
        with build_lease(store.root):
            save_oci_archive(store.content, [(spec["ref"], manifest_digest)], Path(dest))
    elif kind == "docker":
        with build_lease(store.root):
            save_docker_archive(store.content, [(spec["ref"], manifest_digest)], Path(dest))
    elif kind == "tar":
        with atomic_write(dest) as f:
            export_image(store, manifest_digest, f)
    elif kind == "local":  # into the directory as it is: files the image has replace those there
        from pybuild.cache.layers import LayerError

        with tempfile.TemporaryFile(dir=store.root / "tmp") as flat:
            export_image(store, manifest_digest, flat)
            flat.seek(0)
            try:
                unpack_tar_stream(flat, Path(dest))
            except (LayerError, OSError) as exc:
                raise PybuildError(f"--output type=local,dest={dest}: {exc}") from None


def _print_cache_report(args, reporter) -> None:
    from pybuild.progress import cache_report_json, render_cache_report

    if args.cache_report == "json":
        print(json.dumps(cache_report_json(reporter.summary), indent=2))
    elif args.cache_report == "text":
        sys.stderr.write(render_cache_report(reporter.summary))


def _dockerignore(context: Path, dockerfile: Path, tar_context: Path | None = None, label: str = "stdin context"):
    from pybuild.builder.context import find_ignore_file
    from pybuild.builder.dockerignore import DockerIgnore

    path = find_ignore_file(context, dockerfile)
    if path is None:
        return None, ".dockerignore"
    shown = str(path.relative_to(tar_context)) if tar_context is not None else str(path)
    if tar_context is not None and not path.resolve().is_relative_to(tar_context.resolve()):
        raise PybuildError(f"{label}: {shown}: a symlink out of the context")
    try:
        return DockerIgnore.parse(path.read_text(encoding="utf-8", errors="replace")), shown
    except ValueError as exc:  # "line N: reason"
        where = f"{label}: {shown}" if tar_context is not None else shown
        raise PybuildError(f"{where}:{str(exc).removeprefix('line ')}") from None


def _image_id(store, manifest_digest: str) -> str:
    from pybuild.oci.image import load_manifest

    return load_manifest(store.content, manifest_digest)["config"]["digest"]


# -- images / import / save -------------------------------------------------------------------------
IMAGE_FIELDS = {"Repository": "REPOSITORY", "Tag": "TAG", "Digest": "DIGEST", "ID": "IMAGE ID",
                "CreatedSince": "CREATED", "CreatedAt": "CREATED AT", "Size": "SIZE"}


def cmd_images(args) -> int:
    from datetime import datetime

    from pybuild.commands._filters import bool_filter, label_match, parse_filters, reference_match
    from pybuild.commands._format import Template, ago, created_at, human_size, parse_time, table
    from pybuild.oci.image import load_image

    filters = parse_filters(args.filter, ("dangling", "reference", "label", "before", "since"), "images")
    template = Template(args.format, IMAGE_FIELDS) if args.format else None
    if args.reference:
        filters.setdefault("reference", []).append(args.reference)
    dangling = bool_filter(filters, "dangling")
    store = _store(args)

    def created_of(text: str, key: str) -> datetime | None:
        from pybuild.oci.store import ImageNotFound

        try:
            return parse_time(load_image(store.content, store.images.resolve(text)).config.get("created"))
        except ImageNotFound:
            raise UsageError(f"--filter {key}={text}: No such image: {text}") from None

    bounds = [(key, created_of(v, key)) for key in ("before", "since") for v in filters.get(key, [])]
    rows = []
    newest: list[float] = []  # each row's created time, for the order
    # tagged images, then the nameless ones (a build without -t: docker's <none> <none>)
    listed = [(ref.name, ref.tag or "<none>", digest) for ref, digest in store.images.list()]
    listed += [("<none>", "<none>", digest) for digest in store.images.untagged()]
    for repository, tag, manifest_digest in listed:
        is_dangling = repository == "<none>"
        if dangling is not None and dangling != is_dangling:
            continue
        if "reference" in filters and (is_dangling or not any(
                reference_match(p, repository, tag) for p in filters["reference"])):
            continue
        try:
            img = load_image(store.content, manifest_digest)
        except Exception as exc:  # one broken image (a corrupt blob) must not hide the others
            message = store_damage(exc)
            if message is None:
                raise
            name = manifest_digest if is_dangling else f"{repository}:{tag}"
            print(f"WARNING: image {name} not listed: {message}", file=sys.stderr)
            continue
        created = img.config.get("created") or ""
        at = parse_time(created)
        if "label" in filters and not label_match(filters["label"], (img.config.get("config") or {}).get("Labels")):
            continue
        if bounds and (at is None or any(bound is None or (at >= bound if key == "before" else at <= bound)
                                         for key, bound in bounds)):
            continue
        rows.append({"Repository": repository, "Tag": tag, "Digest": manifest_digest,
                     "ID": img.id if args.no_trunc else img.id.split(":", 1)[1][:12],
                     "CreatedSince": ago(created), "CreatedAt": created_at(created),
                     "Size": human_size(sum(layer.size for layer in img.layers))})
        newest.append(at.timestamp() if at else 0.0)
    # newest first, as docker lists them (equal times: in index order)
    rows = [r for _, r in sorted(zip(newest, rows), key=lambda pair: -pair[0])]
    if args.quiet:
        for r in rows:
            print(r["ID"])
        return 0
    if template is not None:
        for line in template.lines(rows):
            print(line)
        return 0
    columns = ["Repository", "Tag", "Digest", "ID", "CreatedSince", "Size"]
    if not args.digests:
        columns.remove("Digest")
    print(table([tuple(IMAGE_FIELDS[c] for c in columns), *(tuple(r[c] for c in columns) for r in rows)]))
    return 0


def _changes(items: list[str]) -> dict:
    """--change "CMD [..]" and friends (docker import's set), parsed by the Dockerfile grammar,
    expanded with the ENVs given before them (as docker does), mapped to config fields."""
    import posixpath

    from pybuild.builder.solver import exposed_ports, is_stop_signal
    from pybuild.grammar import DockerfileError, ExpansionError, ast, expand_word, parse

    def unsupported(item: str, keyword: str) -> UsageError:
        return UsageError(f"--change {item!r}: {keyword} is not supported "
                          "(use CMD, ENTRYPOINT, ENV, EXPOSE, LABEL, STOPSIGNAL, USER, VOLUME or WORKDIR)")

    if not items:
        return {}
    try:
        # One line per --change after a FROM: line N of the text is --change number N-1.
        df = parse("FROM scratch\n" + "\n".join(items) + "\n", "--change")
    except DockerfileError as exc:
        raise UsageError(_change_error(str(exc), items)) from None
    for stage in df.stages[1:]:  # a FROM among the changes starts a stage (and would drop the rest)
        raise unsupported(stage.base.original.strip(), "FROM")
    out: dict = {}
    env: dict[str, str] = {}
    for ins in df.stages[0].instructions:
        item = ins.original.strip()
        def x(word: str) -> str:
            try:
                return expand_word(word, env)
            except ExpansionError as exc:
                raise UsageError(f"--change {item!r}: {exc}") from None

        if isinstance(ins, (ast.Cmd, ast.Entrypoint)):
            value = list(ins.command.args) if isinstance(ins.command, ast.ExecForm) else ["/bin/sh", "-c",
                                                                                          ins.command.text]
            out["Cmd" if isinstance(ins, ast.Cmd) else "Entrypoint"] = value
        elif isinstance(ins, ast.Env):
            for k, v in ins.pairs:
                env[k] = x(v)
                out.setdefault("Env", []).append(f"{k}={env[k]}")
        elif isinstance(ins, ast.Workdir):
            # relative to the one before, as in a Dockerfile (docker import does the same)
            out["WorkingDir"] = posixpath.normpath(posixpath.join(out.get("WorkingDir", "/"), x(ins.path)))
        elif isinstance(ins, ast.User):
            out["User"] = x(ins.user)
        elif isinstance(ins, ast.Label):
            out.setdefault("Labels", {}).update((x(k), x(v)) for k, v in ins.pairs)
        elif isinstance(ins, ast.Expose):
            ports = out.setdefault("ExposedPorts", [])
            for word in ins.ports:
                try:
                    ports.extend(exposed_ports(x(word)))
                except ValueError as exc:
                    raise UsageError(f"--change {item!r}: {exc}") from None
        elif isinstance(ins, ast.Volume):
            out.setdefault("Volumes", []).extend(x(p) for p in ins.paths)
        elif isinstance(ins, ast.StopSignal):
            if not is_stop_signal(x(ins.signal)):
                raise UsageError(f"--change {item!r}: STOPSIGNAL {x(ins.signal)}: not a signal name or number")
            out["StopSignal"] = x(ins.signal)
        else:
            raise unsupported(item, ins.keyword)
    return out


def _change_error(message: str, items: list[str]) -> str:
    """A parse error of the --change text, named by the --change it came from (not by a line of
    the text, whose first line is the FROM added in front)."""
    import re

    m = re.match(r"--change:(\d+):(\d+): (.*)", message, re.S)
    if not m or not 2 <= int(m.group(1)) <= len(items) + 1:
        return message
    return f"--change {items[int(m.group(1)) - 2]!r}: {m.group(3).splitlines()[0]}"


def _input_source(arg: str, command: str, *, directory_ok: bool):
    """`-` is standard input; anything else must be an existing file (or directory, for import)."""
    if arg == "-":
        return sys.stdin.buffer
    path = Path(arg)
    if not (path.exists() if directory_ok else path.is_file()):
        raise PybuildError(f"{command}: {arg}: no such file" + (" or directory" if directory_ok else ""))
    return path


def _source_date_epoch_env() -> int | None:
    """$SOURCE_DATE_EPOCH for import: clamps mtimes and dates the image, so imports repeat."""
    value = os.environ.get("SOURCE_DATE_EPOCH", "")
    if not value:
        return None
    if not value.isdigit():
        raise UsageError(f"SOURCE_DATE_EPOCH={value!r}: expected a number of seconds")
    return int(value)


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
            digest = import_rootfs(source, ref, store.content, store.images, changes=changes,
                                   message=args.message, source_date_epoch=_source_date_epoch_env())
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

    stdin = args.input in (None, "-")
    if stdin and sys.stdin.isatty():  # docker's words
        raise PybuildError("requested load from stdin, but stdin is empty (use -i FILE or redirect)")
    store = _store(args)
    source = _input_source(args.input or "-", "load", directory_ok=False)
    try:
        with build_lease(store.root):
            loaded = load_any(source, store.content, store.images)
    except (ArchiveError, DigestMismatch, LayerError, ValueError, OSError) as exc:
        raise PybuildError(f"load {'(stdin)' if stdin else args.input}: {exc}") from None
    for ref, digest in loaded:
        print(f"Loaded image: {ref}" if ref else f"Loaded image ID: {_image_id(store, digest)}")
    return 0


@contextlib.contextmanager
def _damaged_store_on_save():
    """save only reads the store: an ArchiveError from it is a blob missing or corrupt there."""
    from pybuild.oci.archive import ArchiveError

    try:
        yield
    except ArchiveError as exc:
        raise PybuildError(f"save: {exc}; {FSCK_HINT}") from None


def cmd_save(args) -> int:
    from pybuild.cache.gc import build_lease
    from pybuild.oci.archive import save_oci_archive
    from pybuild.oci.docker_archive import save_docker_archive
    from pybuild.oci.reference import parse_reference
    from pybuild.oci.store import ImageNotFound

    if args.output in (None, "-") and sys.stdout.isatty():  # docker's words
        raise PybuildError("cowardly refusing to save to a terminal. Use the -o flag or redirect")
    store = _store(args)
    images = []
    for name in args.images:
        try:
            images.append((parse_reference(name), store.images.resolve(name)))
        except (ImageNotFound, ValueError) as exc:
            raise PybuildError(str(exc).strip('"')) from None
    save = save_docker_archive if args.format == "docker" else save_oci_archive
    if args.output not in (None, "-"):
        out = Path(args.output)
        if not out.parent.is_dir():
            raise PybuildError(f"save -o {args.output}: directory {str(out.parent)!r} does not exist")
        with build_lease(store.root), _damaged_store_on_save():
            save(store.content, images, out)
        return 0
    # stdout: the archive is made in the store's tmp/ first and copied out only when complete, so
    # a failure (a corrupt blob) writes nothing; the file is unlinked before the copy (and the GC
    # lease released), so nothing is left behind even if the copy is cut short
    tmp_root = store.root / "tmp"
    tmp_root.mkdir(parents=True, exist_ok=True)
    with build_lease(store.root), _damaged_store_on_save():
        tmp = Path(tempfile.mkdtemp(dir=tmp_root, prefix="save-"))
        try:
            save(store.content, images, tmp / "archive.tar")
            archive = open(tmp / "archive.tar", "rb")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    with archive:
        sys.stdout.flush()
        shutil.copyfileobj(archive, sys.stdout.buffer, 1 << 20)
        sys.stdout.buffer.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
