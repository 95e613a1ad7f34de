"""`pybuild check [-f Dockerfile] [PATH]`: lint a Dockerfile like `docker build --check`.

Prints one `FILE:LINE:COL: Rule: message` line per warning (sorted by line), then a summary.
Exit status: 0 with only warnings, 1 when `# check=error=true` and any warning (or the Dockerfile
does not parse), 2 on a usage error (no such file).
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

    path = Path(args.file) if args.file else Path(args.context) / "Dockerfile"
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
        warnings = lint(dockerfile, build_args)
    except DockerfileError as exc:
        print(str(exc), file=sys.stderr)
        return 1

    for w in warnings:
        print(w.format())
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
