"""`pybuild doctor`: what this host allows the sandbox to do, and what pybuild does about gaps."""

from __future__ import annotations

NAME = "doctor"


def add_parser(sub) -> None:
    p = sub.add_parser(NAME, help="check what this host allows builds to do (namespaces, "
                                  "overlayfs, cgroups, seccomp, ...)")
    p.set_defaults(command=NAME)


def format_checks(checks) -> str:
    width = max(len(c.name) for c in checks)
    lines = []
    for c in checks:
        status = "OK" if c.ok else ("MISSING" if c.required else "MISSING (optional)")
        line = f"{status:<19} {c.name:<{width}}  {c.detail}"
        if not c.ok and c.consequence:
            line += f" -> {c.consequence}"
        lines.append(line)
    return "\n".join(lines)


def run(args, store_factory) -> int:
    from pybuild.sandbox.probe import builds_can_run, probe

    checks = probe()
    print(format_checks(checks))
    if builds_can_run(checks):
        print("builds can run on this host")
        return 0
    print("builds cannot run on this host: see the MISSING lines above")
    return 1
